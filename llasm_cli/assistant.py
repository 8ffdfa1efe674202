"""One loaded model answering questions: bundle -> engine + tower -> prompt -> streamed answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, audio_token_count, split_windows
from .bundle import Bundle, check_widths, load_bundle, validate_llm
from .chat import DEFAULT_TEMPLATE, Message, prompt_pieces, render, segments, user_content
from .engine import Engine, Sampler, Sampling, TextStream
from .towers import AudioTower, open_tower


@dataclass
class TurnStats:
    """Timings of one answer, in milliseconds unless named otherwise."""

    audio_seconds: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # end of input -> first answer token (encode + prefill + 1st sample)
    prompt_tokens: int = 0
    answer_tokens: int = 0
    decode_tokens_per_s: float = 0.0

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


class Assistant:
    """Loads a bundle once; answers any number of single-turn questions."""

    def __init__(
        self, model: str | Path | Bundle, backend: str = "auto", llm_variant: str | None = None,
        tower_variant: str | None = None, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
    ) -> None:
        self.bundle = model if isinstance(model, Bundle) else load_bundle(model)
        m = self.bundle.manifest
        llm_path = self.bundle.llm_path(llm_variant)
        info = validate_llm(llm_path)  # llama.cpp aborts the process on a malformed file
        arch = info.fields["general.architecture"]
        check_widths(m.llm_dim, int(info.fields[f"{arch}.embedding_length"]), "manifest")
        # the f32 variant is the exact reference: f32 KV cache, no (F16-rounding) flash attention
        self.engine = Engine(
            llm_path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, exact=llm_variant == "f32"
        )
        self._tower: AudioTower | None = None
        if tower_variant is None and llm_variant in m.tower_files:
            tower_variant = llm_variant  # same precision for both halves unless told otherwise
        self._tower_args = (backend, tower_variant, n_threads, llm_variant == "f32")
        self.audio_start = self.engine.token_id(m.audio_start)
        self.audio_end = self.engine.token_id(m.audio_end)
        self.template = self.engine.meta("tokenizer.chat_template") or DEFAULT_TEMPLATE
        self.system_prompt = m.system_prompt
        self.stats = TurnStats()
        self.engine.warmup()

    @property
    def tower(self) -> AudioTower:
        """Opened on first use, so text-only questions never load the audio encoder."""
        if self._tower is None:
            backend, variant, threads, exact = self._tower_args
            self._tower = open_tower(self.bundle, backend, self.engine, variant, threads, exact=exact)
        return self._tower

    def warmup_tower(self) -> None:
        """Encode a moment of silence once, so the first real turn does not pay for graph set-up."""
        self.tower.encode(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
        self.tower.encode_calls = 0

    def audio_positions(self, n_samples: int) -> int:
        """Sequence positions a clip of ``n_samples`` takes (its embeddings and the two markers),
        known from the manifest before anything is encoded."""
        m = self.bundle.manifest
        windows = split_windows(np.zeros(n_samples, dtype=np.uint8))
        if m.adaptor == "llasm-v1":
            return 2 + m.tokens_per_window * len(windows)
        return 2 + sum(audio_token_count(w.size, m.stack_factor) for w in windows)

    def default_sampling(self) -> Sampling:
        """The bundle's sampling settings (temperature), for callers that set none."""
        return Sampling(temperature=self.bundle.manifest.temperature)

    def messages(self, audio_embd: np.ndarray | None, text: str | None, after: str | None, system: str | None) -> list[Message]:
        system = self.system_prompt if system is None else system
        msgs = [Message.of("system", [system])] if system else []
        clips = [audio_embd] if audio_embd is not None else []
        msgs.append(Message.of("user", user_content(text, audio_embd is not None, after), clips))
        return msgs

    def render(self, msgs: list[Message], add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat template spells it (for display and cascades)."""
        return render(self.template, msgs, bos_token="", eos_token=self.engine.eos_text,
                      add_generation_prompt=add_generation_prompt)

    def prompt(self, msgs: list[Message], add_generation_prompt: bool = True) -> list:
        """Token/embedding segments of a whole conversation, BOS included."""
        pieces = prompt_pieces(self.template, msgs, self.engine.eos_text, add_generation_prompt)
        clips = [c for m in msgs for c in m.clips]
        return segments(self.engine, pieces, clips, self.audio_start, self.audio_end, self.engine.add_bos)

    def ask(
        self, audio: np.ndarray | None = None, text: str | None = None, after: str | None = None,
        system: str | None = None, sampling: Sampling | None = None, max_tokens: int | None = None,
    ) -> Iterator[str]:
        """Stream the answer to one question (speech, text, or both): a conversation of one turn.

        The KV cache keeps what the previous question shared with this one (system prompt,
        template), so only the new part is prefilled.
        """
        from .conversation import Conversation

        conv = Conversation(self, system=system)
        conv.add_user(audio, text=text, after=after)
        self.stats = conv.stats
        yield from conv.respond(sampling, max_tokens)

    def stream(
        self, logits: np.ndarray, sampler: Sampler, max_tokens: int, t0: float, st: TurnStats,
        tokens: list[int] | None = None,
    ) -> Iterator[str]:
        """Generate and yield text pieces, timing against ``t0`` into ``st``; ids go to ``tokens``."""
        tokens = [] if tokens is None else tokens
        stream = TextStream()
        t_first = None
        try:
            for tok in self.engine.generate(logits, sampler, max_tokens):
                if t_first is None:
                    t_first = time.perf_counter()
                    st.first_token_ms = (t_first - t0) * 1e3
                tokens.append(tok)
                piece = stream.push(self.engine.piece(tok))
                if piece:
                    yield piece
            tail = stream.flush()
            if tail:
                yield tail
        finally:
            st.answer_tokens = len(tokens)
            if t_first is not None and len(tokens) > 1:
                st.decode_tokens_per_s = (len(tokens) - 1) / max(time.perf_counter() - t_first, 1e-9)

    def greedy_tokens(self, segs: list, max_tokens: int) -> list[int]:
        """Greedy token ids for prepared segments (what the parity tests compare)."""
        self.engine.reset()
        logits = self.engine.eval(segs)
        return list(self.engine.generate(logits, Sampler(Sampling(temperature=0.0)), max_tokens))

    def close(self) -> None:
        if self._tower is not None:
            self._tower.close()
        self.engine.close()
