"""Multi-turn state in the KV cache: no re-encoding, no re-prefill, same logits as from scratch."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from llasm_cli.assistant import Assistant
from llasm_cli.audio import load_audio
from llasm_cli.conversation import Conversation
from llasm_cli.engine import Engine, Sampling
from tests.reference import rel_err

GREEDY = Sampling(temperature=0.0)


@pytest.fixture()
def bot(swiglu):
    b = Assistant(swiglu[1], backend="ggml", llm_variant="f32")
    yield b
    b.close()


def test_second_turn_reuses_kv(bot, question_audio, mandarin_wav):
    conv = Conversation(bot)
    conv.add_user(question_audio, text="please answer:")
    first = "".join(conv.respond(GREEDY, max_tokens=6))
    assert first.strip()
    calls_after_first = bot.tower.encode_calls
    kv_before = bot.engine.n_past

    second_audio = load_audio(mandarin_wav)
    conv.add_user(second_audio)
    assert bot.tower.encode_calls == calls_after_first + 1  # only the new clip's one window
    logits = conv.prefill()
    assert bot.tower.encode_calls == calls_after_first + 1  # prefill re-encodes nothing
    new_positions = bot.engine.n_past - kv_before
    assert new_positions == sum(len(s) for s in conv.kv_segments[-3:])  # only the new turn went in
    assert new_positions < bot.engine.n_past / 2
    assert conv.prefilled_from_scratch == 0

    with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
        ref = fresh.eval(conv.kv_segments)
        assert fresh.n_past == bot.engine.n_past
    assert rel_err(logits, ref) <= 1e-5


def test_interrupted_answer_keeps_chat(bot, question_audio):
    conv = Conversation(bot)
    conv.add_user(question_audio)
    stream = conv.respond(GREEDY, max_tokens=50)
    next(stream)
    next(stream)
    stream.close()  # what Ctrl-C during an answer does
    assert conv.turns[-1].message.role == "assistant"
    assert bot.engine.n_past == sum(len(s) for s in conv.kv_segments)
    conv.add_user(text="go on")
    assert "".join(conv.respond(GREEDY, max_tokens=4)) is not None
    assert conv.prefilled_from_scratch == 0


def test_overflow_drops_oldest_turns(swiglu, question_audio):
    bot = Assistant(swiglu[1], backend="ggml", n_ctx=256)
    try:
        conv = Conversation(bot, reserve=32)
        for i in range(8):
            conv.add_user(question_audio, text=f"turn {i}")
            "".join(conv.respond(GREEDY, max_tokens=8))
        assert any("dropped" in n for n in conv.notices)
        assert bot.engine.n_past <= 256
        assert conv.turns[0].message.role == "user"
        assert "turn 7" in conv.turns[-2].message.content
    finally:
        bot.close()


def test_reset_and_system(bot):
    conv = Conversation(bot)
    conv.add_user(text="hello")
    "".join(conv.respond(GREEDY, max_tokens=3))
    conv.reset()
    assert conv.turns == [] and bot.engine.n_past == 0
    conv.set_system("You are terse.")
    conv.add_user(text="hello")
    "".join(conv.respond(GREEDY, max_tokens=3))
    assert conv.messages()[0].content == "You are terse."


def test_save_transcript(bot, question_audio, tmp_path):
    conv = Conversation(bot)
    conv.add_user(question_audio, text="listen:")
    "".join(conv.respond(GREEDY, max_tokens=3))
    conv.add_user(text="thanks")
    "".join(conv.respond(GREEDY, max_tokens=3))
    path = conv.save(tmp_path / "chat.json")
    data = json.loads(path.read_text())
    roles = [t["role"] for t in data["turns"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    clip = tmp_path / data["turns"][0]["audio"]
    audio, rate = sf.read(clip)
    assert rate == 16000 and abs(audio.size - question_audio.size) == 0
    assert data["turns"][0]["content"].startswith("listen:")
    assert "audio" not in data["turns"][2]


def test_next_question_reuses_the_prompt_prefix(bot, question_audio, mandarin_wav):
    """A second `ask` keeps the shared system/scaffold KV and still computes the same logits."""
    first = bot.prompt(bot.messages(bot.tower.encode(question_audio), None, None, None))
    bot.engine.eval_prompt(first)
    assert bot.engine.reused == 0
    second = bot.prompt(bot.messages(bot.tower.encode(load_audio(mandarin_wav)), "please:", None, None))
    logits = bot.engine.eval_prompt(second)
    assert bot.engine.reused > 10  # BOS + system prompt + "USER:" at least
    with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
        ref = fresh.eval(second)
    assert rel_err(logits, ref) <= 1e-5
