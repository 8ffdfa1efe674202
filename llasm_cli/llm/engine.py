"""The llama.cpp context: token and embedding injection, logits, sampling, KV state.

Text goes in as token ids, audio as float rows through ``llama_batch.embd``; both land in the
same sequence (seq 0) at consecutive positions, so the KV cache holds the whole conversation.

The engine is the one owner of what the KV cache holds: ``fed`` lists the segments in it, in
order. Every evaluation is all-or-nothing (an error or Ctrl-C halfway removes the positions it
added), and ``sync`` brings the cache to any wanted sequence by keeping the longest common
prefix, so callers describe the whole prompt and never track positions themselves.

Positions: one per row, the row's index in the sequence. An LLM with M-RoPE (qwen2vl: Qwen2.5-Omni)
rotates with several position axes; llama.cpp gives a token row its one position on every axis, and
reads an embedding batch's ``pos`` as ``n_pos_per_embd`` axes section-major (``mrope_positions``).

(Over 400 lines: every way positions enter and leave the one cache -- tokens, rows, joined batches,
roll-backs, sampling -- is here, so its all-or-nothing rule is checked in one place.)
"""

from __future__ import annotations

import codecs
import ctypes
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from llasm_cli.errors import ContextOverflowError, ModelFileError
from llasm_cli.llm import native
from llasm_cli.llm.kv import Segment, append_segment, as_segment, common_prefix, drop_positions, same_positions
from llasm_cli.llm.weights import LlamaModel


def mrope_positions(first: int, n: int, sections: int) -> np.ndarray:
    """``pos`` of an embedding batch of ``n`` rows from position ``first`` on, for an M-RoPE model:
    section-major (``pos[j * n + i]`` is row i on axis j; llama_batch_compat reads it so), every axis
    the row's sequence position, as mtmd's ``set_position_mrope_1d`` places audio. Text rows after the
    span then continue at ``first + n``, as token batches (one position, broadcast to every axis) do."""
    return np.tile(np.arange(first, first + n, dtype=np.int32), sections)


def mrope_batch(b, first: int, sections: int):
    """The embedding batch ``b`` (``b.n_tokens`` rows of one sequence from position ``first`` on) as an M-RoPE
    model needs it: the same rows, ``pos`` pointing at ``mrope_positions`` (llama_batch_init made room for one
    position per row only). ``b`` itself is left as it is; the new batch keeps its positions alive."""
    pos = np.ctypeslib.as_ctypes(mrope_positions(first, b.n_tokens, sections))
    return llama_cpp.llama_batch(n_tokens=b.n_tokens, token=b.token, embd=b.embd, pos=pos, n_seq_id=b.n_seq_id,
                                 seq_id=b.seq_id, logits=b.logits)


@dataclass
class Sampling:
    """Sampling settings; temperature 0 means greedy."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0
    ignore_eos: bool = False  # keep going past end-of-text (benchmarks, stress tests)


class Sampler:
    """Temperature / top-k / top-p sampling on numpy logits (greedy at temperature 0).

    It runs once per generated token, between two llama.cpp decodes, so its cost is decode speed:
    a top-k over the whole vocabulary (argpartition over 49k logits) cost 0.7-0.9 ms a token in the
    decode loop, a tenth of SmolLM2-135M's decode. Tokens whose logit lies more than
    ``CUTOFF`` temperatures below the best have a probability under e^-50 of the best's: they can
    never be drawn, so only the others are ranked (usually a few dozen)."""

    CUTOFF = 50.0

    def __init__(self, s: Sampling) -> None:
        self.s = s
        self.rng = np.random.default_rng(s.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """A token id; where the logits hold a NaN or +inf, one of those (argmax finds the first NaN,
        or the +inf), so that the caller's check of the sampled token's logit sees any of them."""
        if self.s.temperature <= 0:
            return int(logits.argmax())
        best = logits.max()
        if not math.isfinite(best):
            return int(logits.argmax())
        cand = np.flatnonzero(logits >= best - self.CUTOFF * self.s.temperature)
        k = min(self.s.top_k, cand.size) if self.s.top_k > 0 else cand.size
        if k < cand.size and cand.size > 4 * k:  # many near the top (a high temperature): partition first
            cand = np.sort(cand[np.argpartition(logits[cand], -k)[-k:]])
        top = cand[np.argsort(-logits[cand], kind="stable")[:k]]  # best first, ties by token id
        p = np.exp((logits[top].astype(np.float64) - best) / self.s.temperature)
        p /= p.sum()
        keep = min(int(np.searchsorted(np.cumsum(p), self.s.top_p) + 1), p.size)  # the sum may end just below 1
        cdf = np.cumsum(p[:keep])
        # what Generator.choice(keep, p=...) draws, without its per-call validation
        return int(top[min(int(np.searchsorted(cdf / cdf[-1], self.rng.random(), side="right")), keep - 1)])


class Engine:
    """One llama.cpp model + context holding one conversation (sequence 0)."""

    def __init__(
        self, model: LlamaModel | str | Path, n_ctx: int = 4096, n_threads: int | None = None,
        n_gpu_layers: int = 0, n_batch: int = 512, exact: bool = False,
    ) -> None:
        """``model``: a loaded ``LlamaModel``, or a GGUF path to load one that this engine then owns (and
        frees on ``close``). ``n_ctx``: positions the context holds (at most what the model was trained
        for). Size it first from the model (``LlamaModel.tokenize`` and ``meta`` work before any context
        exists: a caller can count its prompt).

        The KV cache (F16, or F32 when ``exact``) is allocated and cleared for every position at
        once, so it is as much of the process's memory as ``n_ctx`` says: size it to the work."""
        self._owns_model = not isinstance(model, LlamaModel)
        self.llm = LlamaModel(model, n_gpu_layers) if self._owns_model else model
        llm = self.llm
        self.path, self.model, self.vocab = llm.path, llm.model, llm.vocab
        self.n_vocab, self.n_embd, self.arch, self.embed_scale = llm.n_vocab, llm.n_embd, llm.arch, llm.embed_scale
        try:
            self._make_context(n_ctx, n_threads, n_batch, exact)
        except BaseException:
            if self._owns_model:
                llm.close()
            raise

    def _make_context(self, n_ctx: int, n_threads: int | None, n_batch: int, exact: bool) -> None:
        threads = n_threads or native.default_threads()
        cparams = llama_cpp.llama_context_default_params()
        train_ctx = self.llm.n_ctx_train
        cparams.n_ctx = min(n_ctx, train_ctx) if train_ctx > 0 else n_ctx
        self.n_ctx_train = train_ctx if train_ctx > 0 else n_ctx
        # llama.cpp cuts n_batch to the n_ctx asked for (it then rounds n_ctx up to a multiple of 256):
        # our batches must fit what it kept. The compute buffer is sized by n_ubatch.
        n_batch = max(1, min(n_batch, cparams.n_ctx))
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        if exact:
            # Reference precision: the CPU flash-attention kernel rounds Q/K/V through F16
            # (measured: 3e-4 relative logit error on one token), and so does an F16 KV cache.
            cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ModelFileError(f"llama.cpp could not create a context for {self.path}: {native.last_log()}")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self._mem = llama_cpp.llama_get_memory(self.ctx)
        self._logits_type = ctypes.c_float * self.n_vocab
        self._tok_batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._emb_batch = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)
        self.n_pos_per_embd = self.llm.n_pos_per_embd  # > 1: M-RoPE positions for embedding rows
        self._closed = False
        self.fed: list[Segment] = []  # what the KV cache holds, in order (token lists merged)
        self.reused = 0  # positions the last sync() kept from what the cache held

    # --- the model's vocabulary and metadata (LlamaModel), asked through the engine ---------

    def meta(self, key: str) -> str | None:
        return self.llm.meta(key)

    @property
    def bos(self) -> int:
        return self.llm.bos

    @property
    def eos(self) -> int:
        return self.llm.eos

    @property
    def add_bos(self) -> bool:
        return self.llm.add_bos

    @property
    def eos_text(self) -> str:
        return self.llm.eos_text

    def is_eog(self, token: int) -> bool:
        return self.llm.is_eog(token)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text, special)

    def token_id(self, piece: str) -> int:
        return self.llm.token_id(piece)

    def piece(self, token: int, special: bool = False) -> bytes:
        return self.llm.piece(token, special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(tokens)

    def token_rows(self, tokens: Sequence[int]) -> np.ndarray | None:
        return self.llm.token_rows(tokens)

    # --- evaluation ---------------------------------------------------------------------

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextOverflowError(
                f"the input needs {self.n_past + n} positions but the context holds {self.n_ctx}; "
                "use a shorter recording or a larger --ctx"
            )

    def eval(self, segments: Sequence[Segment], logits: bool = True) -> np.ndarray | None:
        """Append token and embedding segments in order, all or nothing; returns the last logits.

        If anything interrupts it (an error, Ctrl-C between two batches), the positions it
        added are removed again, so the cache holds exactly what it held before.
        """
        segments = [as_segment(s, self.n_embd) for s in segments if len(s)]
        if not segments:
            raise ValueError("nothing to evaluate")
        self._check_room(sum(len(s) for s in segments))
        start = self.n_past
        feed = self._joined(segments)
        try:
            for i, seg in enumerate(feed):
                want = logits and i == len(feed) - 1
                if isinstance(seg, np.ndarray):
                    self._decode_embeddings(seg, want)
                else:
                    self._decode_tokens(seg, want)
            out = self._checked_logits() if logits else None
        except BaseException:
            self._forget_from(start)
            raise
        for seg in segments:
            append_segment(self.fed, seg)  # our own copy (see as_segment)
        return out

    def _joined(self, segments: list) -> list:
        """Segments that mix tokens and embedding rows, as one segment of rows where the architecture lets
        the tokens go in as their own rows (``token_rows``): llama.cpp's logits depend on how a prompt is cut
        into decodes (Gemma 3 270M: 0.61 apart, another argmax, for the same tokens fed as 5 + the rest), and a
        spoken question should be answered as the same words typed in one decode."""
        if len(segments) < 2 or self.n_pos_per_embd != 1 or not any(isinstance(s, np.ndarray) for s in segments):
            return segments
        rows = [s if isinstance(s, np.ndarray) else self.token_rows(s) for s in segments]
        if any(r is None for r in rows):
            return segments
        return [np.concatenate([np.asarray(r, np.float32) for r in rows])]

    def sync(self, segments: Sequence[Segment], logits: bool = True) -> np.ndarray | None:
        """Make the cache hold exactly ``segments``, keeping the longest prefix it already holds.

        A system prompt and chat scaffolding that repeat from question to question, and the
        history of a conversation, are then prefilled once, not once per question. At least
        the last position is evaluated again, for its logits (with ``logits`` False nothing is
        evaluated again, and None comes back).
        """
        segments = [as_segment(s, self.n_embd) for s in segments if len(s)]
        total = sum(len(s) for s in segments)
        if not total:
            raise ValueError("nothing to evaluate")
        keep = min(common_prefix(self.fed, segments), total - 1 if logits else total)
        self.truncate(keep)
        self.reused = keep
        rest = drop_positions(segments, keep)
        return self.eval(rest, logits=logits) if rest else None

    def _decode_tokens(self, tokens: list[int], logits: bool) -> None:
        b = self._tok_batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            base = self.n_past
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = base + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = logits and last and i == len(chunk) - 1
            b.n_tokens = len(chunk)
            self._decode(b)

    def _decode_embeddings(self, embd: np.ndarray, logits: bool) -> None:
        b = self._emb_batch
        for start in range(0, embd.shape[0], self.n_batch):
            chunk = np.ascontiguousarray(embd[start : start + self.n_batch])
            n = chunk.shape[0]
            last = start + n == embd.shape[0]
            ctypes.memmove(b.embd, chunk.ctypes.data, chunk.nbytes)
            base = self.n_past
            for i in range(n):
                b.pos[i] = base + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = logits and last and i == n - 1
            b.n_tokens = n
            self._decode(b if self.n_pos_per_embd == 1 else mrope_batch(b, base, self.n_pos_per_embd))

    def warmup(self) -> None:
        """One throw-away decode: the first llama_decode allocates graphs and is several times slower."""
        self.eval([[self.bos if self.bos >= 0 else 0]], logits=False)
        self.reset()

    def _decode(self, batch) -> None:
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise ContextOverflowError(f"llama_decode failed (code {rc}): {native.last_log()}")

    def logits(self) -> np.ndarray:
        """A copy of the logits of the last evaluated position that asked for them."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.frombuffer(self._logits_type.from_address(ctypes.addressof(ptr.contents)), dtype=np.float32).copy()

    def _checked_logits(self) -> np.ndarray:
        out = self.logits()
        if not math.isfinite(out.max()):  # a NaN anywhere, or +inf, makes the maximum so
            raise self._corrupt()
        return out

    def _corrupt(self) -> ModelFileError:
        return ModelFileError(
            f"{self.path.name} computed NaN or infinite scores: its weights are probably corrupt "
            "(re-download or re-export the model)"
        )

    def token_embeddings(self, tokens: Sequence[int], table: np.ndarray) -> np.ndarray:
        """Rows of the token-embedding ``table`` as the first layer sees them (arch scale applied)."""
        return (table[np.asarray(tokens)] * self.embed_scale).astype(np.float32)

    # --- KV state -----------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        """Positions in the KV cache, asked of llama.cpp itself: a Ctrl-C that lands between a
        decode and our bookkeeping can then never put the next batch at a wrong position."""
        return llama_cpp.llama_memory_seq_pos_max(self._mem, 0) + 1

    def regroup(self, segments: Sequence[Segment]) -> None:
        """Record the cache's content as ``segments``: the very positions ``fed`` lists, grouped
        differently (audio prefilled chunk by chunk, recorded as the one clip that the next prompt
        holds, so that ``sync`` finds it in the common prefix). Anything else is a ValueError."""
        segments = [as_segment(s, self.n_embd) for s in segments if len(s)]
        if not same_positions(self.fed, segments):
            raise ValueError("regroup: the segments are not what the cache holds")
        fed: list[Segment] = []
        for seg in segments:  # token lists merged, as eval records them (as_segment made them ours)
            append_segment(fed, seg)
        self.fed = fed

    def truncate(self, n_keep: int) -> None:
        """Forget every position from ``n_keep`` on (e.g. to rewind to the end of the system prompt)."""
        self._forget_from(n_keep)

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)
        self.fed = []

    def _forget_from(self, n_keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, 0, n_keep, -1)
        self.fed = drop_positions(self.fed, n_keep, keep_head=True)

    # --- generation ---------------------------------------------------------------------

    def generate(self, first_logits: np.ndarray, sampler: Sampler, max_tokens: int) -> Iterator[int]:
        """Sample, yield and feed back tokens until end-of-generation, max_tokens or a full context."""
        logits = first_logits
        for _ in range(max_tokens):
            tok = sampler(logits)
            if not math.isfinite(logits[tok]):  # the sampler picks a NaN or +inf wherever one is (Sampler)
                raise self._corrupt()
            if self.is_eog(tok) and not sampler.s.ignore_eos:
                return
            yield tok
            pos = self.n_past
            if pos >= self.n_ctx:
                return
            logits = self._feed_back(tok, pos)

    def _feed_back(self, tok: int, pos: int) -> np.ndarray:
        """``eval([[tok]])`` at position ``pos`` (``n_past``) for the decode loop, with the same
        bookkeeping in fewer steps: on a small LLM a token takes ~0.4 ms, and eval's generality
        (segment checks, batching, n_past asked four times, a NaN scan of the logits where the
        sampled token's own logit tells as much) showed: greedy decode of the built-in model
        against llama.cpp's C loop on the same context went from ~0.81x to ~0.95x."""
        b = self._tok_batch
        b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0], b.n_tokens = tok, pos, 1, True, 1
        b.seq_id[0][0] = 0
        try:
            self._decode(b)
            out = self.logits()  # checked by generate through the token sampled from it
        except BaseException:
            self._forget_from(pos)
            raise
        append_segment(self.fed, [tok])
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._tok_batch)
        llama_cpp.llama_batch_free(self._emb_batch)
        llama_cpp.llama_free(self.ctx)
        if self._owns_model:
            self.llm.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TextStream:
    """Bytes of token pieces in, complete UTF-8 text out (multi-byte characters span tokens)."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._dec.decode(piece)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
