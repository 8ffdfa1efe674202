"""A spoken turn encoded and prefilled while it is spoken (``Conversation.begin_audio``).

The template text before the audio is prefilled at once, each chunk of speech is encoded and
prefilled as soon as it has arrived, and at the end of speech only the last chunk, the end of the
audio span and the template text after it remain, in one llama_decode. The finished turn is in the
history and the cache exactly as if the whole clip had been added with ``add_user`` and prefilled;
a cancelled one leaves no trace.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE, samples_per_embedding
from llasm_cli.errors import AudioFileError, ContextOverflowError, LlasmError
from llasm_cli.prompt import Message, user_content
from llasm_cli.towers import ChunkStream
from llasm_cli.turn_end import end_ids, end_probability, marks_after_words
from llasm_cli.turns import Turn, TurnStats, fit_prompt

if TYPE_CHECKING:
    from llasm_cli.conversation import Conversation


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
        # P(the template's text after the turn comes next) when speculate() last ran: the LLM's own judgement of
        # whether the words so far end the turn (a transcript-hearing model with nothing typed after the audio)
        self.end_probability: float | None = None
        self._scores_end = bool(conv.bot.hears_words) and not after
        self._turns_before = list(conv.turns)
        self._notices_before = len(conv.notices)
        stand_in = np.full((1, engine.n_embd), np.nan, dtype=np.float32)
        self.turn = Turn(Message.of("user", user_content(text, True, after), [stand_in]))
        conv.stats = TurnStats(streamed=True, backend=self.tower.name)
        conv.turns.append(self.turn)
        conv.live, conv.ready = self, None
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
        conv = self.conv  # the stand-in is one row of the audio
        segs = fit_prompt(conv.bot, conv.turns, conv.system or "", conv.reserve, conv.notices, max(0, audio_rows - 1))
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
                self._take_back()
            n = self.n + x.size  # too long for the whole context, whatever the history: refused
            self.conv.check_recording(self.conv.bot.audio_positions(n), n, so_far=True)
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
            self._spec = (engine.n_past, last, self._close_span(last, probe=self._scores_end), whole)
        except BaseException:
            self.cancel()
            raise
        self._early_ms += (time.perf_counter() - t0) * 1e3
        return True

    def reconsider(self) -> bool:
        """The turn waits out the rest of a pause after ``speculate``: a tower that hears words has the LLM choose
        among Whisper's n-best meanwhile (towers/transcript.py ``second_opinion``). Once the choice is made, if its
        words differ from those speculated on, the speculation is made again with them. Whether it was."""
        ask = getattr(self.chunks, "second_opinion", None)
        if self._spec is None or self._spec[3] or ask is None or not ask():
            return False
        self._take_back()
        return self.speculate()

    def _take_back(self) -> None:
        """Take the speculation back out of the cache (and the end-of-turn probability with it)."""
        t0 = time.perf_counter()
        mark, _, _, whole = self._spec
        self.conv.bot.engine.truncate(mark)
        self._spec, self.end_probability = None, None
        if whole:  # the chunks' rows went out with it: back in, for the chunks still to come
            self._sync()
        self._early_ms += (time.perf_counter() - t0) * 1e3

    def prefetch(self) -> None:
        """The speaker has just gone quiet: a tower that hears words starts decoding the rest now, for the
        ``speculate`` that follows if the pause lasts (towers/transcript.py's prefetch)."""
        if self.chunks is not None and self._spec is None:
            self.chunks.prefetch()

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

    def _close_span(self, last: np.ndarray, probe: bool = False) -> np.ndarray:
        """The last audio rows, the end of the audio span and the template text after it, in one
        llama_decode; the next-token logits. ``probe``: in two, split after the last word heard, whose logits
        give ``end_probability`` (turn_end.py: that the user's turn ends there)."""
        engine = self.conv.bot.engine
        marks = self._marks_after_words() if probe and self.suffix else None
        cut = len(last) - marks if marks is not None else 0
        if cut < 1:
            return engine.eval([np.concatenate([last, self.tail_rows]), self.suffix])
        after_words = engine.eval([last[:cut]])
        self.end_probability = end_probability(after_words, end_ids(self._tokenize, self.suffix[0]))
        return engine.eval([np.concatenate([last[cut:], self.tail_rows]), self.suffix])

    def _tokenize(self, text: str) -> list[int]:
        return self.conv.bot.engine.tokenize(text, special=False)

    def _marks_after_words(self) -> int | None:
        """The transcript's rows after its last word (Whisper's punctuation), if the tower heard words."""
        heard = getattr(self.tower, "transcript", None)
        return marks_after_words(self._tokenize, heard) if heard else None

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
            st.heard = self.tower.transcript
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
        conv.live = None
        conv.ready = (logits, self.turn, engine.n_past, t0)
        st.audio_seconds = self.n / SAMPLE_RATE
        st.encode_ms = (t1 - t0) * 1e3
        st.prefill_ms = (t2 - t1) * 1e3
        st.prompt_tokens = engine.n_past - self._kept
        return logits

    def _seconds_per_row(self) -> float:
        return samples_per_embedding(self.tower.stack_factor) / SAMPLE_RATE if self.tower.adaptor == "stack-swiglu" else 0.0

    def cancel(self) -> None:
        """Take the turn back: the history as before it, and its positions out of the cache."""
        if self.closed:
            return
        self.closed = True
        conv = self.conv
        conv.turns[:] = self._turns_before
        del conv.notices[self._notices_before :]
        conv.live, conv.ready = None, None
        engine = conv.bot.engine
        engine.truncate(min(getattr(self, "_kept", engine.n_past), engine.n_past))

    def _open(self) -> None:
        if self.closed:
            raise RuntimeError("this streamed turn is finished or cancelled")

    @property
    def heard(self) -> str:
        """The words heard so far, for a model that hears words while they are spoken ('' otherwise)."""
        return self.chunks.heard if self.chunks is not None else ""

    @property
    def seconds(self) -> float:
        """Audio fed so far."""
        return self.n / SAMPLE_RATE
