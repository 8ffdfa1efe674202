"""Many conversations at once in one llama.cpp context: sequences, continuous batching, prefix reuse.

``BatchEngine`` is a llama.cpp context whose KV cache holds several sequences (one per slot) in
one unified cache, over a loaded ``LlamaModel`` (weights.py). ``Scheduler`` drives it from one thread
(a llama.cpp context is not thread-safe). Each step decodes one ``llama_batch`` carrying the next
token of every sequence that is answering and a chunk of any prompt being prefilled, so a new
request starts while the others go on answering (continuous batching). Audio embeddings go in
through ``llama_batch.embd``, in a batch of their own, exactly as ``engine.py`` feeds them.

A slot keeps what its sequence holds when a request ends. A new request goes to the idle slot
whose cache shares the longest prefix with its prompt -- a conversation's next turn repeats its
history, so only the new turn is prefilled, as in the chat REPL -- and when another slot shares
more (a busy one, say, with the same system prompt and history), that prefix is copied over: in a
unified cache a copy shares the cells, it duplicates nothing. Every slot is limited to
``n_ctx_seq`` positions and the cache holds ``n_seq * n_ctx_seq`` cells, so a decode never runs
out of cells whatever the other sequences hold.

(Over 400 lines: the batch context and the one thread that drives it share every invariant about
what a slot holds, so they are read together.)
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from llasm_cli.errors import ContextOverflowError, LlasmError, ModelFileError
from llasm_cli.llm import native
from llasm_cli.llm.engine import Sampler, Sampling, TextStream, mrope_batch
from llasm_cli.llm.kv import Segment, as_segment, common_prefix, drop_positions
from llasm_cli.llm.weights import LlamaModel

log = logging.getLogger("llasm.serve")

MAX_SEQUENCES = 64  # slots one context may hold (llama.cpp's own limit is higher; memory is not)


class BatchEngine:
    """A llama.cpp context holding ``n_seq`` sequences of up to ``n_ctx_seq`` positions each.

    It is made over a loaded model (weights, vocabulary), which must outlive it.
    """

    def __init__(
        self, llm: LlamaModel, n_seq: int, n_ctx_seq: int, n_batch: int = 512, n_threads: int | None = None,
        exact: bool = False,
    ) -> None:
        if not 1 <= n_seq <= MAX_SEQUENCES:
            raise ValueError(f"n_seq must be from 1 to {MAX_SEQUENCES}, got {n_seq}")
        self.llm = llm
        self.n_seq = n_seq
        self.n_ctx_seq = min(n_ctx_seq, llm.n_ctx_train) if llm.n_ctx_train > 0 else n_ctx_seq
        self.n_batch = n_batch
        self.n_embd = llm.n_embd
        threads = n_threads or native.default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx_seq * n_seq
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True  # one cache for all: any mix of sequences in one ubatch, prefix copies share cells
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        if exact:  # as Engine: f32 KV cache, no (F16-rounding) flash attention
            cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
        if not self.ctx:
            raise ModelFileError(
                f"llama.cpp could not create a context of {n_seq} x {self.n_ctx_seq} positions for "
                f"{llm.path}: {native.last_log()}"
            )
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self._mem = llama_cpp.llama_get_memory(self.ctx)
        self._tok = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._emb = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)
        self._closed = False
        self.warmup()

    def warmup(self) -> None:
        """One throw-away decode (the first one allocates the graphs)."""
        bos = self.llm.bos if self.llm.bos >= 0 else 0
        self.decode_tokens([(bos, 0, 0, False)])
        self.clear()

    # --- decoding -----------------------------------------------------------------------

    def decode_tokens(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One batch of (token, position, sequence, wants logits), at most ``n_batch`` of them."""
        b = self._tok
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(entries)
        self._decode(b)

    def decode_embeddings(self, rows: np.ndarray, pos: int, seq: int, logits_last: bool) -> None:
        """Embedding rows (at most ``n_batch``) at positions ``pos``, ``pos + 1``, ... of one sequence."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        b = self._emb
        ctypes.memmove(b.embd, rows.ctypes.data, rows.nbytes)
        n = rows.shape[0]
        for i in range(n):
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits_last and i == n - 1
        b.n_tokens = n
        sections = self.llm.n_pos_per_embd
        self._decode(b if sections == 1 else mrope_batch(b, pos, sections))  # M-RoPE: as engine.py feeds them

    def _decode(self, batch) -> None:
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise ContextOverflowError(f"llama_decode failed (code {rc}): {native.last_log()}")

    def logits(self, i: int) -> np.ndarray:
        """A copy of the logits of batch entry ``i`` of the last decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab,)).copy()

    # --- KV state -----------------------------------------------------------------------

    def n_past(self, seq: int) -> int:
        """Positions sequence ``seq`` holds, asked of llama.cpp itself."""
        return llama_cpp.llama_memory_seq_pos_max(self._mem, seq) + 1

    def seq_rm(self, seq: int, p0: int) -> bool:
        """Forget positions ``p0`` and after of one sequence; False if the memory cannot cut there."""
        return bool(llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, -1))

    def seq_cp(self, src: int, dst: int, n: int) -> None:
        """Give ``dst`` the first ``n`` positions of ``src`` (shared cells, nothing computed)."""
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, 0, n)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._tok)
        llama_cpp.llama_batch_free(self._emb)
        llama_cpp.llama_free(self.ctx)


# --- jobs and what they report ----------------------------------------------------------


@dataclass
class Text:
    """A piece of the answer (complete UTF-8 text; stop strings held back until ruled out)."""

    text: str


@dataclass
class Finished:
    """The end of an answer. ``finish_reason``: "stop" (end of text or a stop string) or "length"."""

    finish_reason: str
    prompt_tokens: int  # positions of the whole prompt, audio included
    cached_tokens: int  # of those, positions the cache already held (not prefilled again)
    completion_tokens: int
    text: str  # the whole answer as reported in Text events
    tokens: list[int]  # the answer's ids as generated
    stopped_by_string: bool = False
    first_token_s: float = 0.0  # submit -> first sampled token


@dataclass
class Failed:
    error: BaseException


Event = Text | Finished | Failed


@dataclass
class Job:
    """One request: a whole prompt (BOS included) and how to answer it.

    ``emit`` is called from the scheduler thread with each ``Event``; it must not block.
    """

    segments: list[Segment]
    sampling: Sampling
    max_tokens: int
    emit: Callable[[Event], None]
    stop: Sequence[str] = ()
    lstrip: bool = True  # drop whitespace before the answer's first visible character
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def n_positions(self) -> int:
        return sum(len(s) for s in self.segments)


class StopStrings:
    """Finds stop strings in streamed text; text that may begin one is held back until it cannot."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string ended the answer)."""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class _Run:
    """A job's progress in its slot."""

    def __init__(self, job: Job, pending: list[Segment], cached: int) -> None:
        self.job = job
        self.pending = pending  # prompt segments still to decode
        self.rows_done = 0  # rows of pending[0] decoded, when it is a clip
        self.cached = cached
        self.next_token: int | None = None  # sampled, to be decoded next step
        self.tokens: list[int] = []
        self.sampler = Sampler(job.sampling)
        self.stream = TextStream()
        self.stops = StopStrings(job.stop)
        self.started = not job.lstrip
        self.text: list[str] = []
        self.first_token_s = 0.0

    def say(self, text: str) -> bool:
        """Pass text on (stripped at the start, stop strings applied); True when a stop string ended it."""
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        out, stopped = self.stops.push(text)
        if out:
            self.text.append(out)
            _emit(self.job, Text(out))
        return stopped


def _emit(job: Job, event: Event) -> None:
    try:
        job.emit(event)
    except Exception:  # the receiver went away (a closed event loop): nothing to tell
        log.debug("dropped an event for a job whose receiver is gone", exc_info=True)


@dataclass
class _Slot:
    seq: int
    fed: list[Segment] = field(default_factory=list)  # what the sequence holds (complete segments)
    run: _Run | None = None
    last_used: float = 0.0

    @property
    def fed_len(self) -> int:
        return sum(len(s) for s in self.fed)


@dataclass
class SchedulerStats:
    slots: int
    busy: int
    waiting: int
    served: int
    failed_steps: int
    reused_positions: int  # positions taken from the cache instead of prefilled, over all requests
    prefilled_positions: int


class Scheduler:
    """Runs jobs on a ``BatchEngine`` from one thread; ``submit`` and ``cancel`` from any thread."""

    def __init__(self, engine: BatchEngine, prefill_chunk: int | None = None) -> None:
        self.engine = engine
        self.vocab = engine.llm  # the model: tokens -> text, end-of-generation
        self.n_ctx_seq = engine.n_ctx_seq
        self.prefill_chunk = min(prefill_chunk or engine.n_batch, engine.n_batch)
        self.slots = [_Slot(seq=i) for i in range(engine.n_seq)]
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._rr = 0
        self.served = 0
        self.failed_steps = 0
        self.reused_positions = 0
        self.prefilled_positions = 0
        self._durations: deque[float] = deque(maxlen=32)
        self._thread = threading.Thread(target=self._loop, name="llasm-scheduler", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        job.segments = [as_segment(s, self.engine.n_embd) for s in job.segments if len(s)]
        need = job.n_positions
        if need == 0:
            raise ValueError("an empty prompt")
        if need >= self.n_ctx_seq:
            raise ContextOverflowError(
                f"the messages need {need} positions but a conversation holds {self.n_ctx_seq} "
                "(one more is needed for the answer); send less, or start the server with a larger --ctx"
            )
        with self._cv:
            if self._stopping:
                raise LlasmError("the server is shutting down")
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away); its slot is free for the next one at the next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def stats(self) -> SchedulerStats:
        with self._cv:
            busy = sum(1 for s in self.slots if s.run is not None)
            waiting = len(self._waiting)
        return SchedulerStats(len(self.slots), busy, waiting, self.served, self.failed_steps,
                              self.reused_positions, self.prefilled_positions)

    def mean_duration(self) -> float:
        """Seconds a recent request took from submit to its end (0 before the first)."""
        d = list(self._durations)
        return sum(d) / len(d) if d else 0.0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        gone = LlasmError("the server is shutting down")
        for slot in self.slots:
            if slot.run is not None:
                _emit(slot.run.job, Failed(gone))
                slot.run = None
        while self._waiting:
            _emit(self._waiting.popleft(), Failed(gone))

    # --- the scheduler thread -------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and all(s.run is None for s in self.slots):
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self._step()
            except Exception as exc:  # a bug: fail what is in flight, start from a clean cache, keep serving
                log.exception("scheduler step failed")
                self.failed_steps += 1
                for slot in self.slots:
                    if slot.run is not None:
                        _emit(slot.run.job, Failed(exc))
                    slot.run, slot.fed = None, []
                self.engine.clear()

    def _step(self) -> None:
        for slot in self.slots:
            if slot.run is not None and slot.run.job.cancelled:
                self._release(slot)
        self._admit()
        busy = [s for s in self.slots if s.run is not None]
        if not busy:
            return
        self._rr += 1
        busy = busy[self._rr % len(busy) :] + busy[: self._rr % len(busy)]  # prefill turns rotate
        self._feed_audio(busy)
        self._feed_tokens(busy)

    def _admit(self) -> None:
        while True:
            idle = [s for s in self.slots if s.run is None]
            if not idle:
                return
            with self._cv:
                job = self._waiting.popleft() if self._waiting else None
            if job is None:
                return
            if not job.cancelled:
                self._assign(job, idle)

    def _assign(self, job: Job, idle: list[_Slot]) -> None:
        """Put ``job`` in the idle slot that shares the most with it; copy a longer prefix from any slot."""
        segs = job.segments
        total = job.n_positions
        shared = {s.seq: common_prefix(s.fed, segs) for s in self.slots}
        slot = max(idle, key=lambda s: (shared[s.seq], -s.last_used))
        donor = max(self.slots, key=lambda s: shared[s.seq])
        keep = min(shared[slot.seq], total - 1)  # at least one position is decoded again, for its logits
        if shared[donor.seq] > shared[slot.seq] and donor is not slot:
            keep = min(shared[donor.seq], total - 1)
            self.engine.seq_rm(slot.seq, 0)
            self.engine.seq_cp(donor.seq, slot.seq, keep)
            slot.fed = drop_positions(donor.fed, keep, keep_head=True)
        elif not self.engine.seq_rm(slot.seq, keep):  # a memory that cannot cut in the middle
            self.engine.seq_rm(slot.seq, 0)
            keep = 0
            slot.fed = []
        else:
            slot.fed = drop_positions(slot.fed, keep, keep_head=True)
        slot.run = _Run(job, drop_positions(segs, keep), keep)
        self.reused_positions += keep
        self.prefilled_positions += total - keep

    def _feed_audio(self, busy: list[_Slot]) -> None:
        """One chunk of one prompt's audio embeddings (a batch of embeddings holds no tokens)."""
        for slot in busy:
            run = slot.run
            if run is None or run.next_token is not None or not run.pending or not isinstance(run.pending[0], np.ndarray):
                continue
            clip = run.pending[0]
            rows = clip[run.rows_done : run.rows_done + self.prefill_chunk]
            end_of_clip = run.rows_done + len(rows) == len(clip)
            last = end_of_clip and len(run.pending) == 1
            try:
                self.engine.decode_embeddings(rows, self.engine.n_past(slot.seq), slot.seq, last)
            except LlasmError as exc:
                self._fail(slot, exc)
                return
            run.rows_done += len(rows)
            if end_of_clip:
                slot.fed.append(clip)
                run.pending.pop(0)
                run.rows_done = 0
            if last:
                self._sample(slot, self.engine.logits(len(rows) - 1))
            return

    def _feed_tokens(self, busy: list[_Slot]) -> None:
        """One batch: the next token of every answering sequence, then prompt tokens while room is left."""
        work: list[tuple[_Slot, list[int], bool, bool]] = []  # (slot, tokens, wants logits, is prompt)
        for slot in busy:
            if slot.run is not None and slot.run.next_token is not None:
                work.append((slot, [slot.run.next_token], True, False))
        budget = min(self.engine.n_batch - len(work), self.prefill_chunk)
        for slot in busy:
            run = slot.run
            if budget <= 0:
                break
            if run is None or run.next_token is not None or not run.pending or isinstance(run.pending[0], np.ndarray):
                continue
            seg = run.pending[0]
            take = list(seg[:budget])
            last = len(take) == len(seg) and len(run.pending) == 1
            work.append((slot, take, last, True))
            budget -= len(take)
        if not work:
            return
        entries = []
        for slot, toks, want, _ in work:
            base = self.engine.n_past(slot.seq)
            entries += [(t, base + j, slot.seq, want and j == len(toks) - 1) for j, t in enumerate(toks)]
        try:
            self.engine.decode_tokens(entries)
        except LlasmError as exc:
            for slot, *_ in work:
                self._fail(slot, exc)
            return
        i = 0
        for slot, toks, want, is_prompt in work:
            run = slot.run
            i += len(toks)
            if slot.fed and not isinstance(slot.fed[-1], np.ndarray):
                slot.fed[-1].extend(toks)  # fed's lists are its own (slices and copies, never a job's)
            else:
                slot.fed.append(list(toks))
            if is_prompt:
                rest = run.pending[0][len(toks) :]
                if len(rest):
                    run.pending[0] = rest
                else:
                    run.pending.pop(0)
            else:
                run.next_token = None
            if want:
                self._sample(slot, self.engine.logits(i - 1))

    def _sample(self, slot: _Slot, logits: np.ndarray) -> None:
        run = slot.run
        job = run.job
        if not np.isfinite(logits).all():
            self._fail(slot, ModelFileError(
                "the model computed NaN or infinite scores: its weights are probably corrupt "
                "(re-download or re-export the model)"))
            return
        tok = run.sampler(logits)
        if not run.tokens:
            run.first_token_s = time.perf_counter() - job.submitted
        if self.vocab.is_eog(tok) and not job.sampling.ignore_eos:
            self._finish(slot, "stop")
            return
        run.tokens.append(tok)
        if run.say(run.stream.push(self.vocab.piece(tok))):
            self._finish(slot, "stop", by_string=True)
        elif len(run.tokens) >= job.max_tokens or self.engine.n_past(slot.seq) >= self.n_ctx_seq:
            self._finish(slot, "length")
        else:
            run.next_token = tok

    def _finish(self, slot: _Slot, reason: str, by_string: bool = False) -> None:
        run = slot.run
        if not by_string:
            tail = run.stream.flush()
            by_string = bool(tail) and run.say(tail)
            if not by_string:
                rest = run.stops.flush()
                if rest:
                    run.text.append(rest)
                    _emit(run.job, Text(rest))
        total = run.job.n_positions
        _emit(run.job, Finished(
            "stop" if by_string else reason, total, run.cached, len(run.tokens), "".join(run.text),
            list(run.tokens), by_string, run.first_token_s,
        ))
        self.served += 1
        self._durations.append(time.perf_counter() - run.job.submitted)
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        """The slot is free; its sequence keeps the complete segments it holds (for the next prefix)."""
        slot.run = None
        slot.last_used = time.monotonic()
        n = slot.fed_len
        if self.engine.n_past(slot.seq) > n and not self.engine.seq_rm(slot.seq, n):  # a clip cut halfway
            self.engine.seq_rm(slot.seq, 0)
            slot.fed = []

    def _fail(self, slot: _Slot, exc: BaseException) -> None:
        """Tell the job, and forget everything its sequence held (a failed decode may have left part of it)."""
        if slot.run is not None:
            _emit(slot.run.job, Failed(exc))
        slot.run = None
        slot.last_used = time.monotonic()
        self.engine.seq_rm(slot.seq, 0)
        slot.fed = []
