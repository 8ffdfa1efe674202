"""Untrusted audio in, 16 kHz mono float32 out: files on disk and bytes from the network alike.

(Over 400 lines because reading untrusted audio safely -- lying headers, NaN samples, huge or
truncated files -- is all of it.) Every failure is an ``AudioFileError`` (or ``AudioTooLongError``)
with one clear sentence.
"""

from __future__ import annotations

import io
import math
import stat
from pathlib import Path

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import AudioFileError, AudioTooLongError

MIN_LOAD_SAMPLES = 2  # load_audio refuses less (mtmd aborts on 1 sample); short clips are the no-speech check's
MAX_AUDIO_SECONDS = 30 * 60.0  # load_audio's default length limit (the CLI's --max-audio)
MIN_RATE, MAX_RATE = 1000, 768000  # sample rates outside this range are a damaged header, not audio
MAX_PEAK = 1000.0  # |sample| above this (60 dB over full scale) is mis-scaled float data
_BLOCK_SAMPLES = 1 << 20  # decode this many samples (all channels) at a time
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX frames when the header does not say
_FLOAT_HINT = "; fix it, or re-export it as 16-bit PCM"
_RAISE_LIMIT = "; pass --max-audio SECONDS to allow longer audio"  # how a command allows longer audio
_PCM_CONTAINERS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF", "NIST", "IRCAM", "RAW", "SVX", "VOC"}
_PCM_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1
}


def check_finite(
    samples: np.ndarray, what: str = "the audio", rate: int = SAMPLE_RATE, offset: int = 0, hint: str = ""
) -> np.ndarray:
    """Refuse audio the model cannot use: NaN or infinite samples, or absurd magnitudes.

    For in-memory audio (microphone, server requests) as much as for files; returns ``samples``
    unchanged. ``samples`` is (frames,) or (frames, channels); ``what`` names the source in the
    message and ``rate``/``offset`` (frames before this block) place the first bad sample in
    time; ``hint`` is appended to the message (what to do about it). A NaN turns every feature
    and then every probability into NaN; samples beyond about 1e15 overflow the float32 power
    spectrum into the same state, and anything above ``MAX_PEAK`` is mis-scaled data, not audio.
    """
    x = np.asarray(samples)
    if x.size == 0:
        return samples
    finite = np.isfinite(x)
    if not finite.all():
        frame = _first(~finite)
        raise AudioFileError(
            f"{what} holds NaN or infinite samples (the first at {(offset + frame) / rate:.4g} s): "
            f"it is not usable audio{hint}"
        )
    loud = np.abs(x) > MAX_PEAK
    if loud.any():
        frame = _first(loud)
        raise AudioFileError(
            f"{what} holds samples up to {float(np.max(np.abs(x))):.3g} (the first at "
            f"{(offset + frame) / rate:.4g} s), far outside the -1..1 range of audio (limit "
            f"{MAX_PEAK:g}), as if integer sample values were stored as float{hint}"
        )
    return samples


def _first(mask: np.ndarray) -> int:
    """Index of the first frame (row) where ``mask`` holds anywhere."""
    rows = mask.reshape(mask.shape[0], -1).any(axis=1) if mask.ndim > 1 else mask
    return int(np.argmax(rows))


class _Source:
    """What the header of an opened file says, and how far it can be trusted."""

    def __init__(self, f, size: int) -> None:
        self.rate = int(f.samplerate)
        self.channels = int(f.channels)
        self.format = str(f.format)
        self.subtype = str(f.subtype)
        frames = int(f.frames)
        self.known = 0 <= frames < _UNKNOWN_FRAMES
        width = _PCM_BYTES.get(self.subtype)
        if self.known and width is not None and self.format in _PCM_CONTAINERS:  # the file size bounds it
            frames = min(frames, size // (width * self.channels))
        self.frames = frames if self.known else None

    def seconds(self, frames: int) -> float:
        return frames / self.rate


def load_audio(path: str | Path, max_seconds: float | None = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Read any soundfile-supported file (wav/flac/ogg/mp3/...) as 16 kHz mono float32.

    Every failure is an ``AudioFileError`` with one clear sentence: a missing, unreadable,
    empty, truncated or non-audio file, one that leaves fewer than ``MIN_LOAD_SAMPLES`` at
    16 kHz, NaN/infinite or absurdly large samples, and audio longer than
    ``max_seconds`` (``AudioTooLongError``; ``None`` means no limit). The length is checked from
    the header before anything is decoded, and decoding stops at the limit, so a huge file (or
    one whose header lies about its length) costs at most ``max_seconds`` of decoding. Channels
    are averaged; the result is resampled (soxr, high quality) block by block, so memory stays
    at the size of the 16 kHz result.
    """
    path = Path(path)
    return decode_audio(path, f"audio file {path}", max_seconds)


def decode_audio(source: Path | bytes, what: str, max_seconds: float | None = MAX_AUDIO_SECONDS,
                 raise_limit: str = _RAISE_LIMIT) -> np.ndarray:
    """Untrusted encoded audio -- a file, or bytes from the network -- as 16 kHz mono float32, with the
    checks ``load_audio`` describes. ``what`` names the audio in every message ("audio file x.wav", a
    request's field); ``raise_limit`` follows the too-long message: how to allow longer audio."""
    import soundfile as sf

    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    if isinstance(source, Path):
        size, suffix, opened = _check_path(source), source.suffix.lower(), str(source)
    elif not source:
        raise AudioFileError(f"{what} is empty (0 bytes)")
    else:
        size, suffix, opened = len(source), "", io.BytesIO(source)
    patched = None  # an unfinished WAV, read through a header fixed in memory
    try:
        f = sf.SoundFile(opened)
        if f.frames == 0 and f.format in ("WAV", "WAVEX") and (at := _empty_data_chunk(_head(source), size)):
            f.close()
            raw = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
            patched = _Patched(raw, at + 4, b"\xff\xff\xff\xff")  # "to the end of the file"
            f = sf.SoundFile(patched)
    except Exception as exc:  # soundfile raises several types for corrupt input
        if patched is not None:
            patched.close()
        raise AudioFileError(_open_failure(what, opened, suffix, exc)) from None
    try:
        with f:
            src = _Source(f, size)
            if not MIN_RATE <= src.rate <= MAX_RATE:
                raise AudioFileError(
                    f"{what} has a sample rate of {src.rate} Hz; "
                    f"expected {MIN_RATE}-{MAX_RATE} Hz (a damaged header?)"
                )
            limit = None if max_seconds is None else int(math.ceil(max_seconds * src.rate))
            if limit is not None and src.frames is not None and src.frames > limit:
                raise _too_long(what, src.seconds(src.frames), max_seconds, raise_limit)
            mono, n_read = _decode(f, src, what, limit)
    finally:
        if patched is not None:
            patched.close()
    if n_read == 0:
        raise AudioFileError(f"{what} contains no samples")
    if limit is not None and n_read > limit:
        raise _too_long(what, None, max_seconds, raise_limit)
    if mono.size < MIN_LOAD_SAMPLES:
        raise AudioFileError(
            f"{what} is too short: {n_read} sample{'s' if n_read != 1 else ''} "
            f"({1000 * src.seconds(n_read):.3g} ms), nothing to listen to"
        )
    return mono


def _too_long(what: str, seconds: float | None, limit: float, raise_limit: str) -> AudioTooLongError:
    lasts = "is longer than" if seconds is None else f"lasts {_clock(seconds)}, longer than"
    return AudioTooLongError(f"{what} {lasts} the {_clock(limit)} limit{raise_limit}", seconds=seconds, limit=limit)


def _clock(seconds: float) -> str:
    """0.5 s, 95 s, 30 min, 2.5 h: short and exact enough for a message."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.4g} min"
    return f"{seconds / 3600:.4g} h"


def _check_path(path: Path) -> int:
    """Existence, type, permission and emptiness, checked before libsndfile sees the path."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioFileError(f"audio file not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name (typed, or pasted into the chat)
        raise AudioFileError(f"cannot read audio file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioFileError(f"{path} is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioFileError(
            f"{path} is not a regular file (a pipe or a device?): save the audio to a file first"
        )
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        raise AudioFileError(f"cannot read audio file {path}: {why}") from None
    if st.st_size == 0:
        raise AudioFileError(f"audio file {path} is empty (0 bytes)")
    return st.st_size


_NOT_LIBSNDFILE = {".m4a": "AAC/M4A", ".aac": "AAC", ".mp4": "MP4", ".wma": "WMA", ".webm": "WebM", ".amr": "AMR"}


def _open_failure(what: str, opened, suffix: str, exc: Exception) -> str:
    """libsndfile's complaint about ``opened`` (a path or a file object) as one sentence that says what to do."""
    import soundfile as sf

    why = str(exc)
    prefix = f"Error opening {opened!r}: "
    if why.startswith(prefix):
        why = why[len(prefix) :]
    why = why.strip().rstrip(".") or type(exc).__name__
    if suffix == ".mp3" and "MP3" not in sf.available_formats():
        return (
            f"cannot read {what}: this soundfile's libsndfile "
            f"{sf.__libsndfile_version__} cannot decode MP3 (needs 1.1 or newer): "
            "pip install -U soundfile, or convert the file to wav or flac"
        )
    if suffix in _NOT_LIBSNDFILE:
        path = Path(opened)
        return (
            f"cannot read {what}: {_NOT_LIBSNDFILE[suffix]} is not supported; "
            f"convert it first (ffmpeg -i {path.name} {path.stem}.wav). Use a wav, flac, ogg or mp3 file."
        )
    return f"cannot read {what}: {why}. Use a wav, flac, ogg or mp3 file."


def _head(source: Path | bytes) -> bytes:
    """The first 64 kB, where a WAV's chunk headers are."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return fh.read(1 << 16)
    return source[: 1 << 16]


def _empty_data_chunk(head: bytes, size: int) -> int | None:
    """Offset of a WAV's data chunk when it claims 0 bytes while audio follows it: a recording
    that was never finalised (a killed recorder, a writer that could not seek back). It is read
    to the end of the file, as ``sox --ignore-length`` does."""
    at = 12
    while at + 8 <= len(head):
        n = int.from_bytes(head[at + 4 : at + 8], "little")
        if head[at : at + 4] == b"data":
            return at if n == 0 and size > at + 8 else None
        at += 8 + n + (n & 1)
    return None


class _Patched:
    """A read-only binary file with a few bytes replaced (libsndfile reads it through soundfile's virtual IO)."""

    def __init__(self, fh, at: int, patch: bytes) -> None:
        self._fh, self._at, self._patch = fh, at, patch
        self.name = getattr(fh, "name", "audio")
        self.mode = "rb"

    def read(self, n: int = -1) -> bytes:
        start = self._fh.tell()
        data = self._fh.read(n)
        lo, hi = max(start, self._at), min(start + len(data), self._at + len(self._patch))
        if lo >= hi:
            return data
        buf = bytearray(data)
        buf[lo - start : hi - start] = self._patch[lo - self._at : hi - self._at]
        return bytes(buf)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


def _decode(f, src: _Source, what: str, limit: int | None) -> tuple[np.ndarray, int]:
    """Decode block by block (at most ``limit + 1`` frames), check, downmix, resample to 16 kHz."""
    import soundfile as sf

    block_frames = max(1, _BLOCK_SAMPLES // src.channels)
    buf = np.empty((block_frames, src.channels), dtype=np.float32)
    stream = None if src.rate == SAMPLE_RATE else _resampler(src.rate)
    out: list[np.ndarray] = []
    n_read = 0
    while True:
        want = block_frames if limit is None else min(block_frames, limit + 1 - n_read)
        if want <= 0:
            break
        got = _read_block(sf, f, buf, want)
        if got > 0:
            block = buf[:got]
            check_finite(block, what, src.rate, n_read, _FLOAT_HINT)
            mono = block.mean(axis=1, dtype=np.float32) if src.channels > 1 else block[:, 0].copy()
            out.append(mono if stream is None else stream.resample_chunk(mono, last=False))
            n_read += got
        if got < want:
            err = _read_error(sf, f)
            if err:
                raise AudioFileError(
                    f"{what} is damaged: decoding stopped after "
                    f"{_clock(src.seconds(n_read))}"
                    + (f" of the {_clock(src.seconds(src.frames))} its header announces" if src.frames else "")
                    + f" ({err})"
                )
            break
    if stream is not None and n_read:
        out.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    mono = np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)
    return np.ascontiguousarray(mono), n_read


def _resampler(rate: int):
    import soxr

    return soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")


def _read_block(sf, f, buf: np.ndarray, want: int) -> int:
    """sf_readf_float straight into ``buf``.

    SoundFile.read re-seeks after every read, which fails at the end of a valid FLAC stream of
    unknown length (total samples 0 in its STREAMINFO) and throws the decoded block away.
    """
    snd, ffi, handle = getattr(sf, "_snd", None), getattr(sf, "_ffi", None), getattr(f, "_file", None)
    if snd is None or ffi is None or handle is None:  # a soundfile without these internals
        try:
            data = f.read(want, dtype="float32", always_2d=True)
        except Exception:
            return 0
        buf[: len(data)] = data
        return len(data)
    return int(snd.sf_readf_float(handle, ffi.cast("float *", buf.ctypes.data), want))


def _read_error(sf, f) -> str | None:
    """libsndfile's error after a short read, or None at a clean end of file."""
    snd, handle = getattr(sf, "_snd", None), getattr(f, "_file", None)
    if snd is None or handle is None:
        return None
    code = int(snd.sf_error(handle))
    if code == 0:
        return None
    why = sf._ffi.string(snd.sf_error_number(code)).decode("utf-8", "replace")
    return why.removeprefix("Error : ").strip().rstrip(".") or f"libsndfile error {code}"


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio to 16 kHz (soxr, high quality)."""
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
