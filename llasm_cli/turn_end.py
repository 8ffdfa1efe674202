"""The turn detector: does what the user said so far end their turn?

At a pause, a model that hears words (a Whisper transcript in the audio slot) has the LLM's own next-token
scores after those words for free: the turn is likely over when the LLM expects the sentence to end there
(``.``, ``?``, ``!``) or the template's end of the user's turn (``<|im_end|>``), as small turn-detector LMs
score it. Whisper's own punctuation is not to be trusted at a pause ("What is the capital of?"), so the
words are scored without the marks it put after them: the probe sits before them.

Measured on SmolLM2-135M-Instruct (the default model): 0.51-0.93 after whole questions ("... of Japan",
"Why is the sky blue"), 0.09-0.15 after some ("Who wrote Romeo and Juliet"), at most 0.025 where a sentence
was broken off ("What is the capital of", "How many days", "What is the largest ocean").
"""

from __future__ import annotations

import re

import numpy as np

from llasm_cli.llm.logits import log_softmax

END_MARKS = (".", "?", "!", "。", "？", "！")  # the marks that end a sentence, as the LLM would write them next
TRAILING_MARKS = re.compile(r"[\s.?!,;:…。？！，；：]+$")


def marks_after_words(tokenize, text: str) -> int | None:
    """How many of ``text``'s last tokens are the marks after its last word (0: none); None where the words
    alone do not tokenize as a prefix of the text, or no word is left."""
    words = TRAILING_MARKS.sub("", text)
    if not words.strip():
        return None
    ids, kept = tokenize(text), tokenize(words)
    return len(ids) - len(kept) if ids[: len(kept)] == kept else None


def end_ids(tokenize, template_next: int) -> list[int]:
    """The LLM's tokens that end a turn: the sentence-ending marks and the template's next token."""
    return sorted({template_next, *(ids[-1] for m in END_MARKS if (ids := tokenize(m)))})


def end_probability(logits: np.ndarray, ids: list[int]) -> float:
    """The probability, under ``logits``, of any of ``ids`` next."""
    return float(np.exp(log_softmax(logits)[ids]).sum())
