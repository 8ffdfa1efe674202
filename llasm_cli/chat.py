"""Prompts: chat-template rendering and the split into token and audio-embedding segments.

A user turn's audio sits in the rendered template as the placeholder ``<|audio|>``; each
placeholder becomes ``<au_start>`` + that clip's embeddings + ``<au_end>`` in the sequence.

Runtime and training cut the rendered text at the same places (audio placeholders, the EOS
string, answers) and tokenize each plain-text piece on its own, so the llama.cpp tokenizer and
the Hugging Face tokenizer see identical pieces and produce identical ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import numpy as np

AUDIO_PLACEHOLDER = "<|audio|>"
# The template llasm models are trained with. "ASSISTANT:" is followed directly by the answer,
# whose first token carries its own leading space, so the generation prompt ends where the
# answer's tokens begin.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT:{{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_ANSWER = "\x1e{}\x1e"  # stands in for answer i while the template is rendered


@dataclass
class Message:
    """One chat turn; ``clips`` holds the embeddings for each placeholder in ``content``, in order."""

    role: str
    content: str
    clips: list = field(default_factory=list)


@dataclass
class Piece:
    """A stretch of the sequence: plain ``text`` to tokenize, an ``audio`` clip, ``eos``, or an ``answer``."""

    kind: str  # "text" | "audio" | "eos" | "answer"
    text: str = ""
    index: int = -1  # audio: clip number; answer: message number


def user_content(text_before: str | None, has_audio: bool, text_after: str | None) -> str:
    """The user's turn text: typed text before and after the spoken part, one per line."""
    parts = [text_before or "", AUDIO_PLACEHOLDER if has_audio else "", text_after or ""]
    return "\n".join(p for p in parts if p.strip())


@lru_cache(maxsize=8)
def _compile(template: str):
    """Compiled once per template: compiling costs far more than rendering."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: Sequence[Message], bos_token: str, eos_token: str, add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face style Jinja chat template the way transformers does."""
    return _compile(template).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt,
    )


def split_text(text: str, eos_text: str) -> list[Piece]:
    """Cut rendered text at audio placeholders, EOS strings and answer stand-ins."""
    marks = [re.escape(AUDIO_PLACEHOLDER), "\x1e(\\d+)\x1e"] + ([re.escape(eos_text)] if eos_text else [])
    pieces, clip, pos = [], 0, 0
    for m in re.finditer("|".join(marks), text):
        if m.start() > pos:
            pieces.append(Piece("text", text[pos : m.start()]))
        if m.group(0) == AUDIO_PLACEHOLDER:
            pieces.append(Piece("audio", index=clip))
            clip += 1
        elif m.group(1) is not None:
            pieces.append(Piece("answer", index=int(m.group(1))))
        else:
            pieces.append(Piece("eos"))
        pos = m.end()
    if pos < len(text):
        pieces.append(Piece("text", text[pos:]))
    return pieces


def dialogue_pieces(template: str, messages: Sequence[Message], eos_text: str, add_generation_prompt: bool) -> list[Piece]:
    """A whole conversation as pieces, each assistant answer left as an ``answer`` piece (training)."""
    stand_in = [Message(m.role, _ANSWER.format(i) if m.role == "assistant" else m.content) for i, m in enumerate(messages)]
    text = render(template, stand_in, bos_token="", eos_token=eos_text, add_generation_prompt=add_generation_prompt)
    pieces = split_text(text, eos_text)
    for p in pieces:
        if p.kind == "answer":
            p.text = messages[p.index].content
    return pieces


def segments(engine, text: str, clips: Sequence[np.ndarray], audio_start: int, audio_end: int, bos: bool) -> list:
    """Token lists and embedding arrays for rendered ``text`` with each placeholder replaced by a clip."""
    return pieces_to_segments(split_text(text, engine.eos_text), engine.tokenize, clips, engine.bos if bos else None,
                              engine.eos, audio_start, audio_end)


def pieces_to_segments(
    pieces: Sequence[Piece], tokenize: Callable[[str], list[int]], clips: Sequence, bos: int | None, eos: int,
    audio_start: int, audio_end: int,
) -> list:
    """Turn pieces into token lists and clips; consecutive tokens are merged into one list."""
    n_audio = sum(p.kind == "audio" for p in pieces)
    if n_audio != len(clips):
        raise ValueError(f"{n_audio} audio placeholders but {len(clips)} clips")
    out: list = []
    tokens: list[int] = [bos] if bos is not None else []
    for p in pieces:
        if p.kind in ("text", "answer"):
            tokens += tokenize(p.text) if p.text else []
        elif p.kind == "eos":
            tokens.append(eos)
        else:
            out += [tokens + [audio_start], clips[p.index]]
            tokens = [audio_end]
    out.append(tokens)
    return [s for s in out if len(s)]

