"""Shared fixtures: tiny checkpoints and bundles built at test time, real speech from espeak-ng."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.audio.decode import load_audio
from tests.helpers import espeak


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """llasm's cache (the CPU probe's verdict) in a temp folder, decided once before any test, so
    subprocesses find the verdict and print nothing about it; and the demo as the model of any command
    run without --model (tests of the default model name it, or clear LLASM_MODEL)."""
    from llasm_cli.llm import cpu_probe

    saved = {k: os.environ.get(k) for k in ("LLASM_CACHE_DIR", "LLASM_MODEL")}
    os.environ["LLASM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["LLASM_MODEL"] = "demo"  # commands a test runs without --model: the arithmetic demo, small and fast
    cpu_probe.extra_buffers_verdict()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llasm")


@pytest.fixture(scope="session")
def question_wav(workdir) -> Path:
    return espeak("what is seven plus five", workdir / "question.wav")


@pytest.fixture(scope="session")
def mandarin_wav(workdir) -> Path:
    return espeak("七加五等于几", workdir / "mandarin.wav", voice="cmn-latn-pinyin")  # "cmn" reads it as English


@pytest.fixture(scope="session")
def question_audio(question_wav) -> np.ndarray:
    return load_audio(question_wav)


def _build(workdir: Path, adaptor: str) -> tuple[Path, Path]:
    from llasm_export.bundle import export_bundle
    from llasm_finetune.tiny import build_tiny

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

APT = "apt-get install pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 (.ci/run does this)"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session")
def pulse(tmp_path_factory) -> dict[str, str]:
    """A private PulseAudio daemon whose default source is the monitor of null sink 'vmic'."""
    missing = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: {APT}")
    runtime = tmp_path_factory.mktemp("xdg-runtime")
    runtime.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k != "PULSE_SERVER"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    started = _run(
        ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
         "--load=module-null-sink sink_name=vmic", "--load=module-native-protocol-unix",
         "--load=module-always-sink"],
        env,
    )
    if started.returncode != 0:
        pytest.fail(f"PulseAudio did not start (exit {started.returncode}): {started.stderr.strip()}")
    socket = runtime / "pulse" / "native"
    env["PULSE_SERVER"] = f"unix:{socket}"
    deadline = time.monotonic() + 10
    while _run(["pactl", "info"], env).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"PulseAudio started but does not answer on {socket}")
        time.sleep(0.1)
    for cmd in (["pactl", "set-default-sink", "vmic"], ["pactl", "set-default-source", "vmic.monitor"]):
        done = _run(cmd, env)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    os.environ.update(XDG_RUNTIME_DIR=env["XDG_RUNTIME_DIR"], PULSE_SERVER=env["PULSE_SERVER"])
    __import__("llasm_cli.audio.mic", fromlist=["rescan_devices"]).rescan_devices()  # PortAudio may have initialised (and listed devices) before the daemon ran
    try:
        yield env
    finally:
        _run(["pulseaudio", "--kill"], env)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


