"""Conversations: a chat of many turns, and a one-shot question (a chat of one turn).

Each turn the conversation describes the whole prompt (system prompt, every turn, the new one)
and the engine keeps the longest prefix it already holds: audio is encoded once, when the user
says it, and earlier turns are never prefilled again. An assistant answer goes into the prompt
as the very tokens that were generated, so the prefix still matches after it. When the context
is full the oldest turns are dropped (and what is left is prefilled once). A turn interrupted
while it is encoded or prefilled leaves no trace: the turn is removed and the engine has
already taken its positions back out of the cache.

A spoken turn can also be streamed while it is spoken (``begin_audio``; spoken_turn.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llasm_cli.assistant import ANSWER_RESERVE, Assistant
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import ContextOverflowError, LlasmError
from llasm_cli.llm.engine import Sampler, Sampling, TextStream
from llasm_cli.llm.scheduler import StopStrings
from llasm_cli.prompt import Message, user_content
from llasm_cli.spoken_turn import AudioTurnStream
from llasm_cli.towers import TowerBackend
from llasm_cli.turns import Turn, TurnStats, fit_prompt

CUT_MARK = "…"  # ends an answer the user cut in on


@dataclass
class _Answer:
    """An answer as it streams: its ids, the text pieces yielded, and whether one of the bot's stop texts ended it."""

    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    stopped: bool = False


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
    live: AudioTurnStream | None = field(default=None, repr=False)  # a streamed turn not yet finished (it sets this)
    ready: tuple | None = field(default=None, repr=False)  # (logits, turn, n_past, t_end) a finished stream left

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = self.bot.system_prompt

    # --- history --------------------------------------------------------------------

    def messages(self) -> list[Message]:
        """The system message and every turn, as the chat shows and saves them."""
        sys_msg = [Message.of("system", [self.system])] if self.system else []
        return sys_msg + [t.message for t in self.turns]

    def add_user(self, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None) -> Turn:
        """Record a user turn; its audio is encoded now, once."""
        if audio is None and not (text or after):
            raise LlasmError("an empty turn: say something or type something")
        self._no_live_stream()
        if audio is not None:
            self.check_recording(self.bot.audio_positions(audio.size), audio.size)
        t0 = time.perf_counter()
        clips = [(self.tower or self.bot.tower).encode(audio)] if audio is not None else []
        self.stats = TurnStats(audio_seconds=0.0 if audio is None else audio.size / SAMPLE_RATE)
        self.stats.encode_ms = (time.perf_counter() - t0) * 1e3
        if audio is not None:
            self.stats.backend = (self.tower or self.bot.tower).name
            self.stats.heard = (self.tower or self.bot.tower).transcript
        turn = Turn(Message.of("user", user_content(text, audio is not None, after), clips), audio)
        self.turns.append(turn)
        return turn

    def check_recording(self, need: int, n_samples: int, so_far: bool = False) -> None:
        """Refuse a recording of ``n_samples`` (``so_far``: still being spoken) whose ``need`` positions do
        not fit the context beside the answer's reserve, whatever the history: before it is encoded."""
        engine = self.bot.engine
        if need > engine.n_ctx - self.reserve:
            heard = f"{n_samples / SAMPLE_RATE:.0f} s" + (" so far" if so_far else "")
            advice = "speak for less time" if so_far else "use a shorter recording"
            raise ContextOverflowError(
                f"this recording ({heard}) needs {need} positions but the context holds {engine.n_ctx} "
                f"({self.reserve} kept for the answer); {advice} or a larger --ctx (this model was trained for up "
                f"to {engine.n_ctx_train})"
            )

    def begin_audio(self, text: str | None = None, after: str | None = None) -> AudioTurnStream:
        """Start a spoken turn whose audio arrives while it is spoken (typed ``text`` before it and
        ``after`` it, as in ``add_user``): ``feed`` it the audio, then ``finish`` (and ``respond``)
        or ``cancel``. The template text before the audio is prefilled now."""
        self._no_live_stream()
        return AudioTurnStream(self, text, after)

    def _no_live_stream(self) -> None:
        if self.live is not None:
            raise RuntimeError("a streamed turn is still open: finish() or cancel() it first")

    def reset(self) -> None:
        if self.live is not None:
            self.live.cancel()
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
        return self.bot.context_messages([t.message for t in self.turns], self.system or "")

    def fit(self, extra: int = 0) -> list:
        """The prompt's segments, dropping the oldest turns if they do not fit with the reserve (and
        ``extra`` positions more: audio a streamed turn will still add)."""
        return fit_prompt(self.bot, self.turns, self.system or "", self.reserve, self.notices, extra)

    def prefill(self) -> np.ndarray:
        """Bring the KV cache to the whole prompt; returns the next-token logits.

        On any failure or interruption the pending user turn is removed, so the chat stays as
        it was after the last complete turn.
        """
        st = self.stats
        self._t0 = time.perf_counter()
        ready, self.ready = self.ready, None
        if ready is not None and self.turns and ready[1] is self.turns[-1] and ready[2] == self.bot.engine.n_past:
            self._t_input_end = ready[3]
            return ready[0]  # a finished stream: the cache holds the whole prompt already
        self._t_input_end = self._t0 - st.encode_ms / 1e3  # the start of encoding
        self._no_live_stream()
        try:
            segs = self.fit()
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
        answer = _Answer()
        try:  # the first token is timed from the end of speech (streamed turn) or the start of encoding
            yield from self._stream(logits, Sampler(sampling), max_tokens, self._t_input_end, answer)
        finally:
            if answer.stopped:  # cut at a stop text: the history holds the words said, not all the ids
                self.turns.append(Turn(Message.of("assistant", ["".join(answer.pieces).strip()])))
            else:
                text = self.bot.engine.detokenize(answer.tokens).strip()
                self.turns.append(Turn(Message.of("assistant", [text], tokens=list(answer.tokens))))

    def _stream(self, logits: np.ndarray, sampler: Sampler, max_tokens: int, t0: float, answer: _Answer) -> Iterator[str]:
        """Generate and yield text pieces, timed against ``t0``, recorded in ``answer``."""
        engine, st = self.bot.engine, self.stats
        tokens, said = answer.tokens, answer.pieces
        text, stops = TextStream(), StopStrings(self.bot.stop_texts)
        t_first = t_done = None
        try:
            for tok in engine.generate(logits, sampler, max_tokens):
                if t_first is None:
                    t_first = time.perf_counter()
                    st.first_token_ms = (t_first - t0) * 1e3
                tokens.append(tok)
                piece, stopped = stops.push(text.push(engine.piece(tok)))
                if piece:
                    said.append(piece)
                    yield piece
                if stopped:
                    answer.stopped = True
                    break
            t_done = time.perf_counter()
            if not answer.stopped:
                tail = stops.push(text.flush())[0] + stops.flush()
                if tail:
                    said.append(tail)
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

    def cut_answer(self, heard: str) -> None:
        """The last answer as far as the listener heard it when they cut in (barge-in), marked as cut ("…"):
        what the next turn's prompt holds of it."""
        if self.turns and self.turns[-1].message.role == "assistant":
            self.turns[-1] = Turn(Message.of("assistant", [f"{heard.rstrip()} {CUT_MARK}".strip()]))

    # --- saving ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON, and each spoken clip as a WAV file beside it."""
        import io

        import soundfile as sf

        from llasm_cli.files import atomic_write_bytes, atomic_write_text

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
