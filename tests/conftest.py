"""Shared fixtures: tiny checkpoints and bundles built at test time, real speech from espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.audio import SAMPLE_RATE, load_audio


def espeak(text: str, path: Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> Path:
    """Speak ``text`` into a wav file with espeak-ng (real speech, 22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng (.ci/run does this)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True, capture_output=True,
    )
    return path


def speech_of_length(base: np.ndarray, seconds: float) -> np.ndarray:
    """Real speech tiled (with short gaps) to exactly ``seconds`` at 16 kHz."""
    gap = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)
    unit = np.concatenate([base, gap])
    n = int(round(seconds * SAMPLE_RATE))
    return np.resize(unit, n).astype(np.float32)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llasm")


@pytest.fixture(scope="session")
def question_wav(workdir) -> Path:
    return espeak("what is seven plus five", workdir / "question.wav")


@pytest.fixture(scope="session")
def mandarin_wav(workdir) -> Path:
    return espeak("七加五等于几", workdir / "mandarin.wav", voice="cmn")


@pytest.fixture(scope="session")
def question_audio(question_wav) -> np.ndarray:
    return load_audio(question_wav)


def _build(workdir: Path, adaptor: str) -> tuple[Path, Path]:
    from export.bundle import export_bundle
    from finetune.tiny import build_tiny

    ckpt = build_tiny(workdir / f"ckpt-{adaptor}", adaptor=adaptor, seed=1)
    bundle = workdir / f"bundle-{adaptor}"
    export_bundle(ckpt, bundle, ("f32", "f16"))
    return ckpt, bundle


@pytest.fixture(scope="session")
def swiglu(workdir) -> tuple[Path, Path]:
    """(checkpoint, bundle) of a tiny random stack-swiglu model."""
    return _build(workdir, "stack-swiglu")


@pytest.fixture(scope="session")
def llasm_v1(workdir) -> tuple[Path, Path]:
    """(checkpoint, bundle) of a tiny random llasm-v1 (original LLaSM layout) model."""
    return _build(workdir, "llasm-v1")
