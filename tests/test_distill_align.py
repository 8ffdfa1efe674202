"""The ears recipe's CTC warm-up (finetune/distill.py ``Aligner``): from encoder frames alone it
must learn to emit, where a word was said, a vector the LLM's embedding table reads as that word.
A synthetic "encoder" says each token as a fixed random frame pattern; the real adaptor, loss and
read-out are trained on it, and the read-out must recover held-out token sequences."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from llasm_finetune.distill import Aligner, DistillConfig, Example, align, token_error_rate

from llasm_cli.model import AdaptorConfig, StackSwiGLUAdaptor

K, D_ENC, D_LLM, VOCAB = 5, 16, 32, 40
STEPS = 160  # the warm-up's length in steps, not minutes: a loaded machine trains the same model


class FrameTower(torch.nn.Module):
    """Only what the Aligner uses of an AudioTower: the adaptor over precomputed frames."""

    def __init__(self) -> None:
        super().__init__()
        self.adaptor = StackSwiGLUAdaptor(AdaptorConfig(encoder_dim=D_ENC, llm_dim=D_LLM, stack_factor=K,
                                                        hidden_dim=64, boundary="embeddings"))

    def adapt(self, frames: torch.Tensor) -> torch.Tensor:
        return self.adaptor(frames)


def spoken(tokens: list[int], sound: np.ndarray, rng: np.random.Generator) -> Example:
    """Each token is one position's worth of frames, with a silent position (noise) between words."""
    parts = []
    for t in tokens:
        parts += [sound[t] + 0.1 * rng.standard_normal((K, D_ENC)), 0.1 * rng.standard_normal((K, D_ENC))]
    feats = np.concatenate(parts).astype(np.float16)
    return Example("c", feats, [], None, None, tokens + [0])


@pytest.mark.parametrize("negatives", [4096, 4], ids=["all-rows", "sampled-softmax"])
def test_ctc_warm_up_learns_to_read_words(negatives):
    """With every row scored, and with the sampled softmax a 20k-word vocabulary trains with (the
    batch's own tokens plus a few random others, targets renumbered to them)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sound = rng.standard_normal((VOCAB, K, D_ENC))
    emb = torch.randn(VOCAB, D_LLM)
    words = list(range(1, VOCAB))
    train = [spoken(list(rng.choice(words, rng.integers(3, 8))), sound, rng) for _ in range(200)]
    held = [spoken(list(rng.choice(words, rng.integers(3, 8))), sound, rng) for _ in range(30)]
    aligner = Aligner(FrameTower(), emb, words, negatives=negatives)
    before = token_error_rate(aligner, held)
    cfg = DistillConfig(align_steps=STEPS, align_batch=16, align_lr=3e-3, warmup_steps=5)
    align(aligner, train, held, cfg, random.Random(0), lambda rec: None)
    after = token_error_rate(aligner, held)
    assert before > 0.8, before  # random adaptor: the read-out is noise
    assert after < 0.4 and after < before / 4, (before, after)
    # where a word was said, the adaptor's vector points at that word's embedding row, at its norm
    hits = total = 0
    cos, norms = [], []
    with torch.inference_mode():
        for ex in held:
            said = aligner.tower.adapt(torch.from_numpy(ex.feats.astype(np.float32))[None])[0][0::2]
            ids = torch.tensor(ex.transcript[:-1])
            sims = torch.nn.functional.cosine_similarity(said[:, None], emb[None], dim=-1)
            hits, total = hits + int((sims.argmax(-1) == ids).sum()), total + len(ids)
            cos.append(sims.gather(1, ids[:, None]).mean())
            norms.append(said.norm(dim=-1) / emb.norm(dim=-1).median())
    assert hits / total > 0.7, hits / total
    assert float(torch.stack(cos).mean()) > 0.3
    norms = torch.cat(norms)
    assert 0.7 < float(norms.median()) < 1.3, norms


def test_warm_up_words_are_common_words_in_the_llms_spelling():
    """The ears recipe's extra speech (distill_data.word_texts / spoken_answers): the commonest
    English words, each said as often as its rank asks, a proper noun spelled as the vocabulary
    holds it as one token; answers read aloud only when their spoken form is their text."""
    from collections import Counter

    from llasm_finetune.distill_data import WORD_REPEATS, WORD_VOCAB, WORDS_PER_CLIP, spoken_answers, word_texts

    texts = word_texts({"\u0120the": 1, "\u0120Greece": 2, "\u0120paris": 3, "\u0120Paris": 4}, random.Random(0))
    said = Counter(w for t in texts for w in t.split())
    expected = sum(n * (below - prev) for (below, n), prev in zip(WORD_REPEATS, (0,) + tuple(b for b, _ in WORD_REPEATS)))
    assert sum(said.values()) == expected and len(said) == WORD_VOCAB
    assert all(len(t.split()) == WORDS_PER_CLIP for t in texts[:-1])
    assert said["the"] == WORD_REPEATS[0][1] and said["Greece"] >= 2 and "greece" not in said
    assert "paris" in said and "Paris" not in said  # both spellings are tokens: the lower-case one
    qs = [{"split": "train", "answer": "The capital of France is Paris."},
          {"split": "train", "answer": "Water boils at 100 degrees"},  # read "one hundred": not its text
          {"split": "heldout", "answer": "The capital of Greece is Athens."},
          {"split": "train", "answer": "Bees make honey from the nectar of flow"}]  # cut mid-word
    assert spoken_answers(qs) == ["The capital of France is Paris.", "Bees make honey from the nectar of"]
