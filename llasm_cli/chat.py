"""Prompts: chat-template rendering and the split into token and audio-embedding segments.

A user turn's audio sits in the rendered template as the placeholder ``<|audio|>``; each
placeholder becomes ``<au_start>`` + that clip's embeddings + ``<au_end>`` in the sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

AUDIO_PLACEHOLDER = "<|audio|>"
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class Message:
    """One chat turn; ``clips`` holds the embeddings for each placeholder in ``content``, in order."""

    role: str
    content: str
    clips: list[np.ndarray] = field(default_factory=list)


def user_content(text_before: str | None, has_audio: bool, text_after: str | None) -> str:
    """The user's turn text: typed text before and after the spoken part, one per line."""
    parts = [text_before or "", AUDIO_PLACEHOLDER if has_audio else "", text_after or ""]
    return "\n".join(p for p in parts if p.strip())


def render(template: str, messages: Sequence[Message], bos_token: str, eos_token: str, add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face style Jinja chat template the way transformers does."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt,
    )


def segments(engine, text: str, clips: Sequence[np.ndarray], audio_start: int, audio_end: int, bos: bool) -> list:
    """Token lists and embedding arrays for ``text`` with each placeholder replaced by a clip."""
    pieces = text.split(AUDIO_PLACEHOLDER)
    if len(pieces) - 1 != len(clips):
        raise ValueError(f"{len(pieces) - 1} audio placeholders but {len(clips)} clips")
    out: list = []
    tokens: list[int] = [engine.bos] if bos else []
    for i, piece in enumerate(pieces):
        if piece:
            tokens += engine.tokenize(piece)
        if i < len(clips):
            out += [tokens + [audio_start], clips[i]]
            tokens = [audio_end]
    out.append(tokens)
    return [s for s in out if len(s)]


def segment_length(segs: Sequence) -> int:
    return sum(len(s) for s in segs)
