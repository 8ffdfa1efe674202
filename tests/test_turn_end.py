"""The turn detector (turn_end.py, turn_taking.HandsFree): a pause in the middle of a question is waited
through, a finished question ends its turn before the fixed trailing silence would.

The ten paused questions of bench/turn_pauses.py in real voices (hibari, SVOX Pico, flite), the default model
(SmolLM2 hearing through Whisper), and the chat's own hands-free loop fed 32 ms blocks. The endpointer counts samples, not seconds, so what is checked is where in
the audio each turn ends, the same on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.turn_pauses import PAUSED, paused, said, silence
from llasm_cli.assistant import Assistant
from llasm_cli.audio.endpoint import Endpointer
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.conversation import Conversation
from llasm_cli.formats.built_in import default_bundle_path
from llasm_cli.turn_taking import HandsFree

BLOCK = 512
LEAD_S, TAIL_S = 0.4, 2.5
WHOLE = [("pico:en-US", "What is the capital of Japan?"), ("flite:slt", "Which planet is closest to the sun?"),
         ("hibari:heart", "What is the tallest mountain in the world?")]


@pytest.fixture(scope="module")
def bot():
    bot = Assistant(default_bundle_path(), n_ctx=1024)
    yield bot
    bot.close()


def _turns(bot: Assistant, audio: np.ndarray) -> list[tuple[float, float]]:
    """The turns the hands-free loop hands over: (where in the audio, in seconds, the length of its clip)."""
    conv = Conversation(bot)
    loop = HandsFree(conv, Endpointer())
    got = []
    try:
        for i in range(0, audio.size, BLOCK):
            done = loop.push(audio[i : i + BLOCK])
            if done is not None:
                turn, clip = done
                got.append(((i + BLOCK) / SAMPLE_RATE, clip.size / SAMPLE_RATE))
                turn.cancel()
    finally:
        loop.cancel()
    return got


def test_a_pause_in_the_middle_of_a_question_does_not_cut_it(bot):
    """Ten questions, each with a 0.5-0.8 s pause where the sentence is not finished (longer than the 0.6 s
    trailing silence that ends a turn otherwise): each is one turn, and it holds both halves."""
    cut = []
    for spec, first, rest, pause in PAUSED:
        audio = paused(spec, first, rest, pause, LEAD_S, TAIL_S)
        spoken = audio.size / SAMPLE_RATE - LEAD_S - TAIL_S
        turns = _turns(bot, audio)
        if len(turns) != 1 or turns[0][1] < spoken:
            cut.append((f"{first} / {rest} ({spec}, {pause} s)", turns))
    assert not cut, cut


def test_a_finished_question_ends_its_turn_before_the_trailing_silence(bot):
    """The model expects the turn to end after a whole question: its turn is handed over at the first pause
    that settles (0.2 s), not after the 0.6 s of silence a turn otherwise needs."""
    trailing = Endpointer().trailing / SAMPLE_RATE
    for spec, question in WHOLE:
        speech = said(spec, question)
        turns = _turns(bot, np.concatenate([silence(LEAD_S), speech, silence(TAIL_S)]))
        assert len(turns) == 1, (question, turns)
        after_speech = turns[0][0] - LEAD_S - speech.size / SAMPLE_RATE
        assert after_speech < trailing - 0.2, (question, after_speech)


def _heard(bot: Assistant, audio: np.ndarray) -> tuple[str, float]:
    """What the one hands-free turn in ``audio`` was heard as, and where it ended (seconds into the audio), with
    Whisper keeping up with the speaker: after each block, the tower's worker (its one thread) has done what
    was asked of it."""
    conv = Conversation(bot)
    loop = HandsFree(conv, Endpointer())
    idle = bot.tower.worker()
    try:
        for i in range(0, audio.size, BLOCK):
            done = loop.push(audio[i : i + BLOCK])
            idle.submit(int).result()
            if done is not None:
                turn, _ = done
                turn.stream.finish()
                return conv.stats.heard, (i + BLOCK) / SAMPLE_RATE
    finally:
        loop.cancel()
    raise AssertionError("no turn")


def test_while_a_pause_is_waited_out_the_llm_chooses_among_whispers_nbest(bot):
    """Whisper's best of its plain beam (which the first word of an answer to a finished question waits for) hears
    espeak-ng's en-us as "What is the capital on Peru?", which the LLM does not expect to end the turn; choosing
    among the n-best while the turn waits for the rest of its silence, the LLM makes it "of Peru", which it does,
    and the turn goes in at once with those words. Without the LLM's say: "on", and the whole trailing silence."""
    audio = np.concatenate([silence(LEAD_S), said("espeak-ng:en-us", "What is the capital of Peru?"), silence(TAIL_S)])
    heard, ended = _heard(bot, audio)
    ears = bot.tower.ears
    saved, ears.rescore = ears.rescore, None
    try:
        plain, waited = _heard(bot, audio)
    finally:
        ears.rescore = saved
    assert (heard, plain) == ("What is the capital of Peru?", "What is the capital on Peru?")
    assert ended < waited
