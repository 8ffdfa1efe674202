"""What every engine module builds on: ``Voice`` (one speaker of one engine) and ``Engine`` (what the registry holds).

An engine module defines one ``Engine`` subclass and one ``Voice`` subclass, imports its library only inside
them (the runtime imports without any TTS installed), and raises only ``VoiceError``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from llasm_cli.audio.decode import resample
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import VoiceError

TTS_TIMEOUT_S = 120  # one subprocess synthesis; a sentence takes well under a second
THREADS = 2  # compute threads of the in-process engines (ONNX Runtime); the subprocess engines use one


def has_cjk(text: str) -> bool:
    """True if ``text`` holds a Han character (CJK Unified Ideographs and extensions)."""
    return any(
        0x4E00 <= (c := ord(ch)) <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0xF900 <= c <= 0xFAFF
        or 0x20000 <= c <= 0x2FA1F
        for ch in text
    )


class Voice(ABC):
    """One speaker of one engine, loaded once. ``speak(text)`` is float32 mono at 16 kHz.

    ``rate`` is the speaking rate each engine renders itself (its own speed or duration control, never a
    resampling that would shift the pitch): 1.0 is the voice's pace, 1.5 half as fast again."""

    rate: float = 1.0

    def __init__(self, engine: str, name: str, languages: tuple[str, ...], licence: str, native_rate: int) -> None:
        self.engine = engine  # the registry's name, the part of a spec before ':'
        self.name = name  # the part after ':'
        self.languages = languages  # lower-case tags, most specific first: ("cmn", "zh-cmn", "zh")
        self.licence = licence  # of the engine and the voice's data, as their distributions state them
        self.native_rate = native_rate

    def set_rate(self, rate: float, what: str = "--rate") -> None:
        from llasm_cli.inputs import check_rate

        self.rate = check_rate(rate, what)

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.name}"

    def speaks(self, language: str) -> bool:
        """True when ``language`` ("zh", "en-us") is one of this voice's tags."""
        return language.lower() in self.languages

    def speak_native(self, text: str) -> np.ndarray:
        """float32 mono audio at ``native_rate``; VoiceError for empty text or no sound."""
        if not text.strip():
            raise VoiceError(f"{self.spec}: nothing to say (empty text)")
        audio = np.ascontiguousarray(self._synthesize(text), dtype=np.float32).reshape(-1)
        if audio.size == 0 or not np.any(audio):
            raise VoiceError(f"{self.spec} produced no sound for {text[:40]!r}")
        return audio

    def native(self, audio: np.ndarray, rate: int, who: str) -> np.ndarray:
        """An engine's audio, checked to be at this voice's native rate (VoiceError otherwise)."""
        if rate != self.native_rate:
            raise VoiceError(f"{who} spoke at {rate} Hz, not {self.native_rate} Hz")
        return audio

    def speak(self, text: str) -> np.ndarray:
        """float32 mono audio at 16 kHz (the assistant's and the dataset builders' rate)."""
        return self.at_16k(self.speak_native(text))

    def at_16k(self, native: np.ndarray) -> np.ndarray:
        """``speak_native``'s audio resampled to 16 kHz, for a caller that keeps both."""
        return np.clip(resample(native, self.native_rate), -1.0, 1.0)

    @abstractmethod
    def _synthesize(self, text: str) -> np.ndarray:
        """The engine's own audio for ``text`` at ``native_rate`` (any float or int16 array)."""

    def __repr__(self) -> str:
        return f"<Voice {self.spec} {'/'.join(self.languages)} {self.native_rate} Hz>"


class Engine(ABC):
    """One TTS engine: how to tell whether it is installed, which voices it has, how to open one."""

    name: str  # the spec prefix: "espeak-ng", "pico", ...
    licence: str
    install: str  # the one line that installs it: "pip install py-nanotts"
    default_voice: str
    dists: tuple[str, ...] = ()  # PyPI distributions that are this engine alone (its install size)
    debs: tuple[str, ...] = ()  # or Debian packages

    def missing(self) -> str | None:
        """None when the engine can run here, else the one-line reason with what to install."""
        for module in self.modules():
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed: {self.install}"
        for exe in self.executables():
            if shutil.which(exe) is None:
                return f"{exe} is not installed: {self.install}"
        return None

    def modules(self) -> tuple[str, ...]:
        return ()

    def executables(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def voices(self) -> tuple[str, ...]:
        """The voice names installed here (the engine must not be ``missing()``)."""

    @abstractmethod
    def languages(self, name: str) -> tuple[str, ...]:
        """Voice ``name``'s language tags, lower case, most specific first: ("en-us", "en")."""

    def voices_for(self, language: str) -> tuple[str, ...]:
        """The installed voices that speak ``language`` ("zh", "en-gb"), the engine's best first."""
        return tuple(v for v in self.voices() if language.lower() in self.languages(v))

    def english_voices(self) -> tuple[str, ...]:
        """The voices a benchmark of English speech runs."""
        return self.voices_for("en")

    @abstractmethod
    def _open(self, name: str, threads: int) -> Voice:
        """Load voice ``name``, already checked by ``check_name``."""

    def check_name(self, name: str) -> None:
        """VoiceError when ``name`` is not a voice of this engine."""
        if name not in self.voices():
            raise VoiceError(f"no {self.name} voice {name!r}; installed: {', '.join(self.voices())}")

    def open(self, name: str | None = None, threads: int = THREADS) -> Voice:
        reason = self.missing()
        if reason is not None:
            raise VoiceError(f"{self.name} cannot speak here: {reason}")
        name = name or self.default_voice
        self.check_name(name)
        return self._open(name, threads)


def import_or_explain(module: str, install: str):
    """``importlib.import_module`` that turns a missing or broken library into VoiceError."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise VoiceError(f"cannot import {module} ({exc}): {install}") from None


def dist_file(dist: str, rel: str, install: str) -> Path:
    """A file that an installed distribution ships, or VoiceError saying how to reinstall it."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise VoiceError(f"{dist} is not installed: {install}") from None
    if not path.is_file():
        raise VoiceError(f"{path} is missing from the installed {dist}: pip install --force-reinstall {dist}")
    return path


def run_tts(argv: list[str], stdin: bytes | None = None, timeout: float = TTS_TIMEOUT_S) -> bytes:
    """Run a command-line TTS; its stdout. A missing command, a timeout or a failure is VoiceError."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise VoiceError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise VoiceError(f"{Path(argv[0]).name} took more than {timeout:g} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VoiceError(f"{Path(argv[0]).name} exited with {proc.returncode}: {err[-1] if err else 'no message'}")
    return proc.stdout


def read_wav(data: bytes | Path, what: str) -> tuple[np.ndarray, int]:
    """A TTS's wav (bytes or file) as float32 mono and its rate; VoiceError when it is not audio."""
    import io

    import soundfile as sf

    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        audio, rate = sf.read(src, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad input
        raise VoiceError(f"{what} wrote no readable audio: {exc}") from None
    return audio.mean(axis=1), int(rate)


__all__ = ["SAMPLE_RATE", "THREADS", "Engine", "Voice", "dist_file", "import_or_explain", "read_wav", "run_tts"]
