"""Multi-turn state in the KV cache: no re-encoding, no re-prefill, same logits as from scratch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.assistant import Assistant
from llasm_cli.audio.decode import load_audio
from llasm_cli.conversation import Conversation
from llasm_cli.errors import ModelFileError
from llasm_cli.llm.engine import Engine, Sampling
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
    assert bot.engine.reused == kv_before  # everything the cache held was kept: only the new turn went in
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
    bot.engine.sync(first)
    assert bot.engine.reused == 0
    second = bot.prompt(bot.messages(bot.tower.encode(load_audio(mandarin_wav)), "please:", None, None))
    logits = bot.engine.sync(second)
    assert bot.engine.reused > 10  # BOS + system prompt + "USER:" at least
    with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
        ref = fresh.eval(second)
    assert rel_err(logits, ref) <= 1e-5


def test_interrupt_mid_prefill_rolls_back_exactly(bot, question_audio, mandarin_wav):
    """Ctrl-C between two llama_decode calls of a prefill: the turn leaves no trace in the chat or
    the KV cache, and the next turn computes what a fresh context fed the same history computes."""
    conv = Conversation(bot)
    conv.add_user(question_audio, text="please answer:")
    "".join(conv.respond(GREEDY, max_tokens=6))
    turns_before, fed_before = len(conv.turns), bot.engine.n_past
    real_decode, calls = bot.engine._decode, []

    def decode_then_ctrl_c(batch):
        real_decode(batch)
        calls.append(batch.n_tokens)
        if len(calls) == 2:  # the signal lands right after a decode returned, mid-prefill
            raise KeyboardInterrupt

    bot.engine._decode = decode_then_ctrl_c
    n_batch, bot.engine.n_batch = bot.engine.n_batch, 16  # a turn's tokens and rows go in as one segment of rows
    conv.add_user(load_audio(mandarin_wav))
    with pytest.raises(KeyboardInterrupt):
        conv.prefill()
    del bot.engine._decode
    bot.engine.n_batch = n_batch
    assert len(calls) == 2 and calls[0] > 0  # it really stopped halfway
    assert len(conv.turns) == turns_before  # the interrupted user turn is gone
    assert bot.engine.n_past <= fed_before  # nothing half-fed stays in the cache
    assert bot.engine.n_past == sum(len(s) for s in bot.engine.fed)

    conv.add_user(text="go on")
    logits = conv.prefill()
    with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
        ref = fresh.eval(bot.prompt(conv.messages()))
        assert fresh.n_past == bot.engine.n_past
    assert rel_err(logits, ref) <= 1e-5


def test_generated_tokens_go_in_as_eval_would_put_them(bot):
    """The decode loop's own one-token step (Engine._feed_back) records and computes what eval does,
    and takes its position back out when the decode fails."""
    from llasm_cli.llm.engine import Sampler

    engine = bot.engine
    engine.reset()
    prompt = [engine.bos, *engine.tokenize("USER: count with me ASSISTANT:")]
    logits = engine.eval([prompt])
    out = list(engine.generate(logits, Sampler(Sampling(temperature=0.0, ignore_eos=True)), 8))
    assert len(out) == 8 and engine.fed == [prompt + out] and engine.n_past == len(prompt) + 8  # the last fed back too
    last = engine.logits()
    with Engine(engine.path, n_ctx=engine.n_ctx, exact=True) as fresh:
        ref = fresh.eval([prompt + out])
    assert rel_err(last, ref) <= 1e-5
    before, fed = engine.n_past, [list(s) for s in engine.fed]

    def fail(batch):
        raise RuntimeError("simulated failure")

    engine._decode = fail
    steps = engine.generate(last, Sampler(Sampling(temperature=0.0, ignore_eos=True)), 2)
    next(steps)  # the token sampled from ``last``; feeding it back is what fails
    with pytest.raises(RuntimeError, match="simulated"):
        next(steps)
    del engine._decode
    assert engine.n_past == before and engine.fed == fed
    engine.logits = lambda: np.full(engine.n_vocab, np.nan, np.float32)  # what corrupt weights compute
    steps = engine.generate(last, Sampler(Sampling(temperature=0.7, ignore_eos=True)), 3)
    next(steps)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        next(steps)
    del engine.logits


def test_engine_eval_is_all_or_nothing(bot):
    """An error inside a batch of segments removes every position that batch added."""
    engine = bot.engine
    engine.reset()
    engine.eval([[engine.bos, *engine.tokenize("USER: hello")]])
    before, fed = engine.n_past, [list(s) for s in engine.fed]
    with pytest.raises(Exception, match="do not fit"):
        engine.eval([engine.tokenize(" there"), np.zeros((3, engine.n_embd + 1), np.float32)])
    assert engine.n_past == before and engine.fed == fed
    real_decode = engine._decode

    calls = []

    def fail_second(batch):
        calls.append(batch.n_tokens)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        real_decode(batch)

    engine._decode = fail_second
    n_batch, engine.n_batch = engine.n_batch, 2  # the three segments go in as one of rows: two decodes of it
    with pytest.raises(RuntimeError):
        engine.eval([engine.tokenize(" there"), np.zeros((3, engine.n_embd), np.float32), engine.tokenize(" you")])
    del engine._decode
    engine.n_batch = n_batch
    assert engine.n_past == before and engine.fed == fed


@pytest.mark.parametrize("keep", [0, 1])
def test_history_turns_limits_what_the_prompt_holds(swiglu, question_audio, mandarin_wav, keep):
    """A manifest's history_turns: the prompt holds only the last ``keep`` exchanges before the new
    question, with the same logits as a conversation that only ever had those; every turn is still
    in the conversation (the chat shows and saves them)."""
    import dataclasses

    from llasm_cli.formats.bundle import Bundle, load_bundle

    b = load_bundle(swiglu[1])
    bot = Assistant(Bundle(b.root, dataclasses.replace(b.manifest, history_turns=keep)), backend="ggml", llm_variant="f32")
    try:
        conv = Conversation(bot)
        said = []
        for audio, text in ((question_audio, "first:"), (load_audio(mandarin_wav), "second:"), (question_audio, "third:")):
            conv.add_user(audio, text=text)
            said.append("".join(conv.respond(GREEDY, max_tokens=4)))
        assert len(conv.turns) == 6
        conv.add_user(load_audio(mandarin_wav), text="fourth:")
        logits = conv.prefill()
        shown = conv.context_messages()
        turns = [m for m in shown if m.role != "system"]
        assert shown[: len(shown) - len(turns)] == [m for m in conv.messages() if m.role == "system"]
        assert [m.role for m in turns] == ["user", "assistant"] * keep + ["user"]
        assert turns[-1] is conv.turns[-1].message and (keep == 0 or turns[0] is conv.turns[4].message)
        with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
            assert rel_err(fresh.eval(bot.prompt(shown)), logits) <= 1e-4
    finally:
        bot.close()


def test_a_stop_text_ends_the_answer_and_the_history_holds_what_was_said(bot, question_audio):
    """A GGUF on llasm's fallback template (no chat template of its own) may go on to write the user's next
    turn ("\\nUSER: ..."): the answer ends where a stop text begins, and the history holds the words said."""
    from llasm_cli.prompt import DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_STOPS

    assert bot.template == DEFAULT_TEMPLATE and bot.stop_texts == DEFAULT_TEMPLATE_STOPS
    bot.stop_texts = ()
    conv = Conversation(bot)
    conv.add_user(question_audio)
    whole = "".join(conv.respond(GREEDY, max_tokens=12))
    stop = whole.strip()[len(whole.strip()) // 2 :][:3]
    assert len(whole.strip()) >= 6 and stop
    bot.stop_texts = (stop,)
    conv = Conversation(bot)
    conv.add_user(question_audio)
    pieces = list(conv.respond(GREEDY, max_tokens=12))
    said = "".join(pieces)
    assert said == whole[: whole.find(stop)] and stop not in said
    assert conv.turns[-1].message.content == said.strip() and conv.turns[-1].message.tokens is None
