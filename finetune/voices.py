"""Voices that speak a dataset's human turns: espeak-ng, or any command-line TTS through a template.

``TtsPlan`` draws each turn's voice, speed and pitch from a generator seeded by (seed, turn), so a rerun
speaks the same; ``speak`` (espeak-ng) and ``speak_command`` (a ``--tts-command`` template) write 16 kHz
mono PCM16 wavs atomically. Used by the dataset builder (build_dataset.py) and the demo recipe.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llasm_cli.audio.decode import resample
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import VoiceError
from llasm_cli.files import atomic_path
from llasm_cli.voices.base import has_cjk, read_wav, run_tts  # noqa: F401 (has_cjk: the builder's too)

from .records import DataError

DEFAULT_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
DEFAULT_ZH_VOICES = ("cmn-latn-pinyin",)  # Debian's plain "cmn" reads Han characters as English letters
DEFAULT_SPEED = (140, 190)  # espeak-ng words per minute
DEFAULT_PITCH = (30, 70)  # espeak-ng 0..99
TTS_TIMEOUT_S = 300
TMP_PREFIX = ".tmp-"  # the builder's temporaries: the same prefix, so a resumed run sweeps them
PLACEHOLDER = re.compile(r"\{(text|out|voice|speed|pitch)\}")


class TtsError(DataError):
    """A TTS engine cannot run, or failed on one text."""


def _store_wav(audio: bytes | Path, out_path: Path) -> float:
    """Read TTS output (any soundfile format), make it 16 kHz mono, write ``out_path`` atomically."""
    import soundfile as sf

    try:
        mono, rate = read_wav(audio, "the TTS")  # the runtime's voices read their engines' output the same way
    except VoiceError as exc:
        raise TtsError(str(exc)) from None
    if mono.size == 0 or not np.any(mono):
        raise TtsError("the TTS produced no sound")
    pcm = np.clip(resample(np.ascontiguousarray(mono, dtype=np.float32), rate), -1.0, 1.0)
    with atomic_path(out_path) as tmp:
        sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return pcm.size / SAMPLE_RATE


def _run(argv: list[str], stdin: bytes | None) -> bytes:
    """The TTS command's stdout (the runtime's voices run commands the same way); a failure is a TtsError."""
    try:
        return run_tts(argv, stdin, TTS_TIMEOUT_S)  # a dataset's turn may be a long paragraph
    except VoiceError as exc:
        raise TtsError(str(exc)) from None


def espeak_path() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TtsError("espeak-ng is not installed: apt-get install espeak-ng (or use --tts-command)")
    return exe


def speak(text: str, out_path: str | Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> float:
    """Speak ``text`` with espeak-ng into ``out_path`` (16 kHz mono PCM16 wav); return its seconds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".wav", dir=out_path.parent)
    os.close(fd)
    try:
        argv = [espeak_path(), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", raw, "--stdin"]
        _run(argv, text.encode("utf-8"))
        return _store_wav(Path(raw), out_path)
    finally:
        Path(raw).unlink(missing_ok=True)


def command_argv(template: str, values: dict[str, str]) -> list[str]:
    """Split ``template`` like a shell line, then fill ``{text}``/``{out}``/... inside each argument.

    Filling after splitting keeps every value one argument whatever it contains (quotes, spaces,
    ``{out}``), and no shell ever sees it."""
    try:
        parts = shlex.split(template)
    except ValueError as exc:
        raise TtsError(f"cannot split --tts-command {template!r}: {exc}") from None
    if not parts:
        raise TtsError("--tts-command is empty")
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], p) for p in parts]


def speak_command(
    text: str, out_path: str | Path, template: str, voice: str = "", speed: int = 0, pitch: int = 0
) -> float:
    """Speak ``text`` with a command-line TTS given by ``template``; return the wav's seconds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".wav", dir=out_path.parent)
    os.close(fd)
    try:
        values = {"text": text, "out": raw, "voice": voice, "speed": str(speed), "pitch": str(pitch)}
        argv = command_argv(template, values)
        stdout = _run(argv, None if "{text}" in template else text.encode("utf-8"))
        if "{out}" in template:
            return _store_wav(Path(raw), out_path)
        if not stdout:
            raise TtsError("the TTS command wrote no audio to stdout (or use {out} in the template)")
        return _store_wav(stdout, out_path)
    finally:
        Path(raw).unlink(missing_ok=True)


@dataclass(frozen=True)
class TtsPlan:
    """How every turn is spoken: the engine and the ranges its settings are drawn from."""

    voices: tuple[str, ...] = DEFAULT_VOICES
    zh_voices: tuple[str, ...] = DEFAULT_ZH_VOICES
    variants: tuple[str, ...] = ()
    speed: tuple[int, int] = DEFAULT_SPEED
    pitch: tuple[int, int] = DEFAULT_PITCH
    command: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.voices or not self.zh_voices:
            raise TtsError("give at least one voice in --voices and --zh-voices")
        for name, (lo, hi) in (("speed", self.speed), ("pitch", self.pitch)):
            if lo > hi or lo < 0:
                raise TtsError(f"--{name} range {lo}:{hi} is empty or negative")

    def draw(self, key: str, text: str) -> dict[str, Any]:
        """The settings for one turn: the same for the same (seed, key, text script)."""
        rng = random.Random(f"{self.seed}:{key}")
        voice = rng.choice(self.zh_voices if has_cjk(text) else self.voices)
        variant = rng.choice(self.variants) if self.variants else None
        speed, pitch = rng.randint(*self.speed), rng.randint(*self.pitch)
        if variant:
            voice = f"{voice}+{variant}"
        if self.command is None:
            return {"engine": "espeak-ng", "voice": voice, "speed": speed, "pitch": pitch}
        params: dict[str, Any] = {"engine": "command", "command": self.command}
        for name, value in (("voice", voice), ("speed", speed), ("pitch", pitch)):
            if "{" + name + "}" in self.command:
                params[name] = value
        return params

    def check(self) -> None:
        """Fail early (before any work) when the engine cannot run at all."""
        if self.command is not None:
            exe = command_argv(self.command, dict.fromkeys(("text", "out", "voice", "speed", "pitch"), ""))[0]
            if shutil.which(exe) is None:
                raise TtsError(f"TTS command not found: {exe}")
            return
        exe = espeak_path()
        for voice in sorted(set(self.voices + self.zh_voices)):
            if subprocess.run([exe, "-q", "-v", voice, "a"], capture_output=True, check=False).returncode != 0:
                raise TtsError(f"espeak-ng has no voice {voice!r} (see: espeak-ng --voices)")

    def speak(self, text: str, out_path: Path, params: dict[str, Any]) -> float:
        if self.command is None:
            return speak(text, out_path, params["voice"], params["speed"], params["pitch"])
        return speak_command(
            text, out_path, self.command, params.get("voice", ""), params.get("speed", 0), params.get("pitch", 0)
        )
