"""Hostile and unusual audio files: each one loads right or fails with one clear AudioFileError.

Real speech from espeak-ng, written by libsndfile (the soundfile wheel) into every format the
runtime promises; the checks are numbers (length, rate, channel folding, RMS, correlation with
the reference). A bounded property-based fuzz feeds random and mutated files to load_audio,
and a few cases go through the `llasm` command to check the exit code and the one-line message.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llasm_cli.audio.decode import MAX_AUDIO_SECONDS, MIN_LOAD_SAMPLES, check_finite, load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import AudioFileError, AudioTooLongError
from tests.helpers import assert_clean_error, run_llasm

PEAK = 0.5


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def ref(question_audio) -> np.ndarray:
    """The espeak question at 16 kHz, peak 0.5 (room for codecs to overshoot)."""
    return (question_audio * (PEAK / np.abs(question_audio).max())).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def write(path: Path, ref: np.ndarray, rate: int, gains: list[float], **kw) -> Path:
    """``ref`` resampled to ``rate``, one channel per gain, written by libsndfile."""
    x = ref if rate == SAMPLE_RATE else soxr.resample(ref, SAMPLE_RATE, rate, quality="HQ")
    sf.write(path, x[:, None] * np.asarray(gains, dtype=np.float32)[None, :], rate, **kw)
    return path


def assert_same_speech(got: np.ndarray, expected: np.ndarray, rms_tol: float, min_corr: float) -> None:
    assert got.dtype == np.float32 and got.ndim == 1
    assert np.isfinite(got).all()
    assert abs(got.size - expected.size) <= SAMPLE_RATE * 3 // 1000, (got.size, expected.size)  # 3 ms
    assert abs(rms(got) / rms(expected) - 1) < rms_tol, rms(got) / rms(expected)
    n = min(got.size, expected.size)
    assert np.corrcoef(got[:n], expected[:n])[0, 1] > min_corr


# name, rate, channel gains, soundfile format, subtype, RMS tolerance, min correlation.
# 8 kHz cuts the speech above 4 kHz, so those keep a little less energy and correlation.
FORMATS = [
    ("pcm16-8k.wav", 8000, [1.0], "WAV", "PCM_16", 0.03, 0.98),
    ("pcm24-48k-6ch.wav", 48000, [1.0, 0.5, 0.25, 0.0, 0.75, 0.5], "WAV", "PCM_24", 0.01, 0.999),
    ("float32-44k-stereo.wav", 44100, [1.0, 1.0], "WAV", "FLOAT", 0.01, 0.999),
    ("float64-96k.wav", 96000, [1.0], "WAV", "DOUBLE", 0.01, 0.999),
    ("pcm8-16k.wav", 16000, [1.0], "WAV", "PCM_U8", 0.01, 0.995),
    ("ulaw-11k.wav", 11025, [1.0], "WAV", "ULAW", 0.02, 0.99),
    ("pcm32-22k.wav", 22050, [1.0], "WAV", "PCM_32", 0.01, 0.999),
    ("rf64-16k.wav", 16000, [1.0], "RF64", "PCM_16", 0.01, 0.999),
    ("pcm16-22k.aiff", 22050, [1.0], "AIFF", "PCM_16", 0.01, 0.999),
    ("pcm24-48k-stereo.flac", 48000, [1.0, 0.5], "FLAC", "PCM_24", 0.01, 0.999),
    ("pcm16-8k.flac", 8000, [1.0], "FLAC", "PCM_16", 0.03, 0.98),
    ("mp3-44k-stereo.mp3", 44100, [1.0, 1.0], "MP3", "MPEG_LAYER_III", 0.03, 0.99),
    ("mp3-16k.mp3", 16000, [1.0], "MP3", "MPEG_LAYER_III", 0.03, 0.99),
    ("mp3-8k.mp3", 8000, [1.0], "MP3", "MPEG_LAYER_III", 0.04, 0.97),
    ("vorbis-48k.ogg", 48000, [1.0], "OGG", "VORBIS", 0.04, 0.98),
    ("vorbis-8k-stereo.ogg", 8000, [1.0, 1.0], "OGG", "VORBIS", 0.04, 0.97),
    ("opus-48k.opus", 48000, [1.0], "OGG", "OPUS", 0.04, 0.98),
]


@pytest.mark.parametrize(("name", "rate", "gains", "fmt", "subtype", "rms_tol", "min_corr"), FORMATS)
def test_format_loads(files, ref, name, rate, gains, fmt, subtype, rms_tol, min_corr):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no {fmt}")
    path = write(files / name, ref, rate, gains, format=fmt, subtype=subtype)
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (rate, len(gains))
    got = load_audio(path)
    # channels are averaged: the expected signal is the reference times the mean gain
    assert_same_speech(got, ref * np.float32(np.mean(gains)), rms_tol, min_corr)


def test_mp3_is_supported_by_the_installed_libsndfile():
    """MP3 needs libsndfile >= 1.1; the soundfile wheels bundle a newer one."""
    major, minor = (int(p) for p in sf.__libsndfile_version__.split(".")[:2])
    assert (major, minor) >= (1, 1) and "MP3" in sf.available_formats()


def test_mp3_unsupported_says_so(files, monkeypatch):
    junk = files / "song.mp3"
    junk.write_bytes(b"ID3" + bytes(200))
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV"})
    with pytest.raises(AudioFileError, match=r"cannot decode MP3 \(needs 1.1 or newer\)"):
        load_audio(junk)


def test_m4a_says_convert_it(files):
    path = files / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    with pytest.raises(AudioFileError, match=r"AAC/M4A is not supported; convert it first \(ffmpeg"):
        load_audio(path)


# ---------------------------------------------------------------- NaN, infinity, absurd levels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_float_wav(files, ref, bad):
    x = ref.copy()
    x[8000] = bad  # at 0.5 s
    path = files / "nonfinite.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"holds NaN or infinite samples \(the first at 0.5 s\)"):
        load_audio(path)


def test_nan_in_one_channel_of_many(files, ref):
    x = np.stack([ref] * 4, axis=1)
    x[-1, 2] = np.nan
    path = files / "nan-4ch.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="DOUBLE")
    with pytest.raises(AudioFileError, match="NaN or infinite"):
        load_audio(path)


def test_nan_in_a_later_block(files):
    """Decoding is block-wise: a NaN deep into a long file is still found, with its time."""
    x = np.zeros(5 * 48000, dtype=np.float32)
    x[4 * 48000] = np.nan
    path = files / "late-nan.wav"
    sf.write(path, x, 48000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"the first at 4 s"):
        load_audio(path)


def test_integer_values_stored_as_float(files, ref):
    path = files / "int-as-float.wav"
    sf.write(path, ref * 32767, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"holds samples up to 1.64e\+04 .* integer sample values"):
        load_audio(path)


def test_float_headroom_above_one_is_fine(files, ref):
    path = files / "hot.wav"
    sf.write(path, ref * 6, SAMPLE_RATE, subtype="FLOAT")  # peak 3.0: clipped-looking but valid
    got = load_audio(path)
    assert abs(np.abs(got).max() - 3.0) < 1e-3


def test_check_finite_on_memory_audio():
    clean = np.linspace(-1, 1, 1000, dtype=np.float32)
    assert check_finite(clean, "the microphone") is clean
    assert check_finite(np.zeros(0, np.float32)) is not None
    mic = clean.copy()
    mic[320] = np.nan
    with pytest.raises(AudioFileError, match=r"^the microphone holds NaN or infinite samples \(the first at 0.02 s\)"):
        check_finite(mic, "the microphone")
    with pytest.raises(AudioFileError, match="far outside the -1..1 range"):
        check_finite(clean * 1e6, "the request")
    stereo = np.stack([clean, clean], axis=1)
    stereo[100, 1] = np.inf
    with pytest.raises(AudioFileError, match=r"at 0.05 s"):
        check_finite(stereo, "x", rate=2000)


# ---------------------------------------------------------------- length limit, lying headers


def test_default_limit_is_sane():
    assert 10 * 60 <= MAX_AUDIO_SECONDS <= 4 * 3600
    assert issubclass(AudioTooLongError, AudioFileError)


def test_too_long_from_header_before_decoding(files):
    """A 2-hour WAV costs nothing: the header says so and nothing is decoded (a sparse file)."""
    path = files / "two-hours.wav"
    sf.write(path, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    struct.pack_into("<I", data, at + 4, 2 * 3600 * 8000 * 2)
    path.write_bytes(bytes(data))
    with open(path, "r+b") as fh:
        fh.truncate(at + 8 + 2 * 3600 * 8000 * 2)  # sparse: no disk blocks behind it
    start = time.perf_counter()
    with pytest.raises(AudioTooLongError, match=r"lasts 2 h, longer than the 30 min limit; pass --max-audio") as err:
        load_audio(path)
    assert time.perf_counter() - start < 0.5
    assert err.value.seconds == pytest.approx(7200) and err.value.limit == MAX_AUDIO_SECONDS
    assert err.value.exit_code == 2


def test_max_seconds_argument(files, ref):
    path = write(files / "q.flac", ref, 22050, [1.0], format="FLAC")
    seconds = ref.size / SAMPLE_RATE
    assert load_audio(path, max_seconds=seconds + 0.01).size == pytest.approx(ref.size, abs=2)
    assert load_audio(path, max_seconds=None).size == pytest.approx(ref.size, abs=2)
    with pytest.raises(AudioTooLongError, match=r"lasts 1.\d+ s, longer than the 1 s limit"):
        load_audio(path, max_seconds=1.0)
    with pytest.raises(ValueError):
        load_audio(path, max_seconds=0)


def flac_without_length(src: Path, dst: Path, total: int = 0) -> Path:
    """The same FLAC with STREAMINFO's 36-bit total-samples field set (0 = unknown, as streamers write)."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | total
    data[18:26] = word.to_bytes(8, "big")
    dst.write_bytes(bytes(data))
    return dst


def test_flac_of_unknown_length_loads_and_is_limited_while_decoding(files, ref):
    src = write(files / "known.flac", ref, 16000, [1.0], format="FLAC")
    path = flac_without_length(src, files / "unknown.flac")
    assert sf.info(path).frames > 1 << 62  # libsndfile: length unknown
    assert_same_speech(load_audio(path), ref, 0.01, 0.999)
    with pytest.raises(AudioTooLongError, match="is longer than the 1 s limit") as err:
        load_audio(path, max_seconds=1.0)
    assert err.value.seconds is None


def test_flac_header_claiming_hours_is_refused_from_the_header(files, ref):
    src = write(files / "known2.flac", ref, 16000, [1.0], format="FLAC")
    path = flac_without_length(src, files / "liar.flac", total=3 * 3600 * 16000)
    with pytest.raises(AudioTooLongError, match="lasts 3 h"):
        load_audio(path)
    got = load_audio(path, max_seconds=None)  # raise the limit: the real 1.7 s come out
    assert_same_speech(got, ref, 0.01, 0.999)


def wav_with_data_size(src: Path, dst: Path, size: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into("<I", data, data.index(b"data") + 4, size)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("claim", [0, 0xFFFFFFFF, 0x7FFFFFFF, "double"])
def test_wav_header_claiming_more_or_nothing(files, ref, claim):
    """More than the file holds (or an unfinished recording's 0): all the real audio loads."""
    src = write(files / "plain.wav", ref, 22050, [1.0], subtype="PCM_16")
    n = (src.stat().st_size - 44) * 2 if claim == "double" else claim
    got = load_audio(wav_with_data_size(src, files / f"claim-{claim}.wav", n))
    assert_same_speech(got, ref, 0.01, 0.999)


def test_wav_header_claiming_less_reads_what_it_says(files, ref):
    """Fewer bytes than follow: the header's word (what every player does), not a crash."""
    src = write(files / "plain2.wav", ref, 16000, [1.0], subtype="PCM_16")
    got = load_audio(wav_with_data_size(src, files / "claim-half.wav", ref.size))  # bytes = half the samples
    assert got.size == ref.size // 2
    np.testing.assert_allclose(got, ref[: ref.size // 2], atol=1e-4)


def test_truncated_flac_is_damaged(files, ref):
    src = write(files / "whole.flac", ref, 16000, [1.0], format="FLAC")
    path = files / "cut.flac"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(AudioFileError, match=r"is damaged: decoding stopped after .* of the 1.\d+ s its header"):
        load_audio(path)


def test_truncated_wav_loads_what_is_there(files, ref):
    src = write(files / "whole.wav", ref, 16000, [1.0], subtype="PCM_16")
    path = files / "cut.wav"
    keep = 44 + 2 * (ref.size // 2) + 1  # half the samples and half a sample
    path.write_bytes(src.read_bytes()[:keep])
    assert load_audio(path).size == ref.size // 2


# ---------------------------------------------------------------- files that are not audio


def wav_header(**change) -> bytes:
    fields = dict(channels=1, rate=16000, bits=16)
    fields.update(change)
    block = fields["channels"] * fields["bits"] // 8
    fmt = struct.pack("<HHIIHH", 1, fields["channels"], fields["rate"], fields["rate"] * block, block, fields["bits"])
    riff = b"RIFF" + struct.pack("<I", 36 + 32000) + b"WAVEfmt " + struct.pack("<I", 16)
    return riff + fmt + b"data" + struct.pack("<I", 32000)


BAD_FILES = {
    "empty.wav": (b"", r"is empty \(0 bytes\)"),
    "header-only.wav": (wav_header()[:44], "contains no samples"),
    "truncated-header.wav": (wav_header()[:20], "cannot read audio file"),
    "text.wav": (b"this is not audio, just text\n" * 20, "cannot read audio file .*Format not recognised"),
    "random.flac": (np.random.default_rng(1).bytes(3000), "cannot read audio file"),
    "one-sample.wav": (wav_header()[:40] + struct.pack("<I", 2) + b"\x10\x00", r"too short: 1 sample \(0.0625 ms\)"),
    "rate-100.wav": (wav_header(rate=100) + bytes(32000), "sample rate of 100 Hz"),
    "rate-0.wav": (wav_header(rate=0) + bytes(32000), "cannot read audio file"),
    "zero-channels.wav": (wav_header(channels=0) + bytes(32000), "cannot read audio file .*[Cc]hannel"),
    "4000-channels.wav": (wav_header(channels=4000) + bytes(32000), "cannot read audio file .*[Cc]hannels"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_not_audio(files, name):
    content, message = BAD_FILES[name]
    path = files / name
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match=message):
        load_audio(path)


def test_short_clips_load(files):
    """Two samples at 16 kHz load (too little speech is the no-speech check's to refuse, exit 8);
    what leaves fewer than two at 16 kHz is refused here (mtmd aborts on a 1-sample window)."""
    for n in (MIN_LOAD_SAMPLES, 16, 200):
        path = files / f"short-{n}.wav"
        sf.write(path, np.full(n, 0.1, dtype=np.float32), SAMPLE_RATE)
        assert load_audio(path).size == n
    path = files / "three-at-48k.wav"
    sf.write(path, np.full(3, 0.1, dtype=np.float32), 48000)
    with pytest.raises(AudioFileError, match=r"too short: 3 samples \(0.0625 ms\), nothing to listen to"):
        load_audio(path)


def test_missing_and_directory(files):
    with pytest.raises(AudioFileError, match="audio file not found"):
        load_audio(files / "nope.wav")
    with pytest.raises(AudioFileError, match="is a directory, not an audio file"):
        load_audio(files)


def test_fifo_is_refused_without_blocking(files):
    fifo = files / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioFileError, match="not a regular file"):
        load_audio(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(files, ref):
    path = write(files / "secret.wav", ref, 16000, [1.0])
    path.chmod(0)
    try:
        with pytest.raises(AudioFileError, match="permission denied"):
            load_audio(path)
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------- fuzz

SUFFIXES = [".wav", ".flac", ".ogg", ".mp3", ".aiff", ".bin"]


def assert_loads_or_refuses(path: Path) -> None:
    try:
        got = load_audio(path, max_seconds=120)
    except AudioFileError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.ndim == 1
    assert got.size >= MIN_LOAD_SAMPLES and np.isfinite(got).all()
    assert np.abs(got).max() <= 1e4  # within MAX_PEAK, plus resampler overshoot


@pytest.fixture(scope="module")
def seeds(files, ref) -> dict[str, bytes]:
    """Small valid files (0.3 s) of every family, to mutate."""
    clip = ref[4000:8800]
    out = {}
    for name, kw in {
        ".wav": dict(subtype="PCM_16"), ".flac": dict(format="FLAC"), ".ogg": dict(format="OGG", subtype="VORBIS"),
        ".mp3": dict(format="MP3", subtype="MPEG_LAYER_III"), ".aiff": dict(format="AIFF", subtype="PCM_24"),
        "-float.wav": dict(subtype="FLOAT"), "-stereo.wav": dict(subtype="PCM_U8"),
    }.items():
        path = files / f"seed{name}"
        sf.write(path, np.stack([clip, clip], 1) if "stereo" in name else clip, 22050, **kw)
        out[name] = path.read_bytes()
    return out


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(SUFFIXES),
       magic=st.sampled_from([b"", b"RIFF", b"RIFF\0\0\0\0WAVEfmt ", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"FORM"]))
def test_fuzz_random_bytes(files, data, suffix, magic):
    path = files / f"fuzz-random{suffix}"
    path.write_bytes(magic + data)
    assert_loads_or_refuses(path)


@FUZZ
@given(kind=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".aiff", "-float.wav", "-stereo.wav"]),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
       header_edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)), floats=st.lists(st.sampled_from(
           [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f"]), max_size=2))
def test_fuzz_mutated_files(files, seeds, kind, edits, header_edits, cut, floats):
    data = bytearray(seeds[kind])
    for at, value in header_edits + edits:
        data[at % len(data)] = value
    for i, f in enumerate(floats):  # NaN, inf and the float32 maximum dropped into the samples
        at = (len(data) // 3 + 40 * i) & ~3
        data[at : at + 4] = f
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = files / f"fuzz-mutated{kind}"
    path.write_bytes(bytes(data))
    assert_loads_or_refuses(path)


# ---------------------------------------------------------------- through the command


@pytest.fixture(scope="module")
def bundle(swiglu) -> Path:
    return swiglu[1]


def test_cli_nan_wav(bundle, files, ref):
    x = ref.copy()
    x[::100] = np.nan
    path = files / "cli-nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    assert_clean_error(run_llasm("ask", str(path), "-m", str(bundle)), 2, "NaN", str(path))


def test_cli_text_file(bundle, files):
    path = files / "cli-text.wav"
    path.write_text("hello, I am a text file\n")
    res = run_llasm("ask", str(path), "-m", str(bundle))
    assert_clean_error(res, 2, "cannot read audio file", "Format not recognised")


def test_cli_one_sample_and_directory(bundle, files):
    """A 1-sample file is refused before any tower sees it (even with --force: mtmd would abort)."""
    path = files / "cli-one.wav"
    sf.write(path, np.array([0.5], dtype=np.float32), SAMPLE_RATE)
    assert_clean_error(run_llasm("ask", str(path), "-m", str(bundle), "--force", "--backend", "ggml"), 2, "too short")
    assert_clean_error(run_llasm("ask", str(files), "-m", str(bundle)), 2, "is a directory")
