"""Audio loading and the Whisper log-mel front end.

(Over 400 lines because reading untrusted files safely -- lying headers, NaN samples, huge or
truncated files -- is most of it; the mel front end is the last hundred lines.)

The numbers are Whisper's, and the mel computation mirrors llama.cpp's mtmd whisper
preprocessor step for step (reflect-pad 200 samples in front, 30 s of zeros behind, periodic
Hann window, Slaney mel filters, log10, clamp at max-8, (x+4)/4), so the torch tower sees the
same features as the ggml tower.
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import AudioFileError, AudioTooLongError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one encoder window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one window
N_ENCODER_FRAMES = N_FRAMES // 2  # 1500: Whisper's second conv halves the frame rate
SAMPLES_PER_ENCODER_FRAME = HOP_LENGTH * 2  # 320
MEL_FLOOR = 5.960464477539063e-08  # mtmd's floor before log10
MIN_SAMPLES = N_FFT // 2 + 1  # reflection padding needs one sample plus half a window
MIN_LOAD_SAMPLES = 2  # load_audio refuses less (mtmd aborts on 1 sample); short clips are the no-speech check's
MAX_AUDIO_SECONDS = 30 * 60.0  # load_audio's default length limit (the CLI's --max-audio)
MIN_RATE, MAX_RATE = 1000, 768000  # sample rates outside this range are a damaged header, not audio
MAX_PEAK = 1000.0  # |sample| above this (60 dB over full scale) is mis-scaled float data
_BLOCK_SAMPLES = 1 << 20  # decode this many samples (all channels) at a time
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX frames when the header does not say
_FLOAT_HINT = "; fix it, or re-export it as 16-bit PCM"
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
    import soundfile as sf

    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    path = Path(path)
    size = _check_path(path)
    patched = None  # an unfinished WAV, read through a header fixed in memory
    try:
        f = sf.SoundFile(str(path))
        if f.frames == 0 and f.format in ("WAV", "WAVEX") and (at := _empty_data_chunk(path, size)):
            f.close()
            patched = _Patched(open(path, "rb"), at + 4, b"\xff\xff\xff\xff")  # "to the end of the file"
            f = sf.SoundFile(patched)
    except Exception as exc:  # soundfile raises several types for corrupt input
        if patched is not None:
            patched.close()
        raise AudioFileError(_open_failure(path, exc)) from None
    try:
        with f:
            src = _Source(f, size)
            if not MIN_RATE <= src.rate <= MAX_RATE:
                raise AudioFileError(
                    f"audio file {path} has a sample rate of {src.rate} Hz; "
                    f"expected {MIN_RATE}-{MAX_RATE} Hz (a damaged header?)"
                )
            limit = None if max_seconds is None else int(math.ceil(max_seconds * src.rate))
            if limit is not None and src.frames is not None and src.frames > limit:
                raise _too_long(path, src.seconds(src.frames), max_seconds)
            mono, n_read = _decode(f, src, path, limit)
    finally:
        if patched is not None:
            patched.close()
    if n_read == 0:
        raise AudioFileError(f"audio file {path} contains no samples")
    if limit is not None and n_read > limit:
        raise _too_long(path, None, max_seconds)
    if mono.size < MIN_LOAD_SAMPLES:
        raise AudioFileError(
            f"audio file {path} is too short: {n_read} sample{'s' if n_read != 1 else ''} "
            f"({1000 * src.seconds(n_read):.3g} ms), nothing to listen to"
        )
    return mono


def _too_long(path: Path, seconds: float | None, limit: float) -> AudioTooLongError:
    lasts = "is longer than" if seconds is None else f"lasts {_clock(seconds)}, longer than"
    return AudioTooLongError(
        f"audio file {path} {lasts} the {_clock(limit)} limit; pass --max-audio SECONDS to allow longer audio",
        seconds=seconds, limit=limit,
    )


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
    except OSError as exc:
        raise AudioFileError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
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


def _open_failure(path: Path, exc: Exception) -> str:
    """libsndfile's complaint as one sentence that says what to do."""
    import soundfile as sf

    why = str(exc)
    prefix = f"Error opening {str(path)!r}: "
    if why.startswith(prefix):
        why = why[len(prefix) :]
    why = why.strip().rstrip(".") or type(exc).__name__
    suffix = path.suffix.lower()
    if suffix == ".mp3" and "MP3" not in sf.available_formats():
        return (
            f"cannot read audio file {path}: this soundfile's libsndfile "
            f"{sf.__libsndfile_version__} cannot decode MP3 (needs 1.1 or newer): "
            "pip install -U soundfile, or convert the file to wav or flac"
        )
    if suffix in _NOT_LIBSNDFILE:
        return (
            f"cannot read audio file {path}: {_NOT_LIBSNDFILE[suffix]} is not supported; "
            f"convert it first (ffmpeg -i {path.name} {path.stem}.wav). Use a wav, flac, ogg or mp3 file."
        )
    return f"cannot read audio file {path}: {why}. Use a wav, flac, ogg or mp3 file."


def _empty_data_chunk(path: Path, size: int) -> int | None:
    """Offset of a WAV's data chunk when it claims 0 bytes while audio follows it: a recording
    that was never finalised (a killed recorder, a writer that could not seek back). It is read
    to the end of the file, as ``sox --ignore-length`` does."""
    with open(path, "rb") as fh:
        head = fh.read(min(size, 1 << 16))
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
        self.name = fh.name
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


def _decode(f, src: _Source, path: Path, limit: int | None) -> tuple[np.ndarray, int]:
    """Decode block by block (at most ``limit + 1`` frames), check, downmix, resample to 16 kHz."""
    import soundfile as sf

    block_frames = max(1, _BLOCK_SAMPLES // src.channels)
    buf = np.empty((block_frames, src.channels), dtype=np.float32)
    stream = None if src.rate == SAMPLE_RATE else _resampler(src.rate)
    out: list[np.ndarray] = []
    n_read = 0
    what = f"audio file {path}"
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
                    f"audio file {path} is damaged: decoding stopped after "
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


def split_windows(samples: np.ndarray) -> list[np.ndarray]:
    """Cut audio into consecutive 30 s windows; the last one holds the remainder."""
    if samples.size == 0:
        return []
    return [samples[i : i + N_SAMPLES] for i in range(0, samples.size, N_SAMPLES)]


def audio_token_count(n_samples: int, stack_factor: int) -> int:
    """Embeddings that cover n_samples of real audio in one window: ceil(n / (320 k)), <= 1500/k."""
    per_window = N_ENCODER_FRAMES // stack_factor
    return min(per_window, max(1, math.ceil(n_samples / (SAMPLES_PER_ENCODER_FRAME * stack_factor))))


def unpadded_frames(n_samples: int, stack_factor: int) -> int:
    """Mel frames that cover the real audio of a window, whole stacks only (for unpadded encoding)."""
    return 2 * stack_factor * audio_token_count(n_samples, stack_factor)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-scale, area-normalised triangular filters, shape (n_mels, N_FFT//2 + 1)."""
    min_log_hz, lin_slope, log_step = 1000.0, 3.0 / 200.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz * lin_slope

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        safe = np.maximum(f, min_log_hz)
        return np.where(f < min_log_hz, f * lin_slope, min_log_mel + np.log(safe / min_log_hz) / log_step)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < min_log_mel, m / lin_slope, min_log_hz * np.exp((m - min_log_mel) * log_step))

    m_hi = float(hz_to_mel(np.array(SAMPLE_RATE / 2)))
    hz = mel_to_hz(m_hi * np.arange(n_mels + 2) / (n_mels + 1))
    freqs = np.arange(N_FFT // 2 + 1) * (SAMPLE_RATE / N_FFT)
    left, center, right = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (freqs - left) / np.maximum(1e-30, center - left)
    falling = (right - freqs) / np.maximum(1e-30, right - center)
    weights = np.where((freqs >= left) & (freqs <= center), rising, 0.0)
    weights = np.where((freqs > center) & (freqs <= right), falling, weights)
    weights *= 2.0 / np.maximum(1e-30, right - left)
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    i = np.arange(N_FFT, dtype=np.float64)
    return (0.5 * (1.0 - np.cos(2.0 * math.pi * i / N_FFT))).astype(np.float32)


def log_mel_spectrogram(window: np.ndarray, n_mels: int = 80, n_frames: int | None = None) -> np.ndarray:
    """Log-mel features of one window of at most 30 s, shape (n_mels, 3000), float32.

    With ``n_frames`` only that many frames are computed and the max-8 clamp looks at them alone:
    the chunked (streaming) input mode's definition, cheap for short windows and independent of
    how much zero padding a 30 s window would add.
    """
    if window.size > N_SAMPLES:
        raise ValueError(f"a window holds at most {N_SAMPLES} samples, got {window.size}")
    total = N_FRAMES if n_frames is None else n_frames
    if not 1 <= total <= N_FRAMES:
        raise ValueError(f"n_frames must be from 1 to {N_FRAMES}, got {n_frames}")
    x = np.asarray(window, dtype=np.float32)
    if x.size < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - x.size))
    pad = N_FFT // 2
    behind = N_SAMPLES + 2 * pad if n_frames is None else max(0, (total - 1) * HOP_LENGTH + pad - x.size)
    padded = np.concatenate([x[1 : pad + 1][::-1], x, np.zeros(behind, dtype=np.float32)])
    n_frames_all = min((padded.size - N_FFT) // HOP_LENGTH + 1, N_FRAMES + 1 if n_frames is None else total)
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames_all, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    with _one_blas_thread():
        mel = np.log10(np.maximum(mel_filters(n_mels) @ power.T, MEL_FLOOR))  # (n_mels, n_frames)
    mel = np.maximum(mel, mel.max() - 8.0)
    mel = (mel + 4.0) / 4.0
    return np.ascontiguousarray(mel[:, :total], dtype=np.float32)


@lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _one_blas_thread():
    """The mel product on one BLAS thread: OpenBLAS's workers busy-wait for a while after each
    product, on the cores the audio encoder runs on next. A streamed chunk's encode right after
    its mel took ~61 ms instead of ~39 (1.5 s window, 2 cores); the product itself is ~0.2 ms."""
    return _blas().limit(limits=1)


@dataclass(frozen=True)
class ChunkSpan:
    """One step of chunked (streaming) encoding, in samples of the whole utterance.

    The encoder sees ``[start, end)``: the chunk ``[begin, end)`` behind up to ``context`` seconds of
    the audio before it. Its first ``skip`` embeddings (the context's) are dropped and ``keep``
    remain. A chunk depends only on audio up to its own end, so a stream encoded as it arrives and
    the whole clip encoded at once give the same embeddings.
    """

    start: int
    begin: int
    end: int
    skip: int
    keep: int
    n_frames: int  # mel frames the encoder reads: whole stacks over the window, zeros fill the last


def chunk_spans(n_samples: int, chunk_seconds: float, context_seconds: float, stack_factor: int,
                final: bool = True) -> list[ChunkSpan]:
    """The chunks that cover ``n_samples``; with ``final=False`` only the chunks already complete."""
    unit = SAMPLES_PER_ENCODER_FRAME * stack_factor  # samples per embedding
    chunk, context = round(chunk_seconds * SAMPLE_RATE), round(context_seconds * SAMPLE_RATE)
    if chunk <= 0 or chunk % unit or context < 0 or context % unit or chunk + context > N_SAMPLES:
        raise ValueError(f"chunk ({chunk_seconds} s) and context ({context_seconds} s) must be whole multiples of "
                         f"{unit / SAMPLE_RATE} s, the chunk positive, together at most {CHUNK_SECONDS} s")
    spans = []
    for begin in range(0, n_samples, chunk):
        end = begin + chunk
        if end > n_samples:
            if not final:
                break
            end = n_samples
        start = max(0, begin - context)
        keep = -(-(end - begin) // unit)
        skip = (begin - start) // unit
        spans.append(ChunkSpan(start, begin, end, skip, keep, 2 * stack_factor * (skip + keep)))
    return spans


def chunked_positions(n_samples: int, chunk_seconds: float, context_seconds: float, stack_factor: int) -> int:
    """Embeddings a clip of ``n_samples`` becomes in the chunked input mode (all chunks, the last included):
    always as many as its unpadded windows give (chunks and 30 s windows are whole embeddings), which the
    runtime relies on to size a prompt before it knows how the clip will be encoded."""
    return sum(s.keep for s in chunk_spans(n_samples, chunk_seconds, context_seconds, stack_factor))


def chunk_mel(samples: np.ndarray, span: ChunkSpan, n_mels: int) -> np.ndarray:
    """The log-mel input of one chunk's window: (n_mels, 2 k (skip + keep))."""
    return log_mel_spectrogram(samples[span.start : span.end], n_mels, n_frames=span.n_frames)
