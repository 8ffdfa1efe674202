"""Audio loading and the Whisper log-mel front end.

The numbers are Whisper's, and the mel computation mirrors llama.cpp's mtmd whisper
preprocessor step for step (reflect-pad 200 samples in front, 30 s of zeros behind, periodic
Hann window, Slaney mel filters, log10, clamp at max-8, (x+4)/4), so the torch tower sees the
same features as the ggml tower.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import AudioFileError

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


def load_audio(path: str | Path) -> np.ndarray:
    """Read any soundfile-supported file (wav/flac/ogg/...) as 16 kHz mono float32."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioFileError(f"{path} is a directory, not an audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise AudioFileError(
            f"cannot read audio file {path}: {exc}. Use a wav, flac, ogg or mp3 file."
        ) from None
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {path} contains no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(np.ascontiguousarray(mono, dtype=np.float32), rate)


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


def log_mel_spectrogram(window: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-mel features of one window of at most 30 s, shape (n_mels, 3000), float32."""
    if window.size > N_SAMPLES:
        raise ValueError(f"a window holds at most {N_SAMPLES} samples, got {window.size}")
    x = np.asarray(window, dtype=np.float32)
    if x.size < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - x.size))
    pad = N_FFT // 2
    padded = np.concatenate(
        [x[1 : pad + 1][::-1], x, np.zeros(N_SAMPLES + 2 * pad, dtype=np.float32)]
    )
    n_frames = (padded.size - N_FFT) // HOP_LENGTH + 1
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = np.log10(np.maximum(mel_filters(n_mels) @ power.T, MEL_FLOOR))  # (n_mels, n_frames)
    mel = np.maximum(mel, mel.max() - 8.0)
    mel = (mel + 4.0) / 4.0
    return np.ascontiguousarray(mel[:, :N_FRAMES], dtype=np.float32)
