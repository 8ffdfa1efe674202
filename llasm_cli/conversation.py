"""Conversations: a chat of many turns, and a one-shot question (a chat of one turn).

Each turn the conversation describes the whole prompt (system prompt, every turn, the new one)
and the engine keeps the longest prefix it already holds: audio is encoded once, when the user
says it, and earlier turns are never prefilled again. An assistant answer goes into the prompt
as the very tokens that were generated, so the prefix still matches after it. When the context
is full the oldest turns are dropped (and what is left is prefilled once). A turn interrupted
while it is encoded or prefilled leaves no trace: the turn is removed and the engine has
already taken its positions back out of the cache.

A spoken turn can also be streamed (``begin_audio``): the template text before the audio is
prefilled at once, each chunk of speech is encoded and prefilled as soon as it has arrived, and at
the end of speech only the last chunk, the end of the audio span and the template text after it
remain, in one llama_decode. The finished turn is in the history and the cache exactly as if the
whole clip had been added with ``add_user`` and prefilled; a cancelled one leaves no trace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .assistant import DEFAULT_CTX, Assistant
from .audio import SAMPLE_RATE
from .engine import Sampler, Sampling, TextStream
from .errors import AudioFileError, ContextOverflowError, LlasmError
from .prompt import Message, recent_exchanges, user_content
from .towers import ChunkStream, TowerBackend


ANSWER_RESERVE = 256  # positions a conversation keeps free for the answer


@dataclass
class TurnStats:
    """Timings of one answer, in milliseconds unless named otherwise."""

    audio_seconds: float = 0.0
    backend: str | None = None  # the audio tower backend that encoded this turn's audio (onnx, torch, ggml)
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # end of input -> first answer token (encode + prefill + 1st sample)
    prompt_tokens: int = 0  # positions prefilled for this turn (what the cache already held is not counted)
    answer_tokens: int = 0
    decode_tokens_per_s: float | None = None  # None: no token was decoded after the first (nothing to time)
    decode_ms_per_token: float | None = None  # the same rate as time per token: decode + sampling
    # a streamed turn (begin_audio): work done while the user still spoke; the fields above are then
    # what remained after the end of speech, and first_token_ms is counted from the end of speech
    streamed: bool = False
    early_audio_seconds: float = 0.0  # audio whose embeddings were in the cache before the end of speech
    early_positions: int = 0  # positions prefilled before the end of speech (template text + audio)
    early_ms: float = 0.0  # encode + prefill time spent while the user spoke
    whole_at_pause: bool = False  # a streamed turn encoded whole, unpadded, at the pause before its end

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Turn:
    """A message with the raw audio kept for /save (embeddings live in ``message.clips``)."""

    message: Message
    audio: np.ndarray | None = None


@dataclass
class Conversation:
    """The history of one chat, and the answers to it."""

    bot: Assistant
    system: str | None = None
    tower: TowerBackend | None = None  # the audio encoder to use; default: the bot's
    reserve: int = ANSWER_RESERVE  # positions kept free for the answer
    turns: list[Turn] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    stats: TurnStats = field(default_factory=TurnStats)
    prefilled_from_scratch: int = 0  # turns whose prefill evaluated again positions the cache had held
    _live: AudioTurnStream | None = field(default=None, repr=False)  # a streamed turn not yet finished
    _ready: tuple | None = field(default=None, repr=False)  # (logits, turn, n_past) a finished stream left

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = self.bot.system_prompt

    # --- history --------------------------------------------------------------------

    def messages(self) -> list[Message]:
        sys_msg = [Message.of("system", [self.system])] if self.system else []
        return sys_msg + [t.message for t in self.turns]

    def add_user(self, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None) -> Turn:
        """Record a user turn; its audio is encoded now, once."""
        if audio is None and not (text or after):
            raise LlasmError("an empty turn: say something or type something")
        self._no_live_stream()
        if audio is not None:
            self._check_fits(audio)
        t0 = time.perf_counter()
        clips = [(self.tower or self.bot.tower).encode(audio)] if audio is not None else []
        self.stats = TurnStats(audio_seconds=0.0 if audio is None else audio.size / SAMPLE_RATE)
        self.stats.encode_ms = (time.perf_counter() - t0) * 1e3
        if audio is not None:
            self.stats.backend = (self.tower or self.bot.tower).name
        turn = Turn(Message.of("user", user_content(text, audio is not None, after), clips), audio)
        self.turns.append(turn)
        return turn

    def _check_fits(self, audio: np.ndarray) -> None:
        """Refuse a recording that cannot fit the context, before spending time encoding it."""
        need = self.bot.audio_positions(audio.size)
        room = self.bot.engine.n_ctx - self.reserve
        if need > room:
            raise ContextOverflowError(
                f"this recording ({audio.size / SAMPLE_RATE:.0f} s) needs {need} positions but the context holds "
                f"{self.bot.engine.n_ctx} ({self.reserve} kept for the answer); use a shorter recording or a larger "
                f"--ctx (this model was trained for up to {self.bot.engine.n_ctx_train})"
            )

    def begin_audio(self, text: str | None = None, after: str | None = None) -> AudioTurnStream:
        """Start a spoken turn whose audio arrives while it is spoken (typed ``text`` before it and
        ``after`` it, as in ``add_user``): ``feed`` it the audio, then ``finish`` (and ``respond``)
        or ``cancel``. The template text before the audio is prefilled now."""
        self._no_live_stream()
        return AudioTurnStream(self, text, after)

    def _no_live_stream(self) -> None:
        if self._live is not None:
            raise RuntimeError("a streamed turn is still open: finish() or cancel() it first")

    def reset(self) -> None:
        if self._live is not None:
            self._live.cancel()
        self.turns.clear()
        self.bot.engine.reset()

    def set_system(self, text: str) -> None:
        """A new system prompt for the rest of the chat (the history is kept and prefilled again)."""
        self.system = text

    @property
    def kv_segments(self) -> list:
        """What the KV cache holds, in order (the engine's record)."""
        return self.bot.engine.fed

    # --- prefill --------------------------------------------------------------------

    def context_messages(self) -> list[Message]:
        """What the prompt holds: the system message and the turns, less the earlier exchanges the
        model's manifest says it was not trained to read (``history_turns``; the chat still shows
        and saves them all)."""
        return recent_exchanges(self.messages(), self.bot.bundle.manifest.history_turns)

    def _prompt(self) -> list:
        return self.bot.prompt(self.context_messages())

    def _fit(self, extra: int = 0) -> list:
        """The prompt's segments, dropping the oldest turns if they do not fit with the reserve (and
        ``extra`` positions more: audio a streamed turn will still add)."""
        n_ctx = self.bot.engine.n_ctx
        segs = self._prompt()
        dropped = 0
        while sum(len(s) for s in segs) + extra + self.reserve > n_ctx:
            if len(self.turns) <= 1:
                raise ContextOverflowError(
                    f"this turn needs {sum(len(s) for s in segs) + extra} positions (+{self.reserve} for the answer) "
                    f"but the context holds {n_ctx}; use a shorter recording or a larger --ctx"
                )
            # drop the oldest user turn and the answer that followed it
            cut = next((i for i in range(1, len(self.turns)) if self.turns[i].message.role == "user"), len(self.turns) - 1)
            del self.turns[:cut]
            dropped += cut
            segs = self._prompt()
        if dropped:
            self.notices.append(f"context full: dropped the {dropped} oldest message(s)")
        return segs

    def prefill(self) -> np.ndarray:
        """Bring the KV cache to the whole prompt; returns the next-token logits.

        On any failure or interruption the pending user turn is removed, so the chat stays as
        it was after the last complete turn.
        """
        st = self.stats
        self._t0 = time.perf_counter()
        ready, self._ready = self._ready, None
        if ready is not None and self.turns and ready[1] is self.turns[-1] and ready[2] == self.bot.engine.n_past:
            self._t_input_end = ready[3]
            return ready[0]  # a finished stream: the cache holds the whole prompt already
        self._t_input_end = self._t0 - st.encode_ms / 1e3  # the start of encoding
        self._no_live_stream()
        try:
            segs = self._fit()
            engine = self.bot.engine
            had = sum(len(s) for s in engine.fed)
            logits = engine.sync(segs)
        except BaseException:
            if self.turns and self.turns[-1].message.role == "user":
                self.turns.pop()
            raise
        if engine.reused < had:  # the cache lost positions it held: part of the history was prefilled again
            self.prefilled_from_scratch += 1
        st.prompt_tokens = sum(len(s) for s in segs) - engine.reused
        st.prefill_ms = (time.perf_counter() - self._t0) * 1e3
        return logits

    # --- answering ------------------------------------------------------------------

    def respond(self, sampling: Sampling | None = None, max_tokens: int | None = None) -> Iterator[str]:
        """Prefill the new turn and stream the answer; an interrupted answer is kept as said."""
        sampling = sampling or self.bot.default_sampling()
        max_tokens = max_tokens or self.bot.bundle.manifest.max_tokens
        logits = self.prefill()
        answer: list[int] = []
        try:  # the first token is timed from the end of speech (streamed turn) or the start of encoding
            yield from self._stream(logits, Sampler(sampling), max_tokens, self._t_input_end, answer)
        finally:
            text = self.bot.engine.detokenize(answer).strip()
            self.turns.append(Turn(Message.of("assistant", [text], tokens=list(answer))))

    def _stream(self, logits: np.ndarray, sampler: Sampler, max_tokens: int, t0: float, tokens: list[int]) -> Iterator[str]:
        """Generate and yield text pieces, timed against ``t0``; the ids go to ``tokens``."""
        engine, st = self.bot.engine, self.stats
        text = TextStream()
        t_first = t_done = None
        try:
            for tok in engine.generate(logits, sampler, max_tokens):
                if t_first is None:
                    t_first = time.perf_counter()
                    st.first_token_ms = (t_first - t0) * 1e3
                tokens.append(tok)
                piece = text.push(engine.piece(tok))
                if piece:
                    yield piece
            t_done = time.perf_counter()
            tail = text.flush()
            if tail:
                yield tail
        finally:
            st.answer_tokens = len(tokens)
            # Every token generate() yields is decoded before the next is sampled; a generation that
            # ran to its end (end-of-text or max_tokens) decoded its last token too. So the time from
            # the first token on covers one decode per token (one fewer when the reader stopped early):
            # a rate even for a one-token answer.
            steps = len(tokens) if t_done is not None else len(tokens) - 1
            if t_first is not None and steps > 0:
                ms = ((t_done or time.perf_counter()) - t_first) * 1e3 / steps
                st.decode_ms_per_token = ms
                st.decode_tokens_per_s = 1e3 / max(ms, 1e-9)

    # --- saving ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON, and each spoken clip as a WAV file beside it."""
        import io

        import soundfile as sf

        from .files import atomic_write_bytes, atomic_write_text

        path = Path(path)
        clip_dir = path.with_suffix("")
        records = []
        for i, turn in enumerate(self.turns):
            rec: dict = {"role": turn.message.role, "content": turn.message.content}
            if turn.audio is not None:
                wav = clip_dir / f"turn{i:03d}.wav"
                buf = io.BytesIO()
                sf.write(buf, turn.audio, SAMPLE_RATE, format="WAV", subtype="FLOAT")  # exactly what the model heard
                atomic_write_bytes(wav, buf.getvalue())
                rec["audio"] = str(wav.relative_to(path.parent))
                rec["audio_seconds"] = round(turn.audio.size / SAMPLE_RATE, 3)
            records.append(rec)
        data = {"model": self.bot.bundle.manifest.name, "system": self.system, "turns": records}
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return path


class AudioTurnStream:
    """A user turn encoded and prefilled while it is spoken (``Conversation.begin_audio``).

    ``feed(samples)`` as audio arrives: a chunked model's completed chunks are encoded and their
    embeddings prefilled right away (any other model's audio waits for ``finish``). ``finish()``
    encodes what is left and evaluates it with the end of the audio span and the template text
    after it in one llama_decode, and returns the next-token logits (``Conversation.respond``
    then streams the answer without prefilling anything). ``cancel()`` takes the turn back: the
    history is as it was, and the cache holds what it held before (less anything this turn's
    prompt did not share with it). Any error in ``feed`` or ``finish`` cancels the turn first.

    ``speculate()`` is for the pause before an end of speech is certain (the chat's endpointer
    waits 0.6 s of silence): it encodes what ``finish`` would (the whole clip, or a chunked model's
    last partial chunk) and prefills it with the template after it then, so ``finish`` has nothing
    left to do if no more audio comes; audio that does come takes it back out of the cache first.
    Given a time budget (the rest of that silence), a chunked model also trained on whole clips gets
    the whole clip encoded unpadded in place of its chunks when, judged by what the chunks cost,
    that fits: every position then hears the whole clip, as in a file (the built-in model: 93%
    held-out on whole clips, 78% streamed), at no cost in latency.

    The sequence equals, position by position, what ``Assistant.prompt`` renders for the finished
    turn: the template is rendered with a stand-in clip (a row of NaN that cannot occur in real
    embeddings) and cut where that clip sits.
    """

    def __init__(self, conv: Conversation, text: str | None, after: str | None) -> None:
        self.conv = conv
        self.tower = conv.tower or conv.bot.tower
        self.chunks: ChunkStream | None = self.tower.stream() if self.tower.chunked else None
        engine = conv.bot.engine
        self.samples: list[np.ndarray] = []
        self.n = 0  # samples fed
        self.rows: list[np.ndarray] = []  # embeddings prefilled so far, chunk by chunk
        self.closed = False
        # speculate(): (position to roll back to, its audio rows, logits, whether they replace the chunks)
        self._spec: tuple[int, np.ndarray, np.ndarray, bool] | None = None
        self._chunk_ms = [0.0, 0.0]  # encode, prefill of the chunks so far (speculate's whole-clip estimate)
        self._turns_before = list(conv.turns)
        self._notices_before = len(conv.notices)
        stand_in = np.full((1, engine.n_embd), np.nan, dtype=np.float32)
        self.turn = Turn(Message.of("user", user_content(text, True, after), [stand_in]))
        conv.stats = TurnStats(streamed=True, backend=self.tower.name)
        conv.turns.append(self.turn)
        conv._live, conv._ready = self, None
        self._early_ms = 0.0
        t0 = time.perf_counter()
        try:
            self._layout(0)
            self._kept = engine.n_past  # refined by the sync below
            self._sync()
        except BaseException:
            self.cancel()
            raise
        self._early_ms += (time.perf_counter() - t0) * 1e3

    # --- the prompt around the audio -------------------------------------------------

    def _layout(self, audio_rows: int) -> None:
        """Render the prompt (dropping the oldest turns if ``audio_rows`` of audio would not fit) and
        cut it at the stand-in clip: ``prefix`` (segments up to the first audio row: the template
        text, ``<au_start>`` or the learned start row), ``tail_rows`` (the learned end row, if any)
        and ``suffix`` (token ids after the audio: ``<au_end>``, the rest of the template)."""
        segs = self.conv._fit(extra=max(0, audio_rows - 1))  # the stand-in is one row of them
        slots = [i for i, seg in enumerate(segs) if isinstance(seg, np.ndarray) and np.isnan(seg).any()]
        if len(slots) != 1:
            raise LlasmError("the chat template did not place this turn's audio exactly once")
        i = slots[0]
        nan = np.flatnonzero(np.isnan(segs[i]).any(axis=1))
        head, self.tail_rows = segs[i][: nan[0]], segs[i][nan[-1] + 1 :]
        self.before = segs[:i]  # the prompt's own segments before this turn's clip
        self.prefix = self.before + ([head] if len(head) else [])
        if any(isinstance(seg, np.ndarray) for seg in segs[i + 1 :]):
            raise LlasmError("the chat template put audio after this turn's audio")
        self.suffix = [int(t) for seg in segs[i + 1 :] for t in seg]
        self.conv.bot.engine.token_rows(self.suffix)  # read now, while the user speaks, for finish's one decode

    def _sync(self) -> None:
        """Bring the cache to the prefix and the rows so far, keeping what it already holds of them."""
        engine = self.conv.bot.engine
        engine.sync(self.prefix + self.rows, logits=False)
        self._kept = min(self._kept, engine.reused)

    def _room(self, new_rows: int) -> None:
        """Make sure ``new_rows`` more audio rows fit with the rest of the prompt and the reserve:
        drop the oldest turns and prefill what is left again if that is what it takes, or refuse."""
        conv, engine = self.conv, self.conv.bot.engine
        need = engine.n_past + new_rows + len(self.tail_rows) + len(self.suffix) + conv.reserve
        if need <= engine.n_ctx:
            return
        rows = sum(len(r) for r in self.rows) + new_rows
        alone = conv.bot.prompt([m for m in conv.messages() if m.role == "system"] + [self.turn.message])
        if sum(len(seg) for seg in alone) + rows - 1 + conv.reserve > engine.n_ctx:
            raise ContextOverflowError(  # not even without the history: refuse before dropping any of it
                f"this recording ({self.n / SAMPLE_RATE:.0f} s so far) needs more positions than the context holds "
                f"({engine.n_ctx}, {conv.reserve} kept for the answer); speak for less time or use a larger --ctx"
            )
        self._layout(rows)
        self._sync()

    # --- audio in ---------------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> int:
        """The next piece of the turn's audio (16 kHz mono float32); returns the embedding rows it
        put in the cache (0 until a chunk completes; always 0 for a model that is not chunked)."""
        self._open()
        try:
            x = np.array(samples, dtype=np.float32).reshape(-1)  # our copy: the caller may reuse its buffer
            if x.size and self._spec is not None:  # the user went on speaking: take the guess back out
                t0 = time.perf_counter()
                mark, _, _, whole = self._spec
                self.conv.bot.engine.truncate(mark)
                self._spec = None
                if whole:  # the chunks' rows went out with it: back in, for the chunks still to come
                    self._sync()
                self._early_ms += (time.perf_counter() - t0) * 1e3
            self._check_length(self.n + x.size)
            self.samples.append(x)
            self.n += x.size
            if self.chunks is None or not x.size:
                return 0
            t0 = time.perf_counter()
            emb = self.chunks.push(x)
            t1 = time.perf_counter()
            if len(emb):
                self._room(len(emb))
                self.conv.bot.engine.eval([emb], logits=False)
                self.rows.append(emb)
                t2 = time.perf_counter()
                self._chunk_ms[0] += (t1 - t0) * 1e3
                self._chunk_ms[1] += (t2 - t1) * 1e3
            self._early_ms += (time.perf_counter() - t0) * 1e3
            return len(emb)
        except BaseException:
            self.cancel()
            raise

    def _check_length(self, n_samples: int) -> None:
        """Refuse audio longer than the whole context could hold, whatever the history."""
        conv = self.conv
        need = 2 + self.tower.positions(n_samples)
        room = conv.bot.engine.n_ctx - conv.reserve
        if need > room:
            raise ContextOverflowError(
                f"this recording ({n_samples / SAMPLE_RATE:.0f} s so far) needs {need} positions but the context "
                f"holds {conv.bot.engine.n_ctx} ({conv.reserve} kept for the answer); speak for less time or use a "
                f"larger --ctx"
            )

    def speculate(self, budget_ms: float = 0.0) -> bool:
        """Encode the audio so far and prefill it with the end of the audio span and the template
        text after it, as ``finish`` would, keeping the turn open (see the class). ``budget_ms``: the
        time the caller can wait, within which a whole-clip encode (and the prefill of all its rows)
        replaces the chunks if it fits. Returns whether it ran (not twice for the same audio, nor
        before any)."""
        self._open()
        if self._spec is not None or self.n == 0:
            return False
        t0 = time.perf_counter()
        engine = self.conv.bot.engine
        try:
            whole = self._whole_fits(budget_ms)
            if whole:  # unpadded, in place of the chunks (the model knows both)
                last = self.tower.encode(np.concatenate(self.samples))
                streamed = sum(len(r) for r in self.rows)
                self._room(len(last) - streamed)  # as many positions as the chunks give, by construction
                engine.truncate(engine.n_past - streamed)  # back to where the audio rows begin
            else:
                last = self.chunks.peek() if self.chunks is not None else self.tower.encode(np.concatenate(self.samples))
                self._room(len(last))
            self._spec = (engine.n_past, last, self._close_span(last), whole)
        except BaseException:
            self.cancel()
            raise
        self._early_ms += (time.perf_counter() - t0) * 1e3
        return True

    def _whole_fits(self, budget_ms: float) -> bool:
        """Whether the whole clip, encoded unpadded and prefilled, is likely done within ``budget_ms``:
        each chunk's window also holds its context, so the chunks' encoder time over that overlap,
        plus their prefill time, is about what the whole clip costs (an overestimate: one encoder
        call and one batch instead of many)."""
        t = self.tower
        if budget_ms <= 0 or self.chunks is None or not t.unpadded or not self.rows:
            return False
        overlap = (t.chunk_seconds + t.context_seconds) / t.chunk_seconds
        encode, prefill = self._chunk_ms
        return encode / overlap + prefill <= budget_ms

    def _close_span(self, last: np.ndarray) -> np.ndarray:
        """The last audio rows, the end of the audio span and the template text after it, in one
        llama_decode; the next-token logits."""
        return self.conv.bot.engine.eval_joined(np.concatenate([last, self.tail_rows]), self.suffix)

    def finish(self) -> np.ndarray:
        """The end of speech: the last chunk, the end of the audio span and the template text after it
        in one llama_decode; returns the next-token logits (``respond`` uses them)."""
        self._open()
        conv, engine = self.conv, self.conv.bot.engine
        st = conv.stats
        t0 = time.perf_counter()
        st.early_positions = engine.n_past - self._kept
        st.early_audio_seconds = sum(len(r) for r in self.rows) * self._seconds_per_row()
        st.early_ms = self._early_ms
        try:
            if self.n == 0:
                raise AudioFileError("the audio is empty")
            audio = np.concatenate(self.samples)
            whole = False
            if self._spec is not None:  # speculate() guessed right: all of it is in the cache already
                _, last, logits, whole = self._spec
                st.early_audio_seconds = self.n / SAMPLE_RATE if self.chunks is None or whole else \
                    (sum(len(r) for r in self.rows) + len(last)) * self._seconds_per_row()
                t1 = time.perf_counter()
            else:
                last = self.chunks.finish() if self.chunks is not None else self.tower.encode(audio)
                t1 = time.perf_counter()
                self._room(len(last))
                logits = self._close_span(last)
            st.whole_at_pause = whole
            clip = np.ascontiguousarray(last if whole else np.concatenate([*self.rows, last]), dtype=np.float32)
            self.turn.message.clips[0] = clip
            self.turn.audio = audio
            # What went in must be the finished turn's prompt, position by position (regroup checks),
            # recorded as that prompt's segments so that the next turn finds it all in the common prefix.
            engine.regroup([*self.before, conv.bot.with_boundary(clip), self.suffix])
        except BaseException:
            self.cancel()
            raise
        t2 = time.perf_counter()
        self.closed = True
        conv._live = None
        conv._ready = (logits, self.turn, engine.n_past, t0)
        st.audio_seconds = self.n / SAMPLE_RATE
        st.encode_ms = (t1 - t0) * 1e3
        st.prefill_ms = (t2 - t1) * 1e3
        st.prompt_tokens = engine.n_past - self._kept
        return logits

    def _seconds_per_row(self) -> float:
        return 320 * self.tower.stack_factor / SAMPLE_RATE if self.tower.adaptor == "stack-swiglu" else 0.0

    def cancel(self) -> None:
        """Take the turn back: the history as before it, and its positions out of the cache."""
        if self.closed:
            return
        self.closed = True
        conv = self.conv
        conv.turns[:] = self._turns_before
        del conv.notices[self._notices_before :]
        conv._live, conv._ready = None, None
        engine = conv.bot.engine
        engine.truncate(min(getattr(self, "_kept", engine.n_past), engine.n_past))

    def _open(self) -> None:
        if self.closed:
            raise RuntimeError("this streamed turn is finished or cancelled")

    @property
    def seconds(self) -> float:
        """Audio fed so far."""
        return self.n / SAMPLE_RATE


def ask(
    bot: Assistant, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None,
    system: str | None = None,
) -> Conversation:
    """One question (speech, text, or both) as a conversation of one turn; ``respond()`` answers it.

    The KV cache keeps what the previous question shared with this one (system prompt,
    template), so only the new part is prefilled.
    """
    conv = Conversation(bot, system=system)
    conv.add_user(audio, text=text, after=after)
    return conv


def question_context(
    samples: np.ndarray | None, text: str | None = None, after: str | None = None, system: str | None = None,
    max_tokens: int | None = None, limit: int = DEFAULT_CTX,
) -> Callable[[Assistant], int]:
    """The ``n_ctx`` of an ``Assistant`` made for one question (``llasm ask``): the question's prompt
    and room for its answer (``max_tokens``, else the bundle's; never less than the reserve a
    conversation keeps), at most ``limit``. The KV cache holds every position from the start, so a
    context sized to the question takes that much memory, not a chat's. A question that needs more
    than ``limit`` gets ``limit``, and the errors about too long a recording say so and name --ctx."""

    def size(bot: Assistant) -> int:
        prompt = bot.prompt_positions(None if samples is None else samples.size, text, after, system)
        room = max(max_tokens or bot.bundle.manifest.max_tokens, ANSWER_RESERVE)
        return min(prompt + room, limit)

    return size


def answer(bot: Assistant, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None,
           system: str | None = None, sampling: Sampling | None = None, max_tokens: int | None = None) -> str:
    """The whole answer to one question, stripped (scripts and evaluations)."""
    return "".join(ask(bot, audio, text, after, system).respond(sampling, max_tokens)).strip()


def answer_streamed(bot: Assistant, audio: np.ndarray, text: str | None = None, sampling: Sampling | None = None,
                    max_tokens: int | None = None, block: int = SAMPLE_RATE // 25) -> str:
    """The whole answer to one spoken question fed ``block`` samples at a time (40 ms), as a
    microphone delivers it: a chunked model encodes and prefills it while it plays (evaluations of
    the path ``llasm chat --mic`` takes)."""
    conv = Conversation(bot)
    turn = conv.begin_audio(text=text)
    for i in range(0, audio.size, block):
        turn.feed(audio[i : i + block])
    turn.finish()
    return "".join(conv.respond(sampling, max_tokens)).strip()
