"""Next-token logits as log-probabilities: one place for the numerically safe softmax that the quantization
report (eval_quant.py), the ears' scorer (llm/scorer.py) and the turn detector (turn_end.py) all read."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p of every token under ``logits`` (float64: sums of many of them stay exact)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())
