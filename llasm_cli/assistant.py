"""One loaded model: a bundle's LLM in a llama.cpp engine, its audio tower, and its prompt format.

It turns messages into the token/embedding sequence the model reads; a ``Conversation``
(conversation.py) asks it questions. The tower can be handed in (benchmarks compare backends
on one engine); otherwise the bundle's is opened on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import gguf
import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.formats.bundle import Bundle
from llasm_cli.formats.gguf_check import check_widths, validate_llm
from llasm_cli.formats.gguf_keys import embedding_length
from llasm_cli.formats.published import PublishedPair, open_model
from llasm_cli.inputs import check_ctx
from llasm_cli.llm.engine import Engine, Sampler, Sampling
from llasm_cli.llm.scorer import TextScorer
from llasm_cli.llm.weights import LlamaModel
from llasm_cli.prompt import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATE_STOPS,
    Message,
    prompt_pieces,
    recent_exchanges,
    render,
    segments,
    slot_lead,
    user_content,
)
from llasm_cli.towers import TowerBackend, open_tower

ANSWER_RESERVE = 256  # positions a conversation keeps free for the answer
TURN_MARK = "\ue002"  # stands for a user's words in turn_edges (a private-use character: never in a template)
DEFAULT_CTX = 4096  # positions: a chat's context, and the most a one-shot question is given unless --ctx says more


class Assistant:
    """A bundle loaded once: engine, tower and prompt format, for any number of conversations."""

    def __init__(
        self, model: str | Path | Bundle, backend: str = "auto", llm_variant: str | None = None,
        tower_variant: str | None = None, n_ctx: int | Callable[[Assistant], int] | None = DEFAULT_CTX,
        n_threads: int | None = None, n_gpu_layers: int = 0, tower: TowerBackend | None = None,
        stream: bool = True, one_shot: bool = False,
    ) -> None:
        """``n_ctx``: the LLM context's positions, or a function that sizes it from this assistant
        once its prompt format is known and before the context is made (``prompt_positions``), or
        None for no context of its own (``llasm serve`` makes one for many conversations over ``llm``).
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
        arch = info.fields[gguf.Keys.General.ARCHITECTURE]
        check_widths(m.llm_dim, int(info.fields[embedding_length(arch)]), "manifest")
        self._tower = tower
        if tower_variant is None and llm_variant in m.tower_files:
            tower_variant = llm_variant  # same precision for both halves unless told otherwise
        self._tower_args = (backend, tower_variant, n_threads, llm_variant == "f32", one_shot)
        self._stream = stream

        # the model first (vocabulary, template), then a context sized by what the prompt format says
        self.llm = LlamaModel(llm_path, n_gpu_layers)
        try:
            self._prompt_format(self.llm)
            n = n_ctx(self) if callable(n_ctx) else n_ctx
            # the f32 variant is the exact reference: f32 KV cache, no (F16-rounding) flash attention
            self.engine = None if n is None else Engine(self.llm, n_ctx=n, n_threads=n_threads, exact=llm_variant == "f32")
        except BaseException:
            self.llm.close()
            raise
        if self.engine is not None:
            self.engine.warmup()

    def _prompt_format(self, llm: LlamaModel) -> None:
        """How this model's prompts are written: the audio span's markers, the chat template, the system prompt."""
        m = self.bundle.manifest
        # the audio span's start/end: two learned rows (a published GGUF's vocabulary stays as it is),
        # or two added vocabulary tokens
        self.boundary = self.bundle.boundary_rows()
        if self.pair is not None:  # the family's marker text: no token, one, or several
            self.audio_start, self.audio_end = self.pair.marker_ids(llm)
        elif m.boundary == "tokens":
            self.audio_start, self.audio_end = llm.token_id(m.audio_start), llm.token_id(m.audio_end)
        else:  # learned rows around each clip (with_boundary), or no markers at all
            self.audio_start = self.audio_end = None
        fallback = self.pair.family.template if self.pair is not None else DEFAULT_TEMPLATE
        self.template = llm.meta(gguf.Keys.Tokenizer.CHAT_TEMPLATE) or fallback
        self.stop_texts = DEFAULT_TEMPLATE_STOPS if self.template == DEFAULT_TEMPLATE else ()  # an answer's end
        self.system_prompt = m.system_prompt
        # a transcript's words after the template's space carry that space (prompt.slot_lead)
        self.audio_lead = slot_lead(self.template, llm.eos_text, llm.tokenize) if self.hears_words else None
        if self._tower is not None:
            self._lead_tower(self._tower)

    def _lead_tower(self, tower: TowerBackend, scorer: TextScorer | None = None) -> None:
        if self.hears_words:
            tower.lead = self.audio_lead or ""
            if hasattr(tower, "judge_with"):
                tower.judge_with(scorer or self._scorer())
        elif scorer is not None:
            scorer.close()

    def _scorer(self) -> TextScorer:
        """The LLM's judge of what Whisper heard (llm/scorer.py), reading the turn's opening as soon as it is made."""
        return TextScorer(self.llm, *self.turn_edges(), n_threads=self._tower_args[2])

    def turn_edges(self) -> tuple[list[int], list[int]]:
        """The tokens before a user's first turn (BOS, template, system prompt) and the one that ends it: where the
        LLM reads Whisper's hypotheses of what was said (towers/transcript.py judge_with)."""
        msgs = self.context_messages([Message.of("user", [TURN_MARK])])
        before, _, after = render(self.template, msgs, "", self.llm.eos_text, True).partition(TURN_MARK)
        if self.audio_lead is not None and before.endswith(" "):
            before = before[:-1]  # the words carry the space (prompt.slot_lead)
        opening = ([self.llm.bos] if self.llm.add_bos else []) + self.llm.tokenize(before, special=True)
        return opening, self.llm.tokenize(after, special=True)[:1]

    @property
    def tower(self) -> TowerBackend:
        """Opened on first use, so text-only questions never load the audio encoder."""
        if self._tower is None:
            backend, variant, threads, exact, one_shot = self._tower_args
            scorer = self._scorer() if self.hears_words else None  # reads its opening while Whisper loads
            try:
                self._tower = open_tower(self.bundle, backend, self.llm, variant, threads, exact=exact, one_shot=one_shot)
            except BaseException:
                if scorer is not None:
                    scorer.close()
                raise
            self._lead_tower(self._tower, scorer)
            if not self._stream and self._tower.unpadded:
                self._tower.chunked = False  # whole turns, encoded unpadded when they end
        return self._tower

    def warmup_tower(self) -> None:
        """Encode a moment of silence once, so the first real turn does not pay for graph set-up."""
        self.tower.encode(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
        self.tower.encode_calls = 0

    def audio_positions(self, n_samples: int) -> int:
        """Sequence positions a clip of ``n_samples`` takes (its embeddings and the markers), known from the
        manifest before anything is encoded (a chunked clip takes as many; a transcript at most as many)."""
        return self.markers + self.bundle.audio_positions(n_samples)

    @property
    def hears_words(self) -> bool:
        """Whether the audio tower hears a transcript (towers/transcript.py): a clip's rows are known only
        once it is heard, at most ``audio_positions`` of them."""
        return self.pair is None and self.bundle.manifest.adaptor == "transcript"

    @property
    def markers(self) -> int:
        """Positions around each clip: marker tokens, learned boundary rows, or none."""
        if self.boundary is not None:
            return len(self.boundary)
        return sum(0 if m is None else 1 if isinstance(m, int) else len(m) for m in (self.audio_start, self.audio_end))

    def prompt_positions(self, n_samples: int | None, text: str | None = None, after: str | None = None,
                         system: str | None = None) -> int:
        """Positions the prompt of a one-turn question takes (template, system prompt, typed text, and
        a clip of ``n_samples``, None for none) before anything is encoded: what ``ask`` prefills."""
        clip = None
        if n_samples is not None:
            clip = np.zeros((self.bundle.audio_positions(n_samples), self.llm.n_embd), dtype=np.float32)
        return sum(len(seg) for seg in self.prompt(self.messages(clip, text, after, system)))

    def default_sampling(self, temperature: float | None = None, **overrides) -> Sampling:
        """Sampling settings: the bundle's temperature unless one is given, plus any other field."""
        t = self.bundle.manifest.temperature if temperature is None else temperature
        return Sampling(temperature=t, **overrides)

    def context_messages(self, turns: Sequence[Message], system: str | None = None) -> list[Message]:
        """The messages a prompt holds, for ask, chat and serve alike: the system prompt (``system``,
        else the bundle's; '' for none; turns that hold a system message of their own get no other),
        then the turns less the earlier exchanges the model was not trained to read (the manifest's
        ``history_turns``)."""
        system = self.system_prompt if system is None else system
        head = [Message.of("system", [system])] if system and not any(m.role == "system" for m in turns) else []
        return recent_exchanges(head + list(turns), self.bundle.manifest.history_turns)

    def messages(self, audio_embd: np.ndarray | None, text: str | None, after: str | None, system: str | None) -> list[Message]:
        """The messages of a one-turn question: typed ``text`` before a clip's embeddings, ``after`` it."""
        clips = [audio_embd] if audio_embd is not None else []
        return self.context_messages([Message.of("user", user_content(text, audio_embd is not None, after), clips)], system)

    def prompt(self, msgs: list[Message], add_generation_prompt: bool = True) -> list:
        """Token/embedding segments of a whole conversation, BOS included."""
        pieces = prompt_pieces(self.template, msgs, self.llm.eos_text, add_generation_prompt)
        clips = [self.with_boundary(c) for m in msgs for c in m.clips]
        return segments(self.llm, pieces, clips, self.audio_start, self.audio_end, self.llm.add_bos,
                        space_into_audio=self.audio_lead is not None)

    def with_clips(self, segs: list, clips: Sequence[np.ndarray]) -> list:
        """A rendered prompt whose audio slots, in order, hold ``clips`` instead of what they held (each
        the same size, or no larger for a transcript): a prompt measured with stand-ins becomes the final one
        without rendering it again."""
        slots = [i for i, seg in enumerate(segs) if isinstance(seg, np.ndarray)]
        if len(slots) != len(clips):
            raise ValueError(f"the prompt has {len(slots)} audio slots for {len(clips)} clips")
        out = list(segs)
        for i, clip in zip(slots, clips):
            out[i] = self.with_boundary(clip)
            if len(out[i]) > len(segs[i]) or (len(out[i]) != len(segs[i]) and not self.hears_words):
                raise ValueError(f"a clip of {len(out[i])} positions in a slot of {len(segs[i])}")
        return out

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
        if self.engine is not None:
            self.engine.close()
        self.llm.close()


def question_context(
    samples: np.ndarray | None, text: str | None = None, after: str | None = None, system: str | None = None,
    max_tokens: int | None = None, limit: int = DEFAULT_CTX, given: int | None = None,
) -> Callable[[Assistant], int]:
    """The ``n_ctx`` of an ``Assistant`` made for one question (``llasm ask``): the question's prompt
    and room for its answer (``max_tokens``, else the bundle's; never less than the reserve a
    conversation keeps), at most ``limit``. The KV cache holds every position from the start, so a
    context sized to the question takes that much memory, not a chat's. A question that needs more
    than ``limit`` gets ``limit``, and the errors about too long a recording say so and name --ctx.
    ``given``: the size asked for (--ctx), kept if it holds the prompt and the reserve, else refused
    (InvalidValueError naming it)."""

    def size(bot: Assistant) -> int:
        prompt = bot.prompt_positions(None if samples is None else samples.size, text, after, system)
        if given is not None:
            return check_ctx(given, "--ctx", prompt + ANSWER_RESERVE, f"this question's prompt takes {prompt} "
                             f"positions and {ANSWER_RESERVE} more are kept for the answer")
        room = max(max_tokens or bot.bundle.manifest.max_tokens, ANSWER_RESERVE)
        return min(prompt + room, limit)

    return size
