"""Conversations: a chat of many turns, and a one-shot question (a chat of one turn).

Each turn the conversation describes the whole prompt (system prompt, every turn, the new one)
and the engine keeps the longest prefix it already holds: audio is encoded once, when the user
says it, and earlier turns are never prefilled again. An assistant answer goes into the prompt
as the very tokens that were generated, so the prefix still matches after it. When the context
is full the oldest turns are dropped (and what is left is prefilled once). A turn interrupted
while it is encoded or prefilled leaves no trace: the turn is removed and the engine has
already taken its positions back out of the cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .assistant import Assistant
from .audio import SAMPLE_RATE
from .engine import Sampler, Sampling, TextStream
from .errors import ContextOverflowError, LlasmError
from .prompt import Message, user_content
from .towers import TowerBackend


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
    decode_tokens_per_s: float = 0.0

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
    reserve: int = 256  # positions kept free for the answer
    turns: list[Turn] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    stats: TurnStats = field(default_factory=TurnStats)
    prefilled_from_scratch: int = 0  # turns whose prefill evaluated again positions the cache had held

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

    def reset(self) -> None:
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

    def _prompt(self) -> list:
        return self.bot.prompt(self.messages())

    def _fit(self) -> list:
        """The prompt's segments, dropping the oldest turns if they do not fit with the reserve."""
        n_ctx = self.bot.engine.n_ctx
        segs = self._prompt()
        dropped = 0
        while sum(len(s) for s in segs) + self.reserve > n_ctx:
            if len(self.turns) <= 1:
                raise ContextOverflowError(
                    f"this turn needs {sum(len(s) for s in segs)} positions (+{self.reserve} for the answer) but the "
                    f"context holds {n_ctx}; use a shorter recording or a larger --ctx"
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
        st = self.stats
        logits = self.prefill()
        answer: list[int] = []
        t0 = self._t0 - st.encode_ms / 1e3  # first token counted from the start of encoding
        try:
            yield from self._stream(logits, Sampler(sampling), max_tokens, t0, answer)
        finally:
            text = self.bot.engine.detokenize(answer).strip()
            self.turns.append(Turn(Message.of("assistant", [text], tokens=list(answer))))

    def _stream(self, logits: np.ndarray, sampler: Sampler, max_tokens: int, t0: float, tokens: list[int]) -> Iterator[str]:
        """Generate and yield text pieces, timed against ``t0``; the ids go to ``tokens``."""
        engine, st = self.bot.engine, self.stats
        text = TextStream()
        t_first = None
        try:
            for tok in engine.generate(logits, sampler, max_tokens):
                if t_first is None:
                    t_first = time.perf_counter()
                    st.first_token_ms = (t_first - t0) * 1e3
                tokens.append(tok)
                piece = text.push(engine.piece(tok))
                if piece:
                    yield piece
            tail = text.flush()
            if tail:
                yield tail
        finally:
            st.answer_tokens = len(tokens)
            if t_first is not None and len(tokens) > 1:
                st.decode_tokens_per_s = (len(tokens) - 1) / max(time.perf_counter() - t_first, 1e-9)

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
                sf.write(buf, turn.audio, SAMPLE_RATE, format="WAV")
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
