"""espeak-ng (Debian ``espeak-ng``), run as a subprocess: ``espeak-ng -v VOICE[+VARIANT] --stdout --stdin``.

Licence: GPL-3.0-or-later (espeak-ng and its data; run as a separate program, not linked). About 130 voices
in 100+ languages, 22,050 Hz, formant synthesis: the fastest and the least natural of the engines.
Mandarin: ``espeak-ng:cmn-latn-pinyin`` (Han characters in, Mandarin with tones out; Debian's 1.51 ``cmn``
reads its dictionary's pinyin in English), Cantonese ``yue``. Specs: ``espeak-ng:en-us``, ``espeak-ng:en-us+f3`` (a variant
from ``espeak-ng --voices=variant``), ``espeak-ng:cmn``.
"""

from __future__ import annotations

import functools
import re
import subprocess

import numpy as np

from llasm_cli.errors import VoiceError

from .base import Engine, Voice, read_wav, run_tts

NATIVE_RATE = 22050
LICENCE = "GPL-3.0-or-later"
# Debian's espeak-ng 1.51 `cmn` reads its dictionary's pinyin ("ni3") as English ("nee three"); the pinyin
# voice speaks the same Han characters as Mandarin, with tones (Whisper heard it; see bench/RESULTS.md).
PREFERRED = ("cmn-latn-pinyin",)
_OTHER = re.compile(r"\(([^\s()]+) \d+\)")


@functools.cache
def _table(which: str = "") -> dict[str, tuple[str, ...]]:
    """``espeak-ng --voices[=which]`` as {name: language tags}; for variants, {name: ()}."""
    argv = ["espeak-ng", f"--voices={which}" if which else "--voices"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise VoiceError(f"cannot list espeak-ng voices: {exc}") from None
    table: dict[str, tuple[str, ...]] = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        if which == "variant":
            table.setdefault(fields[4].removeprefix("!v/"), ())
            continue
        name = fields[1].lower()
        tags = [name, *(t.lower() for t in _OTHER.findall(line))]
        tags += [t.split("-")[0] for t in tags]
        table.setdefault(name, tuple(dict.fromkeys(tags)))
    return table


class EspeakVoice(Voice):
    def __init__(self, name: str, languages: tuple[str, ...]) -> None:
        super().__init__("espeak-ng", name, languages, LICENCE, NATIVE_RATE)

    def _synthesize(self, text: str) -> np.ndarray:
        wav = run_tts(["espeak-ng", "-v", self.name, "-s", str(round(ESPEAK_WPM * self.rate)), "--stdout", "--stdin"],
                      text.encode("utf-8"))
        return self.native(*read_wav(wav, "espeak-ng"), "espeak-ng")


ESPEAK_WPM = 175  # espeak-ng's own default pace, words per minute


class EspeakEngine(Engine):
    name = "espeak-ng"
    licence = LICENCE
    install = "apt-get install espeak-ng"
    default_voice = "en-us"
    debs = ("espeak-ng", "libespeak-ng1", "espeak-ng-data")

    def executables(self) -> tuple[str, ...]:
        return ("espeak-ng",)

    def voices(self) -> tuple[str, ...]:
        return tuple(_table())

    def languages(self, name: str) -> tuple[str, ...]:
        return _table().get(name.partition("+")[0].lower(), ())

    def voices_for(self, language: str) -> tuple[str, ...]:
        found = super().voices_for(language)
        return tuple(sorted(found, key=lambda v: v not in PREFERRED))

    def check_name(self, name: str) -> None:
        base, _, variant = name.partition("+")
        if base.lower() not in _table():
            raise VoiceError(f"no espeak-ng voice {base!r}; see `espeak-ng --voices`")
        if variant and variant not in _table("variant"):
            raise VoiceError(f"no espeak-ng variant {variant!r}; see `espeak-ng --voices=variant`")

    def _open(self, name: str, threads: int) -> Voice:
        return EspeakVoice(name, self.languages(name))


ENGINE = EspeakEngine()
