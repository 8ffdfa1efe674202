"""The Whisper log-mel front end.

The mel computation mirrors llama.cpp's mtmd whisper preprocessor step for step (reflect-pad 200
samples in front, 30 s of zeros behind, periodic Hann window, Slaney mel filters, log10, clamp at
max-8, (x+4)/4), so the onnx and torch towers see the same features as the ggml tower.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from llasm_cli.audio.geometry import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE, ChunkSpan, unpadded_frames

MEL_FLOOR = 5.960464477539063e-08  # mtmd's floor before log10
MIN_SAMPLES = N_FFT // 2 + 1  # reflection padding needs one sample plus half a window


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


def chunk_mel(samples: np.ndarray, span: ChunkSpan, n_mels: int) -> np.ndarray:
    """The log-mel input of one chunk's window: (n_mels, 2 k (skip + keep))."""
    return log_mel_spectrogram(samples[span.start : span.end], n_mels, n_frames=span.n_frames)


def unpadded_mel(window: np.ndarray, n_mels: int, stack_factor: int) -> np.ndarray:
    """``log_mel_spectrogram(window)[:, :unpadded_frames(...)]`` without the 30 s of padding.

    The max-8 clamp of the padded window looks at every frame, but frames that hold none of the
    window's samples are silence at the floor and never the maximum: computing only the frames
    that touch the audio gives the same numbers, for a 2 s window about a hundredth of the work
    (the whole padded mel took longer than ONNX Runtime's encoder).
    """
    keep = unpadded_frames(window.size, stack_factor)
    touched = -(-(max(window.size, MIN_SAMPLES) + N_FFT // 2) // HOP_LENGTH)  # frames starting inside the audio
    need = max(keep, touched)
    mel = log_mel_spectrogram(window, n_mels, n_frames=need) if need <= N_FRAMES else log_mel_spectrogram(window, n_mels)
    return np.ascontiguousarray(mel[:, :keep])
