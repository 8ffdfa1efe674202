"""Streamed spoken turns: audio encoded and prefilled while it is spoken, on tiny chunked models.

A streamed turn must end up exactly where a whole clip added with ``add_user`` and prefilled ends
up: the same embeddings, the same sequence (position by position), the same logits, and a history
the next turn reuses. A cancelled one must leave no trace, and one that cannot fit is refused
without touching what the cache held.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.assistant import Assistant
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.endpoint import FRAME, Endpointer, SpeechEnd, SpeechStart
from llasm_cli.audio.geometry import SAMPLE_RATE, chunk_spans
from llasm_cli.conversation import Conversation, answer
from llasm_cli.errors import ContextOverflowError
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle
from llasm_cli.llm.engine import Engine, Sampling
from llasm_cli.llm.kv import same_positions
from tests.helpers import CHUNK, CONTEXT, chunked_bundle, espeak, finish, spawn, speech_of_length
from tests.reference import rel_err

GREEDY = Sampling(temperature=0.0)
BLOCK = 640  # samples fed at a time: 40 ms, as a microphone delivers them


@pytest.fixture(scope="module")
def chunked(swiglu, workdir):
    """{"tokens": bundle, "embeddings": bundle}"""
    out = {}
    for boundary in ("tokens", "embeddings"):
        dest = workdir / f"bundle-chunked-{boundary}"
        out[boundary] = dest if dest.is_dir() else chunked_bundle(swiglu[1], dest, boundary)
    return out


@pytest.fixture(scope="module")
def speech(question_audio):
    """3.3 s of real speech: six whole 0.5 s chunks and a partial one."""
    return speech_of_length(question_audio, 3.3)


def open_bot(bundle, **kw) -> Assistant:
    return Assistant(bundle, backend="torch", llm_variant="f32", **kw)


@pytest.fixture(scope="module", params=["tokens", "embeddings"])
def bot(request, chunked):
    b = open_bot(chunked[request.param])
    yield b
    b.close()


def stream(conv: Conversation, audio: np.ndarray, text: str | None = None, block: int = BLOCK):
    """Feed ``audio`` block by block into a new streamed turn; returns (turn, logits, rows before the end)."""
    turn = conv.begin_audio(text=text)
    early = sum(turn.feed(audio[i : i + block]) for i in range(0, audio.size, block))
    return turn, turn.finish(), early


def fresh_logits(bot: Assistant, segments) -> np.ndarray:
    with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
        return fresh.eval(segments)


def test_streamed_turn_is_the_whole_clip_turn(bot, speech):
    """Same embeddings (<= 1e-5), the same sequence position by position, the same logits (<= 1e-4)
    and the same answer as the whole clip through add_user + prefill."""
    assert bot.tower.chunked
    bot.engine.reset()
    conv = Conversation(bot)
    turn, logits, early = stream(conv, speech, text="please answer:")
    spans = chunk_spans(speech.size, CHUNK, CONTEXT, bot.tower.stack_factor)
    assert early == sum(s.keep for s in spans[:-1])  # every whole chunk was in the cache before the end
    st = conv.stats
    assert st.streamed and st.early_audio_seconds == pytest.approx(6 * CHUNK)
    assert st.early_positions > early  # the template text before the audio went in early too

    clip = conv.turns[-1].message.clips[0]
    whole = bot.tower.encode(speech)
    assert clip.shape == whole.shape and np.abs(clip - whole).max() <= 1e-5

    # the cache holds exactly the finished turn's prompt, as Assistant.prompt renders it
    prompt = bot.prompt(conv.messages())
    assert same_positions(bot.engine.fed, prompt)
    assert bot.engine.n_past == sum(len(s) for s in prompt)
    reference = bot.prompt(bot.messages(whole, "please answer:", None, None))
    assert [s if isinstance(s, list) else s.shape for s in reference] == [
        s if isinstance(s, list) else s.shape for s in prompt]
    if bot.boundary is not None:  # learned rows around the clip, as with_boundary puts them
        slot = next(s for s in bot.engine.fed if isinstance(s, np.ndarray))
        assert np.array_equal(slot[0], bot.boundary[0]) and np.array_equal(slot[-1], bot.boundary[1])

    assert rel_err(logits, fresh_logits(bot, reference)) <= 1e-4
    streamed_answer = "".join(conv.respond(GREEDY, max_tokens=8))
    assert conv.stats.answer_tokens > 0

    bot.engine.reset()
    whole_conv = Conversation(bot)
    whole_conv.add_user(speech, text="please answer:")
    assert rel_err(whole_conv.prefill(), logits) <= 1e-4
    bot.engine.reset()
    assert answer(bot, speech, text="please answer:", sampling=GREEDY, max_tokens=8) == streamed_answer.strip()


def test_final_chunk_and_template_go_in_one_decode(bot, speech):
    """At the end of speech: one llama_decode for the last chunk, the end of the span and the template."""
    bot.engine.reset()
    conv = Conversation(bot)
    turn = conv.begin_audio()
    for i in range(0, speech.size, BLOCK):
        turn.feed(speech[i : i + BLOCK])
    real, calls = bot.engine._decode, []

    def count(batch):
        calls.append(batch.n_tokens)
        real(batch)

    bot.engine._decode = count
    try:
        turn.finish()
    finally:
        del bot.engine._decode
    last = chunk_spans(speech.size, CHUNK, CONTEXT, bot.tower.stack_factor)[-1].keep
    assert len(calls) == 1 and calls[0] > last


def test_chunked_turn_prefilled_at_pauses_is_the_streamed_turn(bot, speech):
    """A chunked model, guessed at two pauses: the first guess (mid-chunk) is taken back when the
    speaker goes on, the second stands; the turn, the cache and the logits are the plain streamed
    turn's, and the end of speech encodes nothing."""
    bot.engine.reset()
    conv = Conversation(bot)
    turn = conv.begin_audio(text="please answer:")
    pause = int(2.5 * CHUNK * SAMPLE_RATE)  # inside the third chunk
    for i in range(0, pause, BLOCK):
        turn.feed(speech[i : min(i + BLOCK, pause)])
    kept = bot.engine.n_past
    assert turn.speculate() and bot.engine.n_past > kept
    for i in range(pause, speech.size, BLOCK):
        turn.feed(speech[i : i + BLOCK])
    assert turn.speculate()
    calls = bot.tower.encode_calls
    logits = turn.finish()
    assert bot.tower.encode_calls == calls
    assert conv.stats.early_audio_seconds == pytest.approx(
        sum(s.keep for s in chunk_spans(speech.size, CHUNK, CONTEXT, bot.tower.stack_factor)) * 0.02 * bot.tower.stack_factor)
    clip = conv.turns[-1].message.clips[0]
    assert np.abs(clip - bot.tower.encode(speech)).max() <= 1e-5
    assert same_positions(bot.engine.fed, bot.prompt(conv.messages()))
    bot.engine.reset()
    _, plain, _ = stream(Conversation(bot), speech, text="please answer:")
    assert rel_err(plain, logits) <= 1e-4


def test_cancel_rolls_back_exactly(bot, speech, mandarin_wav):
    """A dropped turn (a cough, a false start) leaves the history and the cache as they were: the next
    turn computes what a conversation that never heard it computes."""
    bot.engine.reset()
    conv = Conversation(bot)
    conv.add_user(load_audio(mandarin_wav), text="hello")
    first = "".join(conv.respond(GREEDY, max_tokens=4))
    fed = [s.copy() if isinstance(s, np.ndarray) else list(s) for s in bot.engine.fed]
    n_past, turns = bot.engine.n_past, list(conv.turns)

    turn = conv.begin_audio(text="listen:")
    rows = sum(turn.feed(speech[i : i + BLOCK]) for i in range(0, 2 * SAMPLE_RATE, BLOCK))
    assert rows > 0 and bot.engine.n_past > n_past  # the dropped turn really was in the cache
    turn.cancel()
    assert bot.engine.n_past == n_past and same_positions(bot.engine.fed, fed)
    assert conv.turns == turns
    with pytest.raises(RuntimeError):
        turn.feed(speech[:BLOCK])

    conv.add_user(text="go on")
    logits = conv.prefill()
    assert conv.prefilled_from_scratch == 0  # the history stayed in the cache

    bot.engine.reset()
    never = Conversation(bot)
    never.add_user(load_audio(mandarin_wav), text="hello")
    assert "".join(never.respond(GREEDY, max_tokens=4)) == first
    never.add_user(text="go on")
    assert rel_err(logits, never.prefill()) <= 1e-4


def test_streamed_second_turn_reuses_the_first(bot, speech, mandarin_wav):
    """A streamed turn after a whole-clip turn: the first clip is never encoded again, and a third turn
    keeps everything in the cache and computes what a fresh context fed the whole chat computes."""
    bot.engine.reset()
    conv = Conversation(bot)
    conv.add_user(load_audio(mandarin_wav), text="please answer:")
    "".join(conv.respond(GREEDY, max_tokens=4))
    calls, held = bot.tower.encode_calls, bot.engine.n_past

    stream(conv, speech)
    assert bot.tower.encode_calls == calls + len(chunk_spans(speech.size, CHUNK, CONTEXT, bot.tower.stack_factor))
    assert conv.stats.early_positions > 0 and conv.stats.prompt_tokens < bot.engine.n_past - held + 1
    "".join(conv.respond(GREEDY, max_tokens=4))
    assert bot.tower.encode_calls == calls + len(chunk_spans(speech.size, CHUNK, CONTEXT, bot.tower.stack_factor))

    held = bot.engine.n_past
    conv.add_user(text="thanks")
    logits = conv.prefill()
    assert bot.engine.reused == held and conv.prefilled_from_scratch == 0
    assert rel_err(logits, fresh_logits(bot, bot.prompt(conv.messages()))) <= 1e-4


def test_overflow_is_refused_without_touching_the_cache(chunked, speech):
    """Audio that cannot fit the context is refused mid-stream, the cache and the chat as they were;
    if older turns were dropped to make room first, the chat gets them back and the next turn
    computes what a conversation that never heard the refused turn computes."""
    small = open_bot(chunked["tokens"], n_ctx=256)
    try:
        conv = Conversation(small, reserve=32)
        conv.add_user(text="hello")
        "".join(conv.respond(GREEDY, max_tokens=3))
        fed = [list(s) for s in small.engine.fed]
        turns = list(conv.turns)
        long = speech_of_length(speech, 20.0)

        turn = conv.begin_audio()
        turn.feed(long[:BLOCK])
        with pytest.raises(ContextOverflowError, match="--ctx"):
            turn.feed(long[BLOCK:])  # 20 s at once: more than the context holds even without the history
        assert turn.closed and small.engine.fed == fed and conv.turns == turns

        turn = conv.begin_audio()
        with pytest.raises(ContextOverflowError, match="--ctx"):
            for i in range(0, long.size, BLOCK):  # as a microphone delivers it: the history goes first
                turn.feed(long[i : i + BLOCK])
        assert i > 0 and turn.closed and conv.turns == turns
        assert small.engine.n_past == sum(len(s) for s in small.engine.fed)
        conv.add_user(text="go on")  # the chat goes on
        logits = conv.prefill()

        small.engine.reset()
        never = Conversation(small, reserve=32)
        never.add_user(text="hello")
        "".join(never.respond(GREEDY, max_tokens=3))
        never.add_user(text="go on")
        assert rel_err(logits, never.prefill()) <= 1e-4
    finally:
        small.close()


def test_full_context_drops_the_oldest_turns_mid_stream(chunked, speech):
    """A streamed turn that fits alone but not with the history drops the oldest turns, like a
    whole-clip turn, and the cache still holds exactly the resulting prompt."""
    small = open_bot(chunked["tokens"], n_ctx=256)
    try:
        conv = Conversation(small, reserve=16)
        for i in range(2):
            conv.add_user(text=f"turn {i} hello there")
            "".join(conv.respond(GREEDY, max_tokens=6))
        assert not conv.notices
        audio = speech_of_length(speech, 6.0)
        turn = conv.begin_audio()
        assert not conv.notices  # the history fits with the beginning of the turn
        for i in range(0, audio.size, BLOCK):
            turn.feed(audio[i : i + BLOCK])
        assert any("dropped" in n for n in conv.notices) and conv.turns[0].message.content != "turn 0 hello there"
        logits = turn.finish()
        assert same_positions(small.engine.fed, small.prompt(conv.messages()))
        assert rel_err(logits, fresh_logits(small, small.prompt(conv.messages()))) <= 1e-4
    finally:
        small.close()


def assert_is_the_whole_clip_turn(bot, conv: Conversation, logits: np.ndarray, audio: np.ndarray, text: str) -> None:
    """The cache holds the finished turn's prompt, and its logits are the whole clip's through add_user."""
    assert same_positions(bot.engine.fed, bot.prompt(conv.messages()))
    bot.engine.reset()
    whole = Conversation(bot)
    whole.add_user(audio, text=text)
    assert rel_err(whole.prefill(), logits) <= 1e-4


def test_model_also_trained_unpadded_encodes_whole_clips_unpadded(chunked, speech, tmp_path):
    """A model trained on both inputs streams chunk by chunk, but a whole clip (a file, a request)
    goes through the encoder once, unpadded: the same embeddings as an unpadded-only model, as many
    positions as the stream, and not the stream's numbers (each chunk saw only its own context)."""
    from llasm_cli.towers import open_tower

    towers = {}
    for name, modes in (("both", ["chunked", "unpadded"]), ("unpadded", ["unpadded"])):
        dest = tmp_path / name
        shutil.copytree(chunked["tokens"], dest)
        m = dataclasses.replace(load_bundle(dest).manifest, encoder_input=modes)
        (dest / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
        towers[name] = open_tower(load_bundle(dest), "torch", None, n_threads=1)
    both, unpadded = towers["both"], towers["unpadded"]
    try:
        assert both.chunked and both.unpadded and not both.whole_clip_chunked
        whole, ref = both.encode(speech), unpadded.encode(speech)
        assert whole.shape == ref.shape and np.abs(whole - ref).max() <= 1e-6
        stream = both.stream()
        streamed = np.concatenate([stream.push(speech), stream.finish()])
        assert streamed.shape == whole.shape == (both.positions(speech.size), both.n_embd)
        assert np.abs(streamed - whole).max() > 1e-2  # the stream really is chunked
    finally:
        both.close()
        unpadded.close()


def test_no_stream_hands_a_model_trained_on_both_each_turn_whole(chunked, speech, tmp_path):
    """``llasm chat --no-stream``: nothing of the speech is encoded while it plays; the turn that
    ends is the whole-clip turn of the same model (one unpadded encode), position for position."""
    dest = tmp_path / "both"
    shutil.copytree(chunked["tokens"], dest)
    m = dataclasses.replace(load_bundle(dest).manifest, encoder_input=["chunked", "unpadded"])
    (dest / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
    bot = open_bot(dest, stream=False)
    try:
        assert not bot.tower.chunked and bot.tower.unpadded
        conv = Conversation(bot)
        turn, logits, early = stream(conv, speech)
        assert early == 0 and conv.stats.early_audio_seconds == 0 and bot.tower.encode_calls == 1
        assert_is_the_whole_clip_turn(bot, conv, logits, speech, None)
    finally:
        bot.close()
    streaming = open_bot(dest)
    try:
        assert streaming.tower.chunked  # the default streams the same bundle
    finally:
        streaming.close()


def test_a_pause_with_time_to_spare_encodes_a_model_trained_on_both_whole(chunked, speech, tmp_path):
    """Hands-free chat, a model trained on whole clips and chunks: at a pause with time enough, the
    whole clip is encoded unpadded in place of the chunks (the turn is then the whole-clip turn,
    position for position); speech after the pause puts the chunks back, and the turn that ends at
    a pause without time enough is the plain streamed one."""
    dest = tmp_path / "both"
    shutil.copytree(chunked["tokens"], dest)
    m = dataclasses.replace(load_bundle(dest).manifest, encoder_input=["chunked", "unpadded"])
    (dest / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
    bot = open_bot(dest)
    try:
        assert bot.tower.chunked and bot.tower.unpadded
        conv = Conversation(bot)
        turn = conv.begin_audio(text="please answer:")
        half = (speech.size // 2) // BLOCK * BLOCK
        for i in range(0, half, BLOCK):
            turn.feed(speech[i : i + BLOCK])
        streamed = [s.copy() if isinstance(s, np.ndarray) else list(s) for s in bot.engine.fed]
        assert turn.speculate(budget_ms=1e9)
        assert np.abs(bot.engine.fed[-2] - np.concatenate([bot.tower.encode(speech[:half]), turn.tail_rows])).max() == 0
        turn.feed(speech[half : half + BLOCK])  # the speaker went on: the chunks are back in the cache
        assert same_positions(bot.engine.fed[: len(streamed)], streamed)
        for i in range(half + BLOCK, speech.size, BLOCK):
            turn.feed(speech[i : i + BLOCK])
        assert not turn._whole_fits(0.0) and not turn._whole_fits(1e-3)  # no time: the chunks' own guess
        assert turn.speculate(budget_ms=1e9)
        calls = bot.tower.encode_calls
        logits = turn.finish()
        assert bot.tower.encode_calls == calls and conv.stats.whole_at_pause
        from llasm_cli.terminal.chat import stats_line

        assert "prefilled while you spoke, encoded whole at the pause" in stats_line(conv.stats)
        assert conv.stats.early_audio_seconds == pytest.approx(speech.size / SAMPLE_RATE)
        assert np.abs(conv.turns[-1].message.clips[0] - bot.tower.encode(speech)).max() <= 1e-5
        assert_is_the_whole_clip_turn(bot, conv, logits, speech, "please answer:")

        bot.engine.reset()
        conv = Conversation(bot)
        turn = conv.begin_audio(text="please answer:")
        for i in range(0, speech.size, BLOCK):
            turn.feed(speech[i : i + BLOCK])
        assert turn.speculate(budget_ms=1e-3)
        logits = turn.finish()
        assert not conv.stats.whole_at_pause and "whole" not in stats_line(conv.stats)
        bot.engine.reset()
        _, plain, _ = stream(Conversation(bot), speech, text="please answer:")
        assert rel_err(plain, logits) <= 1e-4
    finally:
        bot.close()


def test_model_without_chunks_buffers_until_the_end(swiglu, question_audio):
    """Same API on a model that is not chunked: the template text goes in early, the audio at the end."""
    bot = Assistant(swiglu[1], backend="ggml", llm_variant="f32")
    try:
        assert not bot.tower.chunked
        conv = Conversation(bot)
        turn, logits, early = stream(conv, question_audio, text="please answer:")
        assert early == 0 and conv.stats.early_positions > 0 and conv.stats.early_audio_seconds == 0
        assert_is_the_whole_clip_turn(bot, conv, logits, question_audio, "please answer:")
    finally:
        bot.close()


def test_a_pause_prefills_the_turn_and_more_speech_takes_it_back(swiglu, question_audio):
    """A model that is not chunked, prefilled at a pause (speculate): finishing after it is the whole
    clip's turn without encoding again; speech after the pause takes the guess out of the cache first,
    and the turn is then the longer clip's, as if nothing had been guessed."""
    bot = Assistant(swiglu[1], backend="ggml", llm_variant="f32")
    try:
        conv = Conversation(bot)
        turn = conv.begin_audio(text="please answer:")
        before = bot.engine.n_past
        half = question_audio.size // 2
        turn.feed(question_audio[:half])
        assert turn.speculate() and not turn.speculate()  # once per pause
        assert bot.engine.n_past > before
        turn.feed(question_audio[half:])  # the speaker went on
        assert bot.engine.n_past == before
        assert turn.speculate()
        calls = bot.tower.encode_calls
        logits = turn.finish()
        assert bot.tower.encode_calls == calls  # nothing left to encode at the end of speech
        assert conv.stats.early_audio_seconds == pytest.approx(question_audio.size / SAMPLE_RATE)
        assert_is_the_whole_clip_turn(bot, conv, logits, question_audio, "please answer:")
    finally:
        bot.close()


def test_endpointer_settles_on_exactly_the_turn_it_will_send():
    """Once settled() (a running turn quiet for its post-roll), committed() is the SpeechEnd's audio
    to the sample, if the silence goes on; a voice coming back unsettles it."""
    rng = np.random.default_rng(4)
    loud = lambda n: (0.3 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    quiet = lambda n: np.zeros(n, np.float32)  # noqa: E731
    scorer = (lambda f: float(np.abs(f).mean() > 0.05), lambda: None)
    ep = Endpointer(scorer=scorer)
    ep.push(np.concatenate([quiet(4000), loud(12000)]))
    assert not ep.settled()
    ep.push(quiet(1024))  # shorter than the post-roll (0.2 s)
    assert not ep.settled()
    ep.push(quiet(3072))
    assert ep.settled()
    guess = ep.committed()
    ep.push(loud(4000))
    assert not ep.settled()
    ep.push(quiet(4096))
    assert ep.settled()
    guess = ep.committed()
    (end,) = [e for e in ep.push(quiet(16000)) if isinstance(e, SpeechEnd)]
    assert np.array_equal(guess, end.audio)
    assert not ep.settled()


def test_endpointer_commits_only_audio_the_turn_will_hold():
    """What the chat streams before the end of speech is always the start of the SpeechEnd's audio,
    however the stream is cut into blocks (a loudness scorer stands in for Silero)."""
    rng = np.random.default_rng(3)
    loud = lambda n: (0.3 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    quiet = lambda n: np.zeros(n, np.float32)  # noqa: E731
    audio = np.concatenate([quiet(8000), loud(12000), quiet(3000), loud(9000), quiet(16000)])
    scorer = (lambda f: float(np.abs(f).mean() > 0.05), lambda: None)
    for block in (100, FRAME, 700, 5000):
        ep = Endpointer(scorer=scorer)
        streamed, ended = [], None
        for i in range(0, audio.size, block):
            events = ep.push(audio[i : i + block])
            end = [e for e in events if isinstance(e, SpeechEnd)]
            if end:
                ended = end[0]
                break
            if any(isinstance(e, SpeechStart) for e in events) or streamed:
                streamed.append(ep.committed(sum(x.size for x in streamed)))
        got = np.concatenate(streamed)
        assert ended is not None and 0 < got.size <= ended.audio.size, block
        assert np.array_equal(got, ended.audio[: got.size]), block
        assert ended.audio.size - got.size <= ep.trailing  # only the tail after the last voiced frame waited
    assert ep.committed().size == 0  # no turn running


def _say_into_the_mic(bundle, pulse, tmp_path, text: str, *args: str, engine=("--backend", "torch", "--variant", "f32")):
    """Play ``text`` into the virtual microphone of a `llasm chat --mic`; returns (clip, answer, stats line)."""
    wav = espeak(text, tmp_path / "say.wav")
    child = spawn(bundle, *engine, "--max-tokens", "6", *args, env=pulse)
    child.expect(r"input: (microphone|push-to-talk) \(pulse\)")
    ptt = "--ptt" in args
    if ptt:
        child.send("\r")  # Enter starts recording
    time.sleep(1.0)  # the stream is open and listening
    subprocess.run(["paplay", str(wav)], env=pulse, check=True, timeout=30)
    if ptt:
        time.sleep(0.3)
        child.send("\r")  # Enter stops it
    child.expect(r"\[(\d+\.\d) s of speech\]", timeout=30)
    child.expect("llasm›")
    child.expect(r"(?s)(audio .*?decode (n/a|\d+ ms/token \(\d+ tok/s\)))")
    stats = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", child.match.group(1)).split())  # the terminal may wrap the line
    transcript = tmp_path / "mic.json"
    child.send(f"/save {transcript}\r")
    child.expect("saved")
    child.expect("listening|press Enter")  # keys typed before the chat listens again may be flushed
    child.sendcontrol("d")
    finish(child)
    data = json.loads(transcript.read_text())
    clip, _ = sf.read(transcript.parent / data["turns"][0]["audio"], dtype="float32")
    return clip, data["turns"][1]["content"], stats


def test_built_in_model_hears_a_hands_free_question_whole(pulse, tmp_path):
    """The built-in model (trained on whole clips and chunks) through the virtual microphone on the
    default install's onnx tower: a short question is encoded whole at the pause before its end, which
    is what that model hears best, and answered right."""
    from llasm_cli.formats.built_in import demo_bundle_path

    clip, said, stats = _say_into_the_mic(demo_bundle_path(), pulse, tmp_path, "what is seven plus five", "--mic",
                                          "--device", "pulse", engine=("--backend", "onnx"))
    assert "encoded whole at the pause" in stats, stats
    assert said.strip() == "twelve", said


@pytest.mark.parametrize("mode", ["mic", "ptt"])
def test_spoken_chat_turn_streams_and_answers_as_the_file_path(pulse, chunked, tmp_path, mode):
    """Speech from the (virtual) microphone goes into the cache while it is spoken, hands-free or
    push-to-talk, and the answer is the one the same clip gets as a file."""
    bundle = chunked["tokens"]
    args = ("--mic", "--device", "pulse") + (("--ptt",) if mode == "ptt" else ())
    clip, said, stats = _say_into_the_mic(bundle, pulse, tmp_path, "please tell me what seven plus five is", *args)
    early = re.search(r"after end of speech \((\d+\.\d) s of audio, (\d+) positions", stats)
    assert early and float(early.group(1)) >= CHUNK and int(early.group(2)) > 0, stats
    assert re.search(r"decode (\d+ ms/token \(\d+ tok/s\)|n/a)", stats), stats
    bot = open_bot(bundle)
    try:
        assert answer(bot, clip, sampling=GREEDY, max_tokens=6) == said
    finally:
        bot.close()


def test_spoken_chat_turn_of_a_whole_clip_model_is_prefilled_at_the_pause(pulse, swiglu, tmp_path):
    """A model that is not chunked, hands-free: the turn is encoded and prefilled during the trailing
    silence, so at the confirmed end of speech all of its audio is in the cache; the answer is the one
    the same clip gets as a file."""
    bundle = swiglu[1]
    clip, said, stats = _say_into_the_mic(bundle, pulse, tmp_path, "please tell me what seven plus five is",
                                          "--mic", "--device", "pulse")
    early = re.search(r"after end of speech \((\d+\.\d) s of audio, (\d+) positions", stats)
    assert early and abs(float(early.group(1)) - clip.size / SAMPLE_RATE) < 0.05 and int(early.group(2)) > 0, stats
    bot = Assistant(bundle, backend="torch", llm_variant="f32")
    try:
        assert answer(bot, clip, sampling=GREEDY, max_tokens=6) == said
    finally:
        bot.close()


def test_decode_rate_of_a_one_token_answer(bot):
    """A one-token answer that ran to its end decoded that token: its rate is measured, not 0."""
    from llasm_cli.terminal.chat import stats_line

    bot.engine.reset()
    conv = Conversation(bot)
    conv.add_user(text="hello")
    "".join(conv.respond(GREEDY, max_tokens=1))
    st = conv.stats
    assert st.answer_tokens == 1 and st.decode_ms_per_token > 0 and st.decode_tokens_per_s > 0
    assert re.search(r"· 1 token · decode \d+ ms/token \(\d+ tok/s\)$", stats_line(st))
    conv.add_user(text="again")
    answer_stream = conv.respond(GREEDY, max_tokens=5)
    next(answer_stream)
    answer_stream.close()  # stopped at once (Ctrl-C): nothing after the first token was timed
    if conv.stats.answer_tokens == 1:
        assert conv.stats.decode_ms_per_token is None and stats_line(conv.stats).endswith("decode n/a")
