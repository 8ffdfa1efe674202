"""Audio augmentation for the recipes: what real microphones and lines do to speech that espeak-ng
does not (noise, a telephone band, another speaking rate).

Array functions (samples in, samples out) and the two clip operations the recipes apply to a wav
while it is written (`warp`, `degrade`). Used by finetune/demo.py and finetune/distill_data.py for
training clips, and by bench/eval_demo.py and bench/eval_distill.py for fixed-level test conditions.
"""

from __future__ import annotations

import random
from pathlib import Path

NOISE_SNR_DB = (10, 30)  # degrade: noise this far below the speech, drawn per clip
PINK_SHARE = 0.5  # degrade: share of noisy clips with pink-ish rather than white noise
PHONE_RATE = 8000  # a telephone line's sampling rate
PHONE_BAND = (300, 3400)  # Hz a telephone line passes
PINK_WINDOW = 64  # samples of the moving average taken off the integrated noise


def speed(x, sr: int, factor: float):
    """The samples played ``factor`` times faster: pitch, formants and tempo together."""
    import soxr

    return soxr.resample(x, sr, round(sr / factor))


def add_noise(x, snr_db: float, pink: bool, seed: int):
    """White or pink-ish noise (more energy low, like fans and rooms) at ``snr_db`` below the speech."""
    import numpy as np

    noise = np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    if pink:
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(PINK_WINDOW) / PINK_WINDOW, mode="same")
    return x + noise * np.sqrt(np.mean(x**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))


def phone_band(x, sr: int):
    """What a telephone line leaves: 8 kHz sampling, 300-3400 Hz."""
    import numpy as np
    import soxr

    y = soxr.resample(x, sr, PHONE_RATE)
    spec = np.fft.rfft(y)
    freqs = np.fft.rfftfreq(y.size, 1 / PHONE_RATE)
    spec[(freqs < PHONE_BAND[0]) | (freqs > PHONE_BAND[1])] = 0
    return soxr.resample(np.fft.irfft(spec, y.size).astype(np.float32), PHONE_RATE, sr)


def write_clip(path: Path, x, sr: int) -> None:
    """16-bit wav, scaled down only if it would clip."""
    import numpy as np
    import soundfile as sf

    peak = float(np.abs(x).max())
    sf.write(path, x / peak * 0.9 if peak > 0.9 else x, sr, subtype="PCM_16")


def warp(path: Path, factor: float) -> None:
    """Play the clip ``factor`` times faster: a longer or shorter vocal tract than espeak's voices have
    (the classic speed perturbation of ASR training)."""
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32")
    sf.write(path, speed(x, sr, factor), sr, subtype="PCM_16")


def degrade(path: Path, kind: str, rng: random.Random, snr_first: bool = False) -> None:
    """The clip with noise ("noise": 10-30 dB SNR, white or pink) or through a telephone line ("phone"):
    real microphones are not espeak.

    ``rng`` draws the noise's level, colour and seed; the demo draws the seed first and the SNR
    last, distill_data the SNR first (``snr_first``): each order kept, so each recipe still speaks
    the clips it always did."""
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32")
    if kind == "noise":
        if snr_first:
            snr, pink, seed = rng.uniform(*NOISE_SNR_DB), rng.random() < PINK_SHARE, rng.randrange(2**32)
        else:
            seed, pink = rng.randrange(2**32), rng.random() < PINK_SHARE
            snr = rng.uniform(*NOISE_SNR_DB)
        x = add_noise(x, snr, pink, seed)
    elif kind == "phone":
        x = phone_band(x, sr)
    else:
        raise ValueError(f"unknown degradation {kind!r}: expected 'noise' or 'phone'")
    write_clip(path, x, sr)
