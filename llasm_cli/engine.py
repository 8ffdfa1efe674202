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
"""

from __future__ import annotations

import codecs
import ctypes
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from . import native
from .errors import ContextOverflowError, ModelFileError

# Architectures whose graph scales token embeddings (and not injected rows) by sqrt(n_embd).
EMBED_SCALE_ARCHS = {"gemma", "gemma2", "gemma3", "gemma3n"}
# Architectures whose graph reads injected rows exactly as it reads the token_embd rows of tokens,
# but for a factor the token path applies (src/models/<arch>.cpp: llama, qwen2 and qwen3 use
# build_inp_embd as it is; gemma3 scales token input only by sqrt(n_embd)). There, tokens can join
# the embedding rows of one llama_decode (Engine.eval_joined). True: scale by sqrt(n_embd).
JOINABLE_ARCHS = {"llama": False, "qwen2": False, "qwen3": False, "gemma3": True}

Segment = Sequence[int] | np.ndarray  # token ids, or embeddings of shape (n, n_embd)
MROPE_SECTIONS = 4  # GGML_MROPE_SECTIONS: the position axes of an M-RoPE model's embedding rows


def n_pos_per_embd(model) -> int:
    """Positions llama.cpp reads per embedding row: ``MROPE_SECTIONS`` for M-RoPE models, else 1
    (llama_hparams::n_pos_per_embd; mtmd asks ``llama_model_rope_type`` the same way)."""
    rope = llama_cpp.llama_model_rope_type(model)
    return MROPE_SECTIONS if rope in (llama_cpp.LLAMA_ROPE_TYPE_MROPE, llama_cpp.LLAMA_ROPE_TYPE_IMROPE) else 1


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
        self, model_path: str | Path, n_ctx: int | Callable[[Engine], int] = 4096, n_threads: int | None = None,
        n_gpu_layers: int = 0, n_batch: int = 512, exact: bool = False,
    ) -> None:
        """``n_ctx``: positions the context holds (at most what the model was trained for), or a
        function that sizes it from this engine once the vocabulary is loaded and before the context
        exists (``tokenize``, ``meta`` and ``piece`` work then: a caller can count its prompt).

        The KV cache (F16, or F32 when ``exact``) is allocated and cleared for every position at
        once, so it is as much of the process's memory as ``n_ctx`` says: size it to the work."""
        native.init()
        self.path = Path(model_path)
        mparams = native.model_params(n_gpu_layers)  # extra CPU buffers only where the probe says safe
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise ModelFileError(f"llama.cpp could not load {self.path}: {native.last_log()}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self.model)
        self.arch = self.meta("general.architecture") or ""
        self.embed_scale = math.sqrt(self.n_embd) if self.arch in EMBED_SCALE_ARCHS else 1.0
        self._token_rows: dict[int, np.ndarray] = {}  # token_rows' cache
        if callable(n_ctx):
            try:
                n_ctx = int(n_ctx(self))
            except BaseException:
                llama_cpp.llama_model_free(self.model)
                raise
        threads = n_threads or native.default_threads()
        cparams = llama_cpp.llama_context_default_params()
        train_ctx = llama_cpp.llama_model_n_ctx_train(self.model)
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
            llama_cpp.llama_model_free(self.model)
            raise ModelFileError(f"llama.cpp could not create a context for {self.path}: {native.last_log()}")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self._mem = llama_cpp.llama_get_memory(self.ctx)
        self._logits_type = ctypes.c_float * self.n_vocab
        self._tok_batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._emb_batch = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)
        self.n_pos_per_embd = n_pos_per_embd(self.model)  # > 1: M-RoPE positions for embedding rows
        self._closed = False
        self.fed: list[Segment] = []  # what the KV cache holds, in order (token lists merged)
        self.reused = 0  # positions the last sync() kept from what the cache held

    # --- metadata and vocabulary --------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return llama_cpp.llama_vocab_bos(self.vocab)

    @property
    def eos(self) -> int:
        return llama_cpp.llama_vocab_eos(self.vocab)

    @property
    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text`` without BOS; ``special`` parses control tokens like <au_start>."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -n, False, special)
        return list(buf[:n])

    def token_id(self, piece: str) -> int:
        """The id of a single special token such as ``<au_start>``; error if it is not one token."""
        ids = self.tokenize(piece, special=True)
        if len(ids) != 1:
            raise ModelFileError(f"{self.path.name}: the vocabulary has no single token {piece!r}")
        return ids[0]

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; control tokens render as nothing unless ``special``."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    @property
    def eos_text(self) -> str:
        """How the EOS token is spelled in templates (e.g. ``</s>``)."""
        return self.piece(self.eos, special=True).decode("utf-8", errors="replace") if self.eos >= 0 else ""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

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
        segments = [_as_segment(s, self.n_embd) for s in segments if len(s)]
        if not segments:
            raise ValueError("nothing to evaluate")
        self._check_room(sum(len(s) for s in segments))
        start = self.n_past
        try:
            for i, seg in enumerate(segments):
                want = logits and i == len(segments) - 1
                if isinstance(seg, np.ndarray):
                    self._decode_embeddings(seg, want)
                else:
                    self._decode_tokens(seg, want)
            out = self._checked_logits() if logits else None
        except BaseException:
            self._forget_from(start)
            raise
        for seg in segments:
            _append_segment(self.fed, seg)  # our own copy (see _as_segment)
        return out

    def sync(self, segments: Sequence[Segment], logits: bool = True) -> np.ndarray | None:
        """Make the cache hold exactly ``segments``, keeping the longest prefix it already holds.

        A system prompt and chat scaffolding that repeat from question to question, and the
        history of a conversation, are then prefilled once, not once per question. At least
        the last position is evaluated again, for its logits (with ``logits`` False nothing is
        evaluated again, and None comes back).
        """
        segments = [_as_segment(s, self.n_embd) for s in segments if len(s)]
        total = sum(len(s) for s in segments)
        if not total:
            raise ValueError("nothing to evaluate")
        keep = min(common_prefix(self.fed, segments), total - 1 if logits else total)
        self.truncate(keep)
        self.reused = keep
        rest = _drop_positions(segments, keep)
        return self.eval(rest, logits=logits) if rest else None

    def eval_joined(self, rows: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
        """Embedding ``rows`` and then ``tokens``, with the last one's logits, in one llama_decode
        where the architecture allows it (the tokens go in as their own embedding rows, see
        ``token_rows``; elsewhere in two). Recorded in ``fed`` as rows and tokens; all or nothing."""
        rows = _as_segment(rows, self.n_embd) if len(rows) else np.zeros((0, self.n_embd), np.float32)
        tokens = [int(t) for t in tokens]
        extra = self.token_rows(tokens) if len(rows) and tokens else None
        if extra is None:
            return self.eval([s for s in (rows, tokens) if len(s)])
        out = self.eval([np.concatenate([rows, extra])])
        self.fed[-1:] = [rows, tokens]  # the same positions, recorded as what they are
        return out

    def token_rows(self, tokens: Sequence[int]) -> np.ndarray | None:
        """What the first layer sees for ``tokens`` when they are fed as embedding rows: their rows of
        the GGUF's token_embd table (dequantized), scaled as the token path scales them; None for an
        architecture not in JOINABLE_ARCHS."""
        if self.arch not in JOINABLE_ARCHS:
            return None
        cache = self._token_rows
        missing = sorted({int(t) for t in tokens} - cache.keys())
        if missing:
            import gguf

            from .gguf_check import read_gguf

            info = read_gguf(self.path)
            name = "token_embd.weight"
            if name not in info.offsets or info.tensors[name][-1] != self.n_embd:
                return None
            qtype = gguf.GGMLQuantizationType[info.types[name]]
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            row_bytes = self.n_embd // block * size
            scale = np.float32(math.sqrt(self.n_embd)) if JOINABLE_ARCHS[self.arch] else np.float32(1.0)
            with open(self.path, "rb") as f:
                for t in missing:
                    if not 0 <= t < info.tensors[name][0]:
                        raise ValueError(f"token id {t} is outside the vocabulary")
                    f.seek(info.offsets[name] + t * row_bytes)
                    raw = np.frombuffer(f.read(row_bytes), dtype=np.uint8)
                    if qtype == gguf.GGMLQuantizationType.F32:
                        row = raw.view(np.float32)
                    elif qtype == gguf.GGMLQuantizationType.F16:
                        row = raw.view(np.float16).astype(np.float32)
                    else:
                        row = gguf.quants.dequantize(raw[None], qtype)[0].astype(np.float32)
                    cache[t] = row * scale
        return np.stack([cache[int(t)] for t in tokens]) if len(tokens) else np.zeros((0, self.n_embd), np.float32)

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
        segments = [_as_segment(s, self.n_embd) for s in segments if len(s)]
        if not same_positions(self.fed, segments):
            raise ValueError("regroup: the segments are not what the cache holds")
        fed: list[Segment] = []
        for seg in segments:  # token lists merged, as eval records them (_as_segment made them ours)
            _append_segment(fed, seg)
        self.fed = fed

    def truncate(self, n_keep: int) -> None:
        """Forget every position from ``n_keep`` on (e.g. to rewind to the end of the system prompt)."""
        self._forget_from(n_keep)

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)
        self.fed = []

    def _forget_from(self, n_keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, 0, n_keep, -1)
        self.fed = _drop_positions(self.fed, n_keep, keep_head=True)

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
        _append_segment(self.fed, [tok])
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._tok_batch)
        llama_cpp.llama_batch_free(self._emb_batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _append_segment(fed: list[Segment], seg: Segment) -> None:
    """Append ``seg`` (which ``fed`` then owns) to a list of segments as ``Engine.fed`` keeps them:
    token ids that follow token ids join their list."""
    if not isinstance(seg, np.ndarray) and fed and not isinstance(fed[-1], np.ndarray):
        fed[-1].extend(seg)
    else:
        fed.append(seg)


def _as_segment(seg: Segment, n_embd: int) -> Segment:
    """Token ids as a list, embeddings as a float32 (n, n_embd) array; a wrong width is an error."""
    if isinstance(seg, np.ndarray) and seg.ndim == 2:
        if seg.shape[1] != n_embd:
            raise ModelFileError(f"embeddings of shape {seg.shape} do not fit an LLM {n_embd} wide")
        return np.ascontiguousarray(seg, dtype=np.float32)
    return [int(t) for t in seg]


def common_prefix(a: Sequence[Segment], b: Sequence[Segment]) -> int:
    """Positions two segment lists share from the start: equal token ids, equal embedding rows."""
    n = ia = ib = oa = ob = 0
    while ia < len(a) and ib < len(b):
        sa, sb = a[ia], b[ib]
        if isinstance(sa, np.ndarray) or isinstance(sb, np.ndarray):
            if not (isinstance(sa, np.ndarray) and isinstance(sb, np.ndarray)) or oa or ob:
                break
            if not (sa is sb or (sa.shape == sb.shape and np.array_equal(sa, sb))):
                break
            n, ia, ib = n + len(sa), ia + 1, ib + 1
            continue
        k, limit = 0, min(len(sa) - oa, len(sb) - ob)
        while k < limit and sa[oa + k] == sb[ob + k]:
            k += 1
        n, oa, ob = n + k, oa + k, ob + k
        if k < limit:
            break
        if oa == len(sa):
            ia, oa = ia + 1, 0
        if ob == len(sb):
            ib, ob = ib + 1, 0
    return n


def same_positions(a: Sequence[Segment], b: Sequence[Segment]) -> bool:
    """Whether two segment lists hold the same positions, however each groups them."""
    n = common_prefix(a, b)  # cheap on what is shared as the same objects
    runs_a, runs_b = _runs(_drop_positions(a, n)), _runs(_drop_positions(b, n))
    return len(runs_a) == len(runs_b) and all(
        isinstance(x, np.ndarray) == isinstance(y, np.ndarray)
        and (np.array_equal(x, y) if isinstance(x, np.ndarray) else list(x) == list(y))
        for x, y in zip(runs_a, runs_b)
    )


def _runs(segments: Sequence[Segment]) -> list[Segment]:
    """Consecutive token lists joined, consecutive embedding arrays joined."""
    groups: list[list[Segment]] = []
    for seg in segments:
        if groups and isinstance(groups[-1][0], np.ndarray) == isinstance(seg, np.ndarray):
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return [np.concatenate(g) if isinstance(g[0], np.ndarray) else [int(t) for s in g for t in s] for g in groups]


def _drop_positions(segments: Sequence[Segment], n: int, keep_head: bool = False) -> list[Segment]:
    """The segments after their first ``n`` positions (or, with ``keep_head``, only those ``n``)."""
    head: list[Segment] = []
    tail: list[Segment] = []
    pos = 0
    for seg in segments:
        cut = min(max(n - pos, 0), len(seg))
        if cut:
            head.append(seg[:cut])
        if cut < len(seg):
            tail.append(seg[cut:])
        pos += len(seg)
    return head if keep_head else tail


class TextStream:
    """Bytes of token pieces in, complete UTF-8 text out (multi-byte characters span tokens)."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._dec.decode(piece)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
