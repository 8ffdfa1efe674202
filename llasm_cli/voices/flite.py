"""CMU Flite (Debian ``flite``), run as a subprocess: ``flite -voice VOICE -t TEXT -o out.wav``.

Licence: BSD-style (CMU/Edinburgh, see /usr/share/doc/flite/copyright). English only, diphone and clustergen
voices: ``kal`` (8 kHz), ``kal16``, ``awb`` (Scottish), ``rms``, ``slt`` (16 kHz). ``awb_time`` speaks only
the time of day and is left out.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from llasm_cli.errors import VoiceError

from .base import Engine, Voice, read_wav, run_tts

LICENCE = "BSD-style (CMU Flite)"
RATES = {"kal": 8000}  # every other voice is 16 kHz
LIMITED_DOMAIN = ("awb_time",)


@functools.cache
def _installed() -> tuple[str, ...]:
    """``flite -lv``: "Voices available: kal awb_time kal16 awb rms slt"."""
    try:
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise VoiceError(f"cannot list flite voices: {exc}") from None
    names = out.partition(":")[2].split()
    return tuple(n for n in names if n not in LIMITED_DOMAIN)


class FliteVoice(Voice):
    def __init__(self, name: str, languages: tuple[str, ...]) -> None:
        super().__init__("flite", name, languages, LICENCE, RATES.get(name, 16000))

    def _synthesize(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="llasm-flite-") as tmp:
            out = Path(tmp) / "out.wav"
            # -t takes the next argument as text whatever it starts with ("-5 degrees")
            run_tts(["flite", "-voice", self.name, "--setf", f"duration_stretch={1 / self.rate:.3f}", "-t", " ".join(text.split()), "-o", str(out)])
            audio, rate = read_wav(out, "flite")
        return self.native(audio, rate, f"flite {self.name}")


class FliteEngine(Engine):
    name = "flite"
    licence = LICENCE
    install = "apt-get install flite"
    default_voice = "rms"  # Whisper-base WER 3.4%; kal16 3.8%, slt 5.3%, kal 7.7%, awb 8.2% (bench/RESULTS.md)
    debs = ("flite", "libflite1")

    def executables(self) -> tuple[str, ...]:
        return ("flite",)

    def voices(self) -> tuple[str, ...]:
        return _installed()

    def languages(self, name: str) -> tuple[str, ...]:
        return ("en-gb", "en") if name == "awb" else ("en-us", "en")  # awb: a Scottish speaker

    def _open(self, name: str, threads: int) -> Voice:
        return FliteVoice(name, self.languages(name))


ENGINE = FliteEngine()
