"""hibari (PyPI ``hibari-tts``, ``pip install hibari-tts``): a 7.9 MB distilled Kokoro on ONNX Runtime.

Licence: Apache-2.0. English only, 24 kHz float32, about 0.06 s of compute per second of audio. One voice
ships in the package, ``heart`` (American, female); hibari downloads its other voices (emma, fenrir, fable,
kore) on first use, which llasm never lets it do: those count as installed only once they are in hibari's
cache (``HIBARI_HOME``), put there by hand.
"""

from __future__ import annotations

import numpy as np

from llasm_cli.errors import VoiceError

from .base import Engine, Voice, import_or_explain

LICENCE = "Apache-2.0"
INSTALL = "pip install hibari-tts"
NATIVE_RATE = 24000


class HibariVoice(Voice):
    def __init__(self, name: str, languages: tuple[str, ...], threads: int) -> None:
        hibari = import_or_explain("hibari", INSTALL)
        from hibari.voices import voice_path

        super().__init__("hibari", name, languages, LICENCE, NATIVE_RATE)
        if hibari.SAMPLE_RATE != NATIVE_RATE:
            raise VoiceError(f"hibari-tts {hibari.__version__} speaks at {hibari.SAMPLE_RATE} Hz, not {NATIVE_RATE}")
        model = voice_path(name, download_missing=False)
        self._tts = hibari.Hibari(voice=name, model=model, threads=threads)

    def _synthesize(self, text: str) -> np.ndarray:
        return self._tts(text, speed=self.rate, seed=0)  # seeded: the same text gives the same audio


class HibariEngine(Engine):
    name = "hibari"
    licence = LICENCE
    install = INSTALL
    default_voice = "heart"
    dists = ("hibari-tts",)

    def modules(self) -> tuple[str, ...]:
        return ("hibari",)

    def voices(self) -> tuple[str, ...]:
        from hibari.voices import VOICES, voice_path

        def present(name: str) -> bool:
            try:
                voice_path(name, download_missing=False)
            except FileNotFoundError:
                return False
            return True

        return tuple(name for name in VOICES if present(name))

    def languages(self, name: str) -> tuple[str, ...]:
        from hibari.voices import VOICES

        tag = VOICES[name]["language"].lower()  # "en-US"
        return (tag, tag.split("-")[0])

    def _open(self, name: str, threads: int) -> Voice:
        return HibariVoice(name, self.languages(name), threads)


ENGINE = HibariEngine()
