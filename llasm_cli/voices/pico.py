"""SVOX Pico through PyPI ``py-nanotts`` (``pip install py-nanotts``): ``NanoTTS().speak(text, voice)``.

Licence: Apache-2.0 (the bindings, the Pico engine and its lingware). 5 MB of C and lingware, 16 kHz int16,
about 0.007 s of compute per second of audio. Voices: ``en-US``, ``en-GB``, ``de-DE``, ``es-ES``, ``fr-FR``,
``it-IT``; no Chinese.
"""

from __future__ import annotations

import numpy as np

from llasm_cli.errors import VoiceError

from .base import Engine, Voice, import_or_explain

LICENCE = "Apache-2.0"
INSTALL = "pip install py-nanotts"
NATIVE_RATE = 16000
VOICES = ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT")


class PicoVoice(Voice):
    def __init__(self, name: str, languages: tuple[str, ...]) -> None:
        super().__init__("pico", name, languages, LICENCE, NATIVE_RATE)
        self._tts = import_or_explain("py_nanotts", INSTALL).NanoTTS()

    def _synthesize(self, text: str) -> np.ndarray:
        try:
            pcm = self._tts.speak(text, voice=self.name, speed=self.rate)
        except (ValueError, RuntimeError) as exc:
            raise VoiceError(f"pico {self.name} failed on {text[:40]!r}: {exc}") from None
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class PicoEngine(Engine):
    name = "pico"
    licence = LICENCE
    install = INSTALL
    default_voice = "en-GB"  # Whisper-base WER 1.9% against en-US's 4.3% (bench/RESULTS.md)
    dists = ("py-nanotts",)

    def modules(self) -> tuple[str, ...]:
        return ("py_nanotts",)

    def voices(self) -> tuple[str, ...]:
        return VOICES

    def languages(self, name: str) -> tuple[str, ...]:
        return (name.lower(), name.split("-")[0].lower())

    def _open(self, name: str, threads: int) -> Voice:
        return PicoVoice(name, self.languages(name))


ENGINE = PicoEngine()
