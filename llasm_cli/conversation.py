"""A multi-turn conversation whose state lives in the llama.cpp KV cache.

Each turn appends only its own tokens and embeddings: audio is encoded once, when the user
says it, and earlier turns are never prefilled again, unless the context is full (then the
oldest turns are dropped and what is left is prefilled once) or the chat template cannot be
extended (then the whole history is prefilled from the cached embeddings).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assistant import Assistant, TurnStats
from .audio import SAMPLE_RATE
from .chat import Message, user_content
from .engine import Sampler, Sampling
from .errors import ContextOverflowError, LlasmError


@dataclass
class Turn:
    """A user turn with the raw audio kept for /save (embeddings live in ``message.clips``)."""

    message: Message
    audio: np.ndarray | None = None
    typed: str = ""


@dataclass
class Conversation:
    """History + KV cache bookkeeping for one chat."""

    bot: Assistant
    system: str | None = None
    reserve: int = 256  # positions kept free for the answer
    turns: list[Turn] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    kv_segments: list = field(default_factory=list)  # exactly what the KV cache holds, in order
    stats: TurnStats = field(default_factory=TurnStats)
    prefilled_from_scratch: int = 0  # times the whole history had to be prefilled

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = self.bot.system_prompt
        self._kv_text = ""  # rendered template text the KV cache corresponds to
        self._kv_clips = 0  # clips already in the KV cache

    # --- history --------------------------------------------------------------------

    def messages(self) -> list[Message]:
        sys_msg = [Message("system", self.system)] if self.system else []
        return sys_msg + [t.message for t in self.turns]

    def add_user(self, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None) -> Turn:
        """Record a user turn; its audio is encoded now, once."""
        if audio is None and not (text or after):
            raise LlasmError("an empty turn: say something or type something")
        t0 = time.perf_counter()
        clips = [self.bot.tower.encode(audio)] if audio is not None else []
        self.stats = TurnStats(audio_seconds=0.0 if audio is None else audio.size / SAMPLE_RATE)
        self.stats.encode_ms = (time.perf_counter() - t0) * 1e3
        msg = Message("user", user_content(text, audio is not None, after), clips)
        turn = Turn(msg, audio, " ".join(p for p in (text, after) if p))
        self.turns.append(turn)
        return turn

    def reset(self) -> None:
        self.turns.clear()
        self._forget_kv()

    def set_system(self, text: str) -> None:
        self.system = text
        self._forget_kv()  # the system prompt heads the sequence: everything after it changes

    def _forget_kv(self) -> None:
        self.bot.engine.reset()
        self.kv_segments.clear()
        self._kv_text, self._kv_clips = "", 0

    # --- prefill --------------------------------------------------------------------

    def _render(self, msgs: list[Message], gen: bool) -> str:
        return self.bot.render(msgs, add_generation_prompt=gen)

    def _pending_segments(self) -> list:
        """Segments that bring the KV cache from its current text to the full prompt."""
        msgs = self.messages()
        full = self._render(msgs, gen=True)
        clips = [c for m in msgs for c in m.clips]
        engine = self.bot.engine
        if self._kv_text and full.startswith(self._kv_text):
            return self.bot.segments(full[len(self._kv_text):], clips[self._kv_clips:], bos=False)
        if self._kv_text:
            self.prefilled_from_scratch += 1
        self._forget_kv()
        return self.bot.segments(full, clips, bos=engine.add_bos)

    def _fit(self) -> list:
        """Pending segments, dropping the oldest turns (and re-prefilling once) if they do not fit."""
        engine = self.bot.engine
        segs = self._pending_segments()
        dropped = 0
        while engine.n_past + sum(len(s) for s in segs) + self.reserve > engine.n_ctx:
            if len(self.turns) <= 1:
                raise ContextOverflowError(
                    f"this turn needs {sum(len(s) for s in segs)} positions but the context holds "
                    f"{engine.n_ctx}; use a shorter recording or a larger --ctx"
                )
            # drop the oldest user turn and the answer that followed it
            cut = next((i for i in range(1, len(self.turns)) if self.turns[i].message.role == "user"), len(self.turns) - 1)
            del self.turns[:cut]
            dropped += cut
            self._forget_kv()
            segs = self._pending_segments()
        if dropped:
            self.notices.append(f"context full: dropped the {dropped} oldest message(s)")
        return segs

    # --- answering ------------------------------------------------------------------

    def prefill(self) -> np.ndarray:
        """Feed what the KV cache lacks for the pending turn; returns the next-token logits."""
        engine, st = self.bot.engine, self.stats
        self._t0 = time.perf_counter()
        segs = self._fit()
        logits = engine.eval(segs)
        self.kv_segments += segs
        msgs = self.messages()
        self._kv_text = self._render(msgs, gen=True)
        self._kv_clips = sum(len(m.clips) for m in msgs)
        st.prompt_tokens = sum(len(s) for s in segs)
        st.prefill_ms = (time.perf_counter() - self._t0) * 1e3
        return logits

    def respond(self, sampling: Sampling | None = None, max_tokens: int | None = None) -> Iterator[str]:
        """Prefill the new turn and stream the answer; an interrupted answer is kept as said."""
        m = self.bot.bundle.manifest
        sampling = sampling or Sampling(temperature=m.temperature)
        max_tokens = max_tokens or m.max_tokens
        st = self.stats
        logits = self.prefill()
        answer_tokens: list[int] = []
        # first token counted from the start of encoding, as Assistant.ask does
        t0 = self._t0 - st.encode_ms / 1e3
        try:
            yield from self.bot.stream(logits, Sampler(sampling), max_tokens, t0, st, answer_tokens)
        finally:
            self._close_answer(answer_tokens)

    def _close_answer(self, tokens: list[int]) -> None:
        """Record the answer; the KV cache holds its tokens (the last one not yet evaluated)."""
        engine = self.bot.engine
        fed = sum(len(s) for s in self.kv_segments)
        if tokens and engine.n_past == fed + len(tokens) - 1 and engine.n_past < engine.n_ctx:
            engine.eval_tokens([tokens[-1]], logits=False)  # an interrupted generate() had not fed it
        self.kv_segments.append(list(tokens))
        text = engine.detokenize(tokens)
        prompt_text = self._kv_text
        self.turns.append(Turn(Message("assistant", text.strip())))
        closed = self._render(self.messages(), gen=False)
        content_at = closed.find(text.strip(), len(prompt_text)) if closed.startswith(prompt_text) else -1
        if content_at < 0:
            self._kv_text = "\0"  # unknown: the next turn prefills from scratch
            return
        # KV text = prompt + the answer as rendered up to the end of its content; the template's
        # closing (e.g. "</s>\n") is still to be fed and arrives with the next turn's suffix.
        self._kv_text = closed[: content_at + len(text.strip())]

    # --- saving ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON, and each spoken clip as a WAV file beside it."""
        import soundfile as sf

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clip_dir = path.with_suffix("")
        records = []
        for i, turn in enumerate(self.turns):
            rec: dict = {"role": turn.message.role, "content": turn.message.content}
            if turn.audio is not None:
                clip_dir.mkdir(exist_ok=True)
                wav = clip_dir / f"turn{i:03d}.wav"
                sf.write(wav, turn.audio, SAMPLE_RATE)
                rec["audio"] = str(wav.relative_to(path.parent))
                rec["audio_seconds"] = round(turn.audio.size / SAMPLE_RATE, 3)
            records.append(rec)
        data = {"model": self.bot.bundle.manifest.name, "system": self.system, "turns": records}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path
