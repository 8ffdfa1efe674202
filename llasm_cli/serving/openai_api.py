"""OpenAI's chat-completions wire format: requests checked strictly, responses and errors built.

A request body is parsed by hand rather than by a schema library so that every refusal is one
OpenAI-style error naming the offending field (``messages[2].content[0].input_audio.data``).
Message content is a string or a list of parts, ``{"type": "text", "text": ...}`` and
``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}`` -- the shape
OpenAI and llama.cpp's llama-server use. Audio is decoded from memory (nothing is written to
disk) by the code that decodes files (``audio.decode_audio``), with the same checks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llasm_cli.audio.decode import decode_audio
from llasm_cli.errors import AudioFileError, AudioTooLongError
from llasm_cli.inputs import check_max_tokens, check_seed, check_temperature, check_top_p
from llasm_cli.serving.json_fields import bad, checked, text_field, type_name, want
from llasm_cli.serving.openai_audio import AudioOut, parse_audio_out

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256


@dataclass
class Part:
    """A piece of a message: text, or base64 audio in a named format."""

    param: str  # where it is in the request, for error messages
    text: str | None = None
    audio: str | None = None
    format: str | None = None


@dataclass
class ChatMessage:
    role: str  # system, user, assistant ("developer" is read as system)
    parts: list[Part]
    param: str

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.text is not None)


@dataclass
class ChatRequest:
    messages: list[ChatMessage]
    audio_out: AudioOut | None = None
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # llama-server's extension: answer up to max_tokens whatever the model says
    notes: list[str] = field(default_factory=list)  # text made valid (inputs.clean_text): one line each, for the log


# --- parsing ----------------------------------------------------------------------------


def parse_chat_request(obj: Any, max_messages: int) -> ChatRequest:
    """A chat-completions request, every field checked; anything unsupported is a 400 that names it.
    Text that is not valid Unicode is made valid (U+FFFD), as everywhere in llasm (inputs.py)."""
    if not isinstance(obj, dict):
        raise bad(f"the request body must be a JSON object, not {type_name(obj)}", code="invalid_type")
    raw_messages = want(obj, "messages", "array", "messages")
    if raw_messages is None:
        raise bad("messages is required", "messages", "missing_required_parameter")
    if not raw_messages:
        raise bad("messages must hold at least one message", "messages", "invalid_value")
    if len(raw_messages) > max_messages:
        raise bad(f"messages holds {len(raw_messages)} messages; this server takes at most {max_messages}",
                  "messages", "too_many_messages")
    notes: list[str] = []
    messages = [_message(m, f"messages[{i}]", notes) for i, m in enumerate(raw_messages)]

    n = want(obj, "n", "integer", "n", 1)
    if n != 1:
        raise bad("n must be 1: this server gives one choice per request", "n", "unsupported_value")
    if want(obj, "logprobs", "boolean", "logprobs", False):
        raise bad("logprobs are not supported", "logprobs", "unsupported_parameter")
    if want(obj, "tools", "array", "tools"):
        raise bad("tools are not supported", "tools", "unsupported_parameter")
    stream = want(obj, "stream", "boolean", "stream", False)
    audio_out = parse_audio_out(obj, stream)

    temperature = checked(check_temperature, want(obj, "temperature", "number", "temperature"), "temperature")
    top_p = checked(check_top_p, want(obj, "top_p", "number", "top_p"), "top_p")
    max_tokens = want(obj, "max_completion_tokens", "integer", "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = want(obj, "max_tokens", "integer", "max_tokens"), "max_tokens"
    max_tokens = checked(check_max_tokens, max_tokens, key)
    seed = checked(check_seed, want(obj, "seed", "integer", "seed"), "seed")

    stop = obj.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [text_field(stop, "stop", notes)]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = [text_field(s, f"stop[{i}]", notes) for i, s in enumerate(stop)]
    else:
        raise bad("stop must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad(f"stop holds {len(stops)} strings; at most {MAX_STOP}", "stop", "invalid_value")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"a stop string may be at most {MAX_STOP_CHARS} characters", "stop", "invalid_value")

    options = want(obj, "stream_options", "object", "stream_options", {})
    include_usage = want(options, "include_usage", "boolean", "stream_options.include_usage", False)
    return ChatRequest(
        messages=messages, audio_out=audio_out, model=want(obj, "model", "string", "model"), stream=stream,
        include_usage=include_usage, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
        stop=stops, seed=seed, ignore_eos=want(obj, "ignore_eos", "boolean", "ignore_eos", False), notes=notes,
    )


def _message(m: Any, param: str, notes: list[str]) -> ChatMessage:
    if not isinstance(m, dict):
        raise bad(f"{param} must be an object, not {type_name(m)}", param, "invalid_type")
    role = want(m, "role", "string", f"{param}.role")
    if role is None:
        raise bad(f"{param}.role is required", f"{param}.role", "missing_required_parameter")
    if role not in ROLES:
        raise bad(f"{param}.role {role!r} is not one of {', '.join(ROLES)}", f"{param}.role", "invalid_value")
    role = "system" if role == "developer" else role
    content = m.get("content")
    if content is None:
        if role != "assistant":
            raise bad(f"{param}.content is required", f"{param}.content", "missing_required_parameter")
        parts = [Part(f"{param}.content", text="")]
    elif isinstance(content, str):
        parts = [Part(f"{param}.content", text=text_field(content, f"{param}.content", notes))]
    elif isinstance(content, list):
        parts = [_part(p, f"{param}.content[{j}]", notes) for j, p in enumerate(content)]
    else:
        raise bad(f"{param}.content must be a string or an array of content parts, not {type_name(content)}",
                  f"{param}.content", "invalid_type")
    if role != "user":
        for p in parts:
            if p.audio is not None:
                raise bad(f"{p.param}: only user messages may hold audio", p.param, "invalid_value")
    if role == "user" and not parts:
        raise bad(f"{param}.content is empty", f"{param}.content", "invalid_value")
    return ChatMessage(role, parts, param)


def _part(p: Any, param: str, notes: list[str]) -> Part:
    if not isinstance(p, dict):
        raise bad(f"{param} must be an object, not {type_name(p)}", param, "invalid_type")
    kind = want(p, "type", "string", f"{param}.type")
    if kind == "text":
        text = want(p, "text", "string", f"{param}.text")
        if text is None:
            raise bad(f"{param}.text is required", f"{param}.text", "missing_required_parameter")
        return Part(param, text=text_field(text, f"{param}.text", notes))
    if kind == "input_audio":
        audio = want(p, "input_audio", "object", f"{param}.input_audio")
        if audio is None:
            raise bad(f"{param}.input_audio is required", f"{param}.input_audio", "missing_required_parameter")
        data = want(audio, "data", "string", f"{param}.input_audio.data")
        if not data:
            raise bad(f"{param}.input_audio.data is required (base64 audio)", f"{param}.input_audio.data",
                      "missing_required_parameter")
        fmt = want(audio, "format", "string", f"{param}.input_audio.format")
        if fmt is None:
            raise bad(f"{param}.input_audio.format is required: one of {', '.join(AUDIO_FORMATS)}",
                      f"{param}.input_audio.format", "missing_required_parameter")
        if fmt.lower() not in AUDIO_FORMATS:
            raise bad(f"{param}.input_audio.format {fmt!r} is not supported: use one of {', '.join(AUDIO_FORMATS)}",
                      f"{param}.input_audio.format", "unsupported_value")
        return Part(param, audio=data, format=fmt.lower())
    if kind is None:
        raise bad(f"{param}.type is required", f"{param}.type", "missing_required_parameter")
    raise bad(f"{param}.type {kind!r} is not supported: this server reads \"text\" and \"input_audio\" parts",
              f"{param}.type", "unsupported_content_type")


# --- audio ------------------------------------------------------------------------------


def decode_base64(data: str, param: str) -> bytes:
    """Strict base64 (a ``data:audio/...;base64,`` prefix is allowed); anything else is a 400."""
    if data.startswith("data:") and ";base64," in data[:100]:
        data = data.split(";base64,", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"{param} is not valid base64 ({exc})", param, "invalid_base64") from None


def read_audio_bytes(raw: bytes, what: str, max_seconds: float) -> np.ndarray:
    """Encoded audio in memory (wav/flac/ogg/mp3, any rate and channels) as 16 kHz mono float32,
    decoded and checked as ``audio.load_audio`` does a file (``audio.decode_audio``, one path for both).
    A refusal is a 400 naming the request field ``what``: ``audio_too_long`` or ``invalid_audio``.
    """
    try:
        return decode_audio(raw, what, max_seconds, raise_limit=" of this server")
    except AudioTooLongError as exc:
        raise bad(str(exc), what, "audio_too_long") from None
    except AudioFileError as exc:
        raise bad(str(exc), what, "invalid_audio") from None


# --- responses --------------------------------------------------------------------------


def usage_body(prompt: int, completion: int, cached: int, audio: int) -> dict:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio},
    }


def completion_body(cid: str, created: int, model: str, text: str, finish: str, usage: dict,
                    audio: dict | None = None) -> dict:
    """A whole answer; with ``audio`` (audio_body) it is spoken, and its text is the audio's transcript
    (``content`` is null, as OpenAI's)."""
    message = {"role": "assistant", "content": text, "refusal": None}
    if audio is not None:
        message.update(content=None, audio=audio)
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def chunk_body(cid: str, created: int, model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(cid: str, created: int, model: str, usage: dict) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
