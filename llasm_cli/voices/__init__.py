"""Text-to-speech voices: one module per engine, one registry (``ENGINES``, added to here and only here).

    from llasm_cli.voices import available, open_voice, voice_for
    voice = open_voice("pico:en-US")           # engine:voice; the engine alone means its default voice
    audio = voice.speak("Hello there.")        # float32 mono, 16 kHz
    native = voice.speak_native("Hello.")      # at voice.native_rate, no resampling
    voice_for("zh")                            # the first installed voice that speaks Mandarin

Specs: ``espeak-ng:en-us+f3``, ``espeak-ng:cmn-latn-pinyin``, ``flite:slt``, ``pico:en-US``, ``hibari:heart``,
``kokoro:jf_alpha*0.6+jm_kumo``, ``piper:joe``. Every engine imports its library only when a voice is opened,
so this package imports without any of them; every failure is ``VoiceError``, whose message says what to
install. Nothing here downloads: a voice is installed with its package (pip or apt) or it is not there.
The engines' order is the order of preference for speech out, and each engine's default voice its best measured
(bench/voices.py: bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from llasm_cli.errors import VoiceError

from . import espeak, flite, hibari, kokoro, pico, piper
from .base import THREADS, Engine, Voice

# Preference for speech out, from bench/voices.py (2026-12-07): hibari understood best (Whisper-base WER 0.0%) at
# 0.05 s per audio second in 16 MB; Pico 1.9-4.3% at 0.012 in 8 MB; flite 3.4-8.2%; Piper 1.4% but GPL and 0.14;
# Kokoro 0.5-7.2% but slower than real time on 2 cores; espeak-ng 10-33%, kept last for its 100+ languages.
ENGINES: dict[str, Engine] = {
    e.name: e for e in (hibari.ENGINE, pico.ENGINE, flite.ENGINE, piper.ENGINE, kokoro.ENGINE, espeak.ENGINE)
}


@dataclass(frozen=True)
class EngineStatus:
    """One engine here: its installed voices, or why it cannot run (``reason``, one line)."""

    engine: str
    licence: str
    voices: tuple[str, ...]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def engine(name: str) -> Engine:
    if name not in ENGINES:
        raise VoiceError(f"no TTS engine {name!r}; engines: {', '.join(ENGINES)}")
    return ENGINES[name]


def parse_spec(spec: str) -> tuple[Engine, str | None]:
    """``"espeak-ng:en-us+f3"`` -> (the espeak-ng engine, "en-us+f3"); ``"pico"`` -> (pico, None)."""
    name, _, voice = spec.strip().partition(":")
    return engine(name), voice or None


def open_voice(spec: str, threads: int = THREADS) -> Voice:
    """Load the voice ``spec`` names (``engine[:voice]``); VoiceError says what to install when it cannot."""
    eng, name = parse_spec(spec)
    return eng.open(name, threads)


def available() -> list[EngineStatus]:
    """Every engine in preference order: its installed voices, or the one-line reason it cannot run here."""
    out = []
    for eng in ENGINES.values():
        reason = eng.missing()
        voices: tuple[str, ...] = ()
        if reason is None:
            try:
                voices = eng.voices()
            except VoiceError as exc:
                reason = str(exc)
        out.append(EngineStatus(eng.name, eng.licence, voices, reason))
    return out


def voice_for(language: str, threads: int = THREADS) -> Voice:
    """The most preferred installed voice that speaks ``language`` ("en", "zh", "en-gb").

    VoiceError, one line, when none does: which engines would, and how to install them.
    """
    for eng in ENGINES.values():
        if eng.missing() is None and (names := eng.voices_for(language)):
            return eng.open(names[0], threads)
    would = {"zh": "espeak-ng (apt-get install espeak-ng) speaks Mandarin as espeak-ng:cmn-latn-pinyin"}
    hint = would.get(language.lower().split("-")[0], "see `espeak-ng --voices` for the languages espeak-ng speaks")
    raise VoiceError(f"no installed voice speaks {language!r}: {hint}")


__all__ = ["ENGINES", "THREADS", "Engine", "EngineStatus", "Voice", "VoiceError", "available", "engine",
           "open_voice", "parse_spec", "voice_for"]
