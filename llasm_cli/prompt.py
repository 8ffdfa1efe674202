"""Prompts: chat-template rendering and the split into token and audio-embedding segments.

The template is rendered with a stand-in for each message's content, so the template's own
text (where control tokens such as ``<|im_start|>`` are parsed) and what people said or typed
(always literal text: a typed ``</s>`` is four characters, not end-of-text) stay apart. Each
audio slot in a message becomes ``<au_start>`` + that clip's embeddings + ``<au_end>``.

Runtime and training cut the sequence at the same places (audio, the EOS string, answers) and
tokenize each stretch of text the same way, so the llama.cpp tokenizer and the Hugging Face
tokenizer see identical pieces and produce identical ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import numpy as np

from llasm_cli.errors import TemplateError

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
# Where an LLM that was not trained on DEFAULT_TEMPLATE (a base GGUF with no chat template of its own) starts
# writing the user's next turn instead of ending its answer: the answer ends there.
DEFAULT_TEMPLATE_STOPS = ("\nUSER:",)
# Stands in for message i's content while the template is rendered. Private-use characters: Python
# counts "\x1e" as whitespace, and a template's ``content | trim`` (Llama 3's) would strip it away.
_OPEN, _CLOSE = "\ue000", "\ue001"
_STAND_IN = _OPEN + "{}" + _CLOSE


class AudioSlot:
    """Where a clip goes in a message's parts; typed text can never become one."""

    def __repr__(self) -> str:
        return "AUDIO"


AUDIO = AudioSlot()
Part = str | AudioSlot


@dataclass
class Message:
    """One chat turn; ``clips`` holds the embeddings for each audio slot, in order.

    ``content`` is the turn as text. In training data the placeholder ``<|audio|>`` in it marks
    a clip. At run time ``parts`` says where the clips go instead (text and ``AUDIO`` in order),
    so whatever a user types is literal text, never audio and never a control token.
    """

    role: str
    content: str
    clips: list = field(default_factory=list)
    parts: list | None = None
    tokens: list[int] | None = None  # an answer's ids exactly as generated (run-time history)

    @classmethod
    def of(cls, role: str, parts: Sequence[Part], clips: Sequence = (), tokens: list[int] | None = None) -> Message:
        text = "".join(AUDIO_PLACEHOLDER if p is AUDIO else p for p in parts)
        return cls(role, text, list(clips), list(parts), tokens)

    def split(self) -> list[Part]:
        """The content as parts: text and ``AUDIO``."""
        if self.parts is not None:
            return list(self.parts)
        out: list[Part] = []
        for i, text in enumerate(self.content.split(AUDIO_PLACEHOLDER)):
            if i:
                out.append(AUDIO)
            if text:
                out.append(text)
        return out


@dataclass
class Piece:
    """A stretch of the sequence.

    ``text``: template text, whose control tokens (``<|im_start|>``) are parsed; ``content``:
    what someone said or typed, always literal text; ``audio``: clip number ``index``; ``eos``;
    ``answer``: an assistant message's content in training (literal, and it carries the labels);
    ``tokens``: an earlier answer at run time, as the very ids that were generated.
    """

    kind: str  # "text" | "content" | "audio" | "eos" | "answer" | "tokens"
    text: str = ""
    index: int = -1  # audio: clip number in the conversation; answer: message number
    ids: list[int] = field(default_factory=list)  # tokens: ids fed as they are (an answer as generated)


def recent_exchanges(messages: Sequence, keep: int | None) -> list:
    """The system messages and the last ``keep`` exchanges before the newest user message, and that
    message on (``keep`` None: all of them): a bundle's ``history_turns``, for a model trained on
    single questions that would otherwise answer the history's questions too."""
    msgs = list(messages)
    users = [i for i, m in enumerate(msgs) if m.role == "user"]
    if keep is None or len(users) <= keep + 1:
        return msgs
    cut = users[-1 - keep]
    return [m for m in msgs[:cut] if m.role == "system"] + msgs[cut:]


def user_content(text_before: str | None, has_audio: bool, text_after: str | None) -> list[Part]:
    """The user's turn: typed text before and after the spoken part, one per line."""
    return join_lines([text_before or "", AUDIO if has_audio else "", text_after or ""])


def join_lines(parts: Sequence[Part]) -> list[Part]:
    """A user turn's typed texts and spoken parts (``AUDIO``) in order, one per line; blank texts dropped
    (``llasm ask --text T audio.wav``, a chat turn and an HTTP message's content parts alike)."""
    kept = [p for p in parts if p is AUDIO or p.strip()]
    out: list[Part] = []
    for i, part in enumerate(kept):
        if i:
            out.append("\n")
        out.append(part)
    return out


@lru_cache(maxsize=8)
def _compile(template: str):
    """Compiled once per template: compiling costs far more than rendering."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: Sequence[Message], bos_token: str, eos_token: str, add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face style Jinja chat template the way transformers does."""
    return _render(template, [m.content for m in messages], messages, bos_token, eos_token, add_generation_prompt)


def render_stand_ins(template: str, messages: Sequence[Message], eos_token: str, add_generation_prompt: bool = True) -> str:
    """The template's text with each message's content as a stand-in (see ``expand``)."""
    contents = [_STAND_IN.format(i) for i in range(len(messages))]
    return _render(template, contents, messages, "", eos_token, add_generation_prompt)


def _render(template, contents, messages, bos_token, eos_token, add_generation_prompt) -> str:
    import jinja2

    try:
        return _compile(template).render(
            messages=[{"role": m.role, "content": c} for m, c in zip(messages, contents, strict=True)],
            bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt,
        )
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the chat template failed: {exc}") from None


def split_text(text: str, eos_text: str) -> list[Piece]:
    """Cut rendered template text at EOS strings and content stand-ins (``answer`` pieces, index = message)."""
    marks = [f"{_OPEN}(\\d+){_CLOSE}"] + ([re.escape(eos_text)] if eos_text else [])
    pieces, pos = [], 0
    for m in re.finditer("|".join(marks), text):
        if m.start() > pos:
            pieces.append(Piece("text", text[pos : m.start()]))
        if m.group(1) is not None:
            pieces.append(Piece("answer", index=int(m.group(1))))
        else:
            pieces.append(Piece("eos"))
        pos = m.end()
    if pos < len(text):
        pieces.append(Piece("text", text[pos:]))
    return pieces


def expand(pieces: Sequence[Piece], messages: Sequence[Message], answers: bool) -> list[Piece]:
    """Replace each stand-in by its message's parts: content text and audio slots (clips numbered
    through the whole conversation). With ``answers``, assistant messages stay ``answer`` pieces."""
    first_clip, n = [], 0
    for m in messages:
        first_clip.append(n)
        n += sum(p is AUDIO for p in m.split())
    out: list[Piece] = []
    for piece in pieces:
        if piece.kind != "answer":
            out.append(piece)
            continue
        msg = messages[piece.index]
        if answers and msg.role == "assistant":
            out.append(Piece("answer", msg.content, piece.index))
            continue
        if msg.tokens is not None:
            out.append(Piece("tokens", ids=list(msg.tokens)))
            continue
        clip = first_clip[piece.index]
        for part in msg.split():
            if part is AUDIO:
                out.append(Piece("audio", index=clip))
                clip += 1
            elif part:
                out.append(Piece("content", part))
    return out


def prompt_pieces(template: str, messages: Sequence[Message], eos_text: str, add_generation_prompt: bool) -> list[Piece]:
    """A conversation as the runtime feeds it: template text, literal content, audio, EOS."""
    text = render_stand_ins(template, messages, eos_text, add_generation_prompt)
    return expand(split_text(text, eos_text), messages, answers=False)


def dialogue_pieces(template: str, messages: Sequence[Message], eos_text: str, add_generation_prompt: bool) -> list[Piece]:
    """A whole conversation as pieces, each assistant answer left as an ``answer`` piece (training)."""
    text = render_stand_ins(template, messages, eos_text, add_generation_prompt)
    return expand(split_text(text, eos_text), messages, answers=True)


Tokenize = Callable[[str, bool], list[int]]  # (text, parse control tokens) -> ids


def tokenize_run(run: Sequence[Piece], tokenize: Tokenize) -> list[int]:
    """Token ids of consecutive ``text``/``content`` pieces.

    Joined and tokenized as one string (so ids do not depend on where content begins) unless
    some content holds the spelling of a control token; then piece by piece, content literal.
    """
    joined = "".join(p.text for p in run)
    if not joined:
        return []
    if all(p.kind == "text" or tokenize(p.text, True) == tokenize(p.text, False) for p in run):
        return tokenize(joined, True)
    ids: list[int] = []
    for p in run:
        ids += tokenize(p.text, p.kind == "text") if p.text else []
    return ids


def tokenized(pieces: Sequence[Piece], tokenize: Tokenize, space_into_audio: bool = False) -> list[Piece]:
    """The pieces with their ids, as the runtime and training both read them: each run of
    ``text``/``content`` becomes one ``tokens`` piece (see ``tokenize_run``), an ``answer`` gets
    its literal ids, ``audio``, ``eos`` and ``tokens`` pass through. ``space_into_audio``: a space that
    ends the text before an audio slot is left out, as the slot's words carry it (``slot_lead``)."""
    out: list[Piece] = []
    run: list[Piece] = []
    for p in [*pieces, Piece("end")]:
        if p.kind in ("text", "content"):
            run.append(p)
            continue
        if run and space_into_audio and p.kind == "audio" and run[-1].text.endswith(" "):
            run[-1] = Piece(run[-1].kind, run[-1].text[:-1], run[-1].index)
        if run:
            out.append(Piece("tokens", ids=tokenize_run(run, tokenize)))
            run = []
        if p.kind == "answer":
            out.append(Piece("answer", p.text, p.index, ids=tokenize(p.text, False) if p.text else []))
        elif p.kind != "end":
            out.append(p)
    return out


Marker = int | Sequence[int] | None  # an audio span's start/end: a token, several (a published family's text), none


def segments(engine, pieces: Sequence[Piece], clips: Sequence[np.ndarray], audio_start: Marker,
             audio_end: Marker, bos: bool, space_into_audio: bool = False) -> list:
    """Token lists and embedding arrays for prompt pieces (clip i for audio piece i)."""
    return pieces_to_segments(pieces, engine.tokenize, clips, engine.bos if bos else None, engine.eos,
                              audio_start, audio_end, space_into_audio)


def pieces_to_segments(
    pieces: Sequence[Piece], tokenize: Tokenize, clips: Sequence, bos: int | None, eos: int,
    audio_start: Marker, audio_end: Marker, space_into_audio: bool = False,
) -> list:
    """Turn pieces into token lists and clips; consecutive tokens are merged into one list.

    ``audio_start``/``audio_end`` None: the clips carry their own boundary rows; a list: those tokens."""
    start, end = _marker(audio_start), _marker(audio_end)
    out: list = []
    tokens: list[int] = [bos] if bos is not None else []
    for p in tokenized(pieces, tokenize, space_into_audio):
        if p.kind == "eos":
            tokens.append(eos)
        elif p.kind == "audio":
            if not 0 <= p.index < len(clips):
                raise ValueError(f"audio piece {p.index} but {len(clips)} clips")
            out += [tokens + start, clips[p.index]]
            tokens = list(end)
        else:  # tokens, answer
            tokens += p.ids
    out.append(tokens)
    return [s for s in out if len(s)]


def _marker(m: Marker) -> list[int]:
    return [] if m is None else [m] if isinstance(m, int) else list(m)


PROBE_WORDS = "What is"  # words that stand for a transcript in slot_lead's measurement


def slot_lead(template: str, eos_text: str, tokenize: Tokenize) -> str | None:
    """How a transcript's words must be tokenized where this template puts a user's content after a space
    ("USER: " in the fallback template), so that the prompt's tokens are those of the words typed there:
    the space leaves the template text and the words carry it (" What": a SentencePiece or BPE vocabulary
    spells a word after a space as one token, "▁What"; tokenized apart, the template would end in a lone
    "▁"). None where the content follows no space (ChatML's newline) or no split matches the typed tokens.
    Measured on this LLM's tokenizer, not guessed from its type: a vocabulary that adds a space prefix
    itself needs none ("")."""
    text = render_stand_ins(template, [Message.of("user", ["x"])], eos_text, True)
    before = text.split(_OPEN, 1)[0]
    if not before.endswith(" ") or not before.strip():
        return None
    whole, head = tokenize(before + PROBE_WORDS, True), tokenize(before[:-1], True)
    if whole[: len(head)] != head:
        return None
    for lead in (" ", ""):
        if tokenize(lead + PROBE_WORDS, False) == whole[len(head):]:
            return lead
    return None
