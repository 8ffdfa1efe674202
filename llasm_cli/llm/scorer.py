"""How likely the LLM finds a few candidate texts as the user's turn: Whisper's n-best, told apart by the LLM.

Whisper-base's beam often holds the words that were said below its best hypothesis ("What is the capital of more
weight?" first, "... of Norway?" lower). The LLM knows which of them a person asks: audio/ears.py weighs Whisper's
log-probability of each hypothesis against this one (the words and the end of the turn after them, read where a
user's turn begins).

The scorer has its own small context over the loaded model (~25 MB of KV cache): the conversation's cache is never
touched. Sequence 0 holds the turn's opening (template and system prompt) and the words every candidate shares;
it is copied to one sequence per candidate, whose own tokens are evaluated in one batch and then dropped.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence

import llama_cpp
import numpy as np

from llasm_cli.errors import ContextOverflowError, ModelFileError
from llasm_cli.llm import native
from llasm_cli.llm.logits import log_softmax
from llasm_cli.llm.weights import LlamaModel

MAX_CANDIDATES = 5  # sequences besides the opening's: Whisper's n-best (audio/ears.py NBEST)
CONTEXT = 1024  # positions in all: the opening, the shared words and every candidate's own tokens
UBATCH = 128  # positions computed at once: a small compute buffer (a call feeds a few dozen)


class TextScorer:
    """Sums of the LLM's log-probabilities of candidate token lists after ``opening`` (followed by ``closing``)."""

    def __init__(self, llm: LlamaModel, opening: Sequence[int], closing: Sequence[int] = (),
                 n_threads: int | None = None) -> None:
        if not opening:
            raise ValueError("the scorer needs an opening (at least BOS or the template's start of a turn)")
        self.llm, self.opening, self.closing = llm, list(opening), list(closing)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = CONTEXT
        cparams.n_batch, cparams.n_ubatch = CONTEXT, UBATCH
        cparams.n_seq_max = MAX_CANDIDATES + 1
        cparams.kv_unified = True  # the opening's cells are shared by every candidate's sequence
        cparams.n_threads = cparams.n_threads_batch = n_threads or native.default_threads()
        self.ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
        if not self.ctx:
            raise ModelFileError(f"llama.cpp could not create a scoring context for {llm.path}: {native.last_log()}")
        self._mem = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(CONTEXT, 0, MAX_CANDIDATES + 1)
        self._row = ctypes.c_float * llm.n_vocab
        self.held: list[int] = []  # what sequence 0 holds: the opening and the last call's shared tokens
        self._last: np.ndarray | None = None  # the logits after them
        self._lock = threading.Lock()  # a stream's worker and its caller may both ask (towers/transcript.py)
        self._threads = cparams.n_threads
        # The opening is read at once, on one thread, while Whisper (on one thread in `llasm ask`) hears the clip:
        # on 2 cores the first call would otherwise pay ~130 ms for it.
        self._lock.acquire()
        threading.Thread(target=self._read_opening, name="llasm-scorer", daemon=True).start()

    def _read_opening(self) -> None:
        try:
            llama_cpp.llama_set_n_threads(self.ctx, 1, 1)
            self._hold(self.opening)
        except Exception:  # noqa: BLE001 - the first call reads it again, and raises there
            self.held, self._last = [], None
        finally:
            llama_cpp.llama_set_n_threads(self.ctx, self._threads, self._threads)
            self._lock.release()

    def _decode(self, items: list[tuple[int, int, list[int], bool]]) -> None:
        """One llama_decode of (token, position, sequences, wants logits) items."""
        b = self._batch
        for i, (tok, pos, seqs, out) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, len(seqs), out
            for j, seq in enumerate(seqs):
                b.seq_id[i][j] = seq
        b.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise ContextOverflowError(f"llama_decode failed while scoring (code {rc}): {native.last_log()}")

    def _logits(self, i: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.frombuffer(self._row.from_address(ctypes.addressof(ptr.contents)), dtype=np.float32)

    def score(self, candidates: Sequence[Sequence[int]]) -> list[float]:
        """log p(candidate + closing | opening) for each candidate (at most MAX_CANDIDATES), less what they all share:
        the log-probability of their common first tokens, the same for each, is left out. Empty candidates score
        -inf; where they do not fit the context, all score 0 (no opinion).

        The common first tokens are kept in sequence 0 after the opening, so a transcript that grows while the user
        speaks is read once. The rest is fed as a tree: a token is evaluated once for every candidate that has the
        same tokens up to it (one batch item in all their sequences)."""
        with self._lock:
            if not self.ctx:  # closed: no opinion
                return [0.0] * min(len(candidates), MAX_CANDIDATES)
            return self._score([list(c) for c in candidates][:MAX_CANDIDATES])

    def _score(self, cands: list[list[int]]) -> list[float]:
        filled = [c for c in cands if c]
        if not filled:
            return [float("-inf")] * len(cands)
        shared = _common_prefix(filled)
        if len(self.opening) + len(shared) + sum(len(c) - len(shared) + 1 for c in filled) > CONTEXT:
            return [0.0] * len(cands)
        first = self._hold(self.opening + shared)
        base = len(self.held)
        items: list[tuple[int, int, list[int], bool]] = []
        node: dict[tuple[int, ...], int] = {}  # a tail's prefix -> the batch item of its last token
        for k, cand in enumerate(cands, start=1):
            if not cand:
                continue
            llama_cpp.llama_memory_seq_cp(self._mem, 0, k, -1, -1)
            fed = (cand[len(shared):] + self.closing)[:-1]
            for p in range(len(fed)):
                key = tuple(fed[: p + 1])
                if key in node:
                    items[node[key]][2].append(k)
                else:
                    node[key] = len(items)
                    items.append((fed[p], base + p, [k], True))
        try:
            if items:
                self._decode(items)
            scores = []
            for cand in cands:
                if not cand:
                    scores.append(float("-inf"))
                    continue
                targets = cand[len(shared):] + self.closing
                rows = [first] + [self._logits(node[tuple(targets[:j])]) for j in range(1, len(targets))]
                scores.append(sum(float(log_softmax(r)[t]) for r, t in zip(rows, targets)))
            return scores
        finally:
            for k in range(1, len(cands) + 1):
                llama_cpp.llama_memory_seq_rm(self._mem, k, -1, -1)

    def _hold(self, tokens: list[int]) -> np.ndarray:
        """Sequence 0 made to hold ``tokens`` (what it held kept as far as it agrees); the logits after them."""
        keep = len(_common_prefix([self.held, tokens]))
        if keep == len(tokens) == len(self.held) and self._last is not None:
            return self._last
        keep = min(keep, len(tokens) - 1)  # at least the last token is fed again: its logits are the ones wanted
        llama_cpp.llama_memory_seq_rm(self._mem, 0, keep, -1)
        self.held = self.held[:keep]
        new = tokens[keep:]
        self._decode([(t, keep + p, [0], p == len(new) - 1) for p, t in enumerate(new)])
        self.held, self._last = list(tokens), self._logits(-1).copy()
        return self._last

    def close(self) -> None:
        with self._lock:
            self._free()

    def _free(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None


def _common_prefix(lists: Sequence[Sequence[int]]) -> list[int]:
    first = list(lists[0])
    n = len(first)
    for other in lists[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], other)) if a != b), min(n, len(other)))
    return first[:n]
