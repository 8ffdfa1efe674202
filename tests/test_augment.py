"""finetune/augment.py: each recipe's degraded clips are the ones it always made (the demo draws the
noise seed first, distill_data the SNR first), and an unknown degradation is an error."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
from llasm_finetune.augment import add_noise, degrade, phone_band, write_clip

SR = 16000


@pytest.fixture
def clip(tmp_path):
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    return path


def expected(path, tmp_path, x_of) -> bytes:
    x, sr = sf.read(path, dtype="float32")
    write_clip(tmp_path / "expected.wav", x_of(x, sr), sr)
    return (tmp_path / "expected.wav").read_bytes()


def test_noise_draws_in_each_recipes_order(clip, tmp_path):
    demo_rng = random.Random("audio/q0-0001.wav")  # the demo: seed, colour, then SNR
    seed, pink = demo_rng.randrange(2**32), demo_rng.random() < 0.5
    snr = demo_rng.uniform(10, 30)
    demo = expected(clip, tmp_path, lambda x, sr: add_noise(x, snr, pink, seed))
    distill_rng = random.Random("q00001-0")  # distill_data: SNR, colour, then seed
    snr, pink, seed = distill_rng.uniform(10, 30), distill_rng.random() < 0.5, distill_rng.randrange(2**32)
    distill = expected(clip, tmp_path, lambda x, sr: add_noise(x, snr, pink, seed))
    original = clip.read_bytes()

    degrade(clip, "noise", random.Random("audio/q0-0001.wav"))
    assert clip.read_bytes() == demo
    clip.write_bytes(original)
    degrade(clip, "noise", random.Random("q00001-0"), snr_first=True)
    assert clip.read_bytes() == distill


def test_phone_band_and_unknown_kind(clip, tmp_path):
    phone = expected(clip, tmp_path, phone_band)
    original = clip.read_bytes()
    degrade(clip, "phone", random.Random(0))
    assert clip.read_bytes() == phone
    clip.write_bytes(original)
    with pytest.raises(ValueError, match="unknown degradation 'reverb'"):
        degrade(clip, "reverb", random.Random(0))
    assert clip.read_bytes() == original
