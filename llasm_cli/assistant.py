"""One loaded model: a bundle's LLM in a llama.cpp engine, its audio tower, and its prompt format.

It turns messages into the token/embedding sequence the model reads; a ``Conversation``
(conversation.py) asks it questions. The tower can be handed in (benchmarks compare backends
on one engine); otherwise the bundle's is opened on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, audio_token_count, split_windows
from .bundle import Bundle
from .engine import Engine, Sampler, Sampling
from .gguf_check import check_widths, validate_llm
from .prompt import DEFAULT_TEMPLATE, Message, prompt_pieces, segments, user_content
from .published import PublishedPair, open_model
from .towers import TowerBackend, open_tower

DEFAULT_CTX = 4096  # positions: a chat's context, and the most a one-shot question is given unless --ctx says more


class Assistant:
    """A bundle loaded once: engine, tower and prompt format, for any number of conversations."""

    def __init__(
        self, model: str | Path | Bundle, backend: str = "auto", llm_variant: str | None = None,
        tower_variant: str | None = None, n_ctx: int | Callable[[Assistant], int] = DEFAULT_CTX,
        n_threads: int | None = None, n_gpu_layers: int = 0, tower: TowerBackend | None = None,
        stream: bool = True, one_shot: bool = False,
    ) -> None:
        """``n_ctx``: the LLM context's positions, or a function that sizes it from this assistant
        once its prompt format is known and before the context is made (``prompt_positions``).
        ``stream=False``: a model trained on whole clips as well as chunks gets each spoken turn whole
        at its end (one unpadded encode: slower for long turns, but each position hears the whole
        clip, which such a model hears better than chunks). ``one_shot``: one question and exit
        (``llasm ask``): the audio tower opens fast rather than encoding fast (``open_tower``)."""
        # a llasm bundle, or a published LLM + mmproj pair (published.py) run the same way
        self.bundle = model if isinstance(model, Bundle) else open_model(model)
        self.pair = self.bundle if isinstance(self.bundle, PublishedPair) else None
        m = self.bundle.manifest
        llm_path = self.bundle.llm_path(llm_variant)
        info = validate_llm(llm_path)  # llama.cpp aborts the process on a malformed file
        arch = info.fields["general.architecture"]
        check_widths(m.llm_dim, int(info.fields[f"{arch}.embedding_length"]), "manifest")
        self._tower = tower
        if tower_variant is None and llm_variant in m.tower_files:
            tower_variant = llm_variant  # same precision for both halves unless told otherwise
        self._tower_args = (backend, tower_variant, n_threads, llm_variant == "f32", one_shot)
        self._stream = stream

        def prompt_format(engine: Engine) -> int:
            """The vocabulary is loaded, the context not yet made: the prompt format, then its size."""
            self.engine = engine
            # the audio span's start/end: two learned rows (a published GGUF's vocabulary stays as it is),
            # or two added vocabulary tokens
            self.boundary = self.bundle.boundary_rows()
            if self.pair is not None:  # the family's marker text: no token, one, or several
                self.audio_start, self.audio_end = self.pair.marker_ids(engine)
            else:
                self.audio_start = engine.token_id(m.audio_start) if self.boundary is None else None
                self.audio_end = engine.token_id(m.audio_end) if self.boundary is None else None
            fallback = self.pair.family.template if self.pair is not None else DEFAULT_TEMPLATE
            self.template = engine.meta("tokenizer.chat_template") or fallback
            self.system_prompt = m.system_prompt
            return n_ctx(self) if callable(n_ctx) else n_ctx

        # the f32 variant is the exact reference: f32 KV cache, no (F16-rounding) flash attention
        self.engine = Engine(
            llm_path, n_ctx=prompt_format, n_threads=n_threads, n_gpu_layers=n_gpu_layers, exact=llm_variant == "f32"
        )
        self.engine.warmup()

    @property
    def tower(self) -> TowerBackend:
        """Opened on first use, so text-only questions never load the audio encoder."""
        if self._tower is None:
            backend, variant, threads, exact, one_shot = self._tower_args
            self._tower = open_tower(self.bundle, backend, self.engine, variant, threads, exact=exact, one_shot=one_shot)
            if not self._stream and self._tower.unpadded:
                self._tower.chunked = False  # whole turns, encoded unpadded when they end
        return self._tower

    def warmup_tower(self) -> None:
        """Encode a moment of silence once, so the first real turn does not pay for graph set-up."""
        self.tower.encode(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
        self.tower.encode_calls = 0

    def audio_positions(self, n_samples: int) -> int:
        """Sequence positions a clip of ``n_samples`` takes (its embeddings and the two markers),
        known from the manifest before anything is encoded."""
        m = self.bundle.manifest
        if self.pair is not None:
            markers = len(self.audio_start) + len(self.audio_end)
            return markers + sum(self.pair.embeddings_per_window(w.size)
                                 for w in split_windows(np.zeros(n_samples, dtype=np.uint8)))
        # (a chunked clip takes as many: chunks are whole embeddings, the last rounded up like a window)
        windows = split_windows(np.zeros(n_samples, dtype=np.uint8))
        if m.adaptor == "llasm-v1":
            return 2 + m.tokens_per_window * len(windows)
        return 2 + sum(audio_token_count(w.size, m.stack_factor) for w in windows)

    def prompt_positions(self, n_samples: int | None, text: str | None = None, after: str | None = None,
                         system: str | None = None) -> int:
        """Positions the prompt of a one-turn question takes (template, system prompt, typed text, and
        a clip of ``n_samples``, None for none) before anything is encoded: what ``ask`` prefills."""
        clip = None
        if n_samples is not None:
            markers = len(self.audio_start) + len(self.audio_end) if self.pair is not None else 2
            clip = np.zeros((self.audio_positions(n_samples) - markers, self.engine.n_embd), dtype=np.float32)
        return sum(len(seg) for seg in self.prompt(self.messages(clip, text, after, system)))

    def default_sampling(self, temperature: float | None = None, **overrides) -> Sampling:
        """Sampling settings: the bundle's temperature unless one is given, plus any other field."""
        t = self.bundle.manifest.temperature if temperature is None else temperature
        return Sampling(temperature=t, **overrides)

    def messages(self, audio_embd: np.ndarray | None, text: str | None, after: str | None, system: str | None) -> list[Message]:
        system = self.system_prompt if system is None else system
        msgs = [Message.of("system", [system])] if system else []
        clips = [audio_embd] if audio_embd is not None else []
        msgs.append(Message.of("user", user_content(text, audio_embd is not None, after), clips))
        return msgs

    def prompt(self, msgs: list[Message], add_generation_prompt: bool = True) -> list:
        """Token/embedding segments of a whole conversation, BOS included."""
        pieces = prompt_pieces(self.template, msgs, self.engine.eos_text, add_generation_prompt)
        clips = [self.with_boundary(c) for m in msgs for c in m.clips]
        return segments(self.engine, pieces, clips, self.audio_start, self.audio_end, self.engine.add_bos)

    def with_boundary(self, clip: np.ndarray) -> np.ndarray:
        """A clip's embeddings between the learned start/end rows (unchanged for token boundaries)."""
        if self.boundary is None:
            return clip
        return np.concatenate([self.boundary[:1], clip, self.boundary[1:]])

    def greedy_tokens(self, segs: list, max_tokens: int) -> list[int]:
        """Greedy token ids for prepared segments (what the parity tests compare)."""
        self.engine.reset()
        logits = self.engine.eval(segs)
        return list(self.engine.generate(logits, Sampler(Sampling(temperature=0.0)), max_tokens))

    def close(self) -> None:
        if self._tower is not None:
            self._tower.close()
        self.engine.close()
