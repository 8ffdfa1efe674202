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
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llasm_cli.audio.decode import decode_audio
from llasm_cli.errors import AudioFileError, AudioTooLongError, InvalidValueError
from llasm_cli.inputs import check_max_tokens, check_rate, check_seed, check_temperature, check_top_p, clean_text

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256
# OpenAI's voice names: each is llasm's default voice (the best installed one for the answer's language)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
CHAT_AUDIO_FORMATS = ("wav", "mp3", "flac", "opus", "pcm16")  # OpenAI's audio.format values we can write
STREAM_AUDIO_FORMAT = "pcm16"  # streamed audio deltas are raw 24 kHz 16-bit samples, as OpenAI's
SPEECH_RESPONSE_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")  # /v1/audio/speech (OpenAI's, less aac)
MAX_SPEECH_INPUT = 4096  # characters of /v1/audio/speech input, as OpenAI allows


class APIError(Exception):
    """A request the server refuses, as HTTP status + OpenAI error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


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
class AudioOut:
    """The spoken answer asked for: ``modalities: ["text", "audio"]`` with ``audio: {voice, format}``."""

    voice: str  # an OpenAI voice name (llasm's default voice) or ENGINE:VOICE (`llasm voices`)
    format: str  # one of CHAT_AUDIO_FORMATS


@dataclass
class SpeechRequest:
    """POST /v1/audio/speech: text to speech alone."""

    input: str
    voice: str
    format: str = "mp3"
    speed: float = 1.0


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


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The body as JSON; malformed JSON (or NaN/Infinity, or absurd nesting) is a 400."""
    if not body.strip():
        raise bad("the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise bad(f"the request body is not valid JSON: {why}", code="invalid_json") from None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _want(obj: dict, key: str, kind: str, param: str, default: Any = None) -> Any:
    """``obj[key]`` checked against ``kind`` (string, boolean, integer, number, array, object)."""
    if key not in obj or obj[key] is None:
        return default
    v = obj[key]
    ok = {
        "string": isinstance(v, str),
        "boolean": isinstance(v, bool),
        "integer": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "array": isinstance(v, list),
        "object": isinstance(v, dict),
    }[kind]
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        raise bad(f"{param} must be {article} {kind}, not {_type_name(v)}", param, "invalid_type")
    return v


def _checked(check, value: Any, param: str) -> Any:
    """``value`` (None: not given) under one of inputs.py's rules, the same as the CLI's; a 400 naming ``param``."""
    if value is None:
        return None
    try:
        return check(value, param)
    except InvalidValueError as exc:
        raise bad(str(exc), param, "invalid_value") from None


def _text(value: str, param: str, notes: list[str]) -> str:
    """Text made valid (inputs.clean_text: a lone surrogate such as "\\ud800" becomes U+FFFD), noted."""
    text, note = clean_text(value, param)
    if note:
        notes.append(note)
    return text


def parse_chat_request(obj: Any, max_messages: int) -> ChatRequest:
    """A chat-completions request, every field checked; anything unsupported is a 400 that names it.
    Text that is not valid Unicode is made valid (U+FFFD), as everywhere in llasm (inputs.py)."""
    if not isinstance(obj, dict):
        raise bad(f"the request body must be a JSON object, not {_type_name(obj)}", code="invalid_type")
    raw_messages = _want(obj, "messages", "array", "messages")
    if raw_messages is None:
        raise bad("messages is required", "messages", "missing_required_parameter")
    if not raw_messages:
        raise bad("messages must hold at least one message", "messages", "invalid_value")
    if len(raw_messages) > max_messages:
        raise bad(f"messages holds {len(raw_messages)} messages; this server takes at most {max_messages}",
                  "messages", "too_many_messages")
    notes: list[str] = []
    messages = [_message(m, f"messages[{i}]", notes) for i, m in enumerate(raw_messages)]

    n = _want(obj, "n", "integer", "n", 1)
    if n != 1:
        raise bad("n must be 1: this server gives one choice per request", "n", "unsupported_value")
    if _want(obj, "logprobs", "boolean", "logprobs", False):
        raise bad("logprobs are not supported", "logprobs", "unsupported_parameter")
    if _want(obj, "tools", "array", "tools"):
        raise bad("tools are not supported", "tools", "unsupported_parameter")
    stream = _want(obj, "stream", "boolean", "stream", False)
    audio_out = _audio_out(obj, stream)

    temperature = _checked(check_temperature, _want(obj, "temperature", "number", "temperature"), "temperature")
    top_p = _checked(check_top_p, _want(obj, "top_p", "number", "top_p"), "top_p")
    max_tokens = _want(obj, "max_completion_tokens", "integer", "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _want(obj, "max_tokens", "integer", "max_tokens"), "max_tokens"
    max_tokens = _checked(check_max_tokens, max_tokens, key)
    seed = _checked(check_seed, _want(obj, "seed", "integer", "seed"), "seed")

    stop = obj.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [_text(stop, "stop", notes)]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = [_text(s, f"stop[{i}]", notes) for i, s in enumerate(stop)]
    else:
        raise bad("stop must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad(f"stop holds {len(stops)} strings; at most {MAX_STOP}", "stop", "invalid_value")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"a stop string may be at most {MAX_STOP_CHARS} characters", "stop", "invalid_value")

    options = _want(obj, "stream_options", "object", "stream_options", {})
    include_usage = _want(options, "include_usage", "boolean", "stream_options.include_usage", False)
    return ChatRequest(
        messages=messages, audio_out=audio_out, model=_want(obj, "model", "string", "model"), stream=stream,
        include_usage=include_usage, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
        stop=stops, seed=seed, ignore_eos=_want(obj, "ignore_eos", "boolean", "ignore_eos", False), notes=notes,
    )


def _audio_out(obj: dict, stream: bool) -> AudioOut | None:
    """``modalities`` and ``audio``: the spoken answer asked for, if any."""
    modalities = _want(obj, "modalities", "array", "modalities", [])
    for i, m in enumerate(modalities):
        if m not in ("text", "audio"):
            raise bad(f"modalities[{i}] must be \"text\" or \"audio\", not {json.dumps(m)}", "modalities",
                      "unsupported_value")
    audio = _want(obj, "audio", "object", "audio")
    if "audio" not in modalities:
        if audio is not None:
            raise bad("audio sets the spoken answer's voice and format: ask for it with modalities "
                      "[\"text\", \"audio\"]", "audio", "invalid_value")
        return None
    if audio is None:
        raise bad("modalities [\"text\", \"audio\"] needs audio: {\"voice\": \"alloy\", \"format\": \"wav\"}",
                  "audio", "missing_required_parameter")
    voice = _voice(audio, "audio.voice")
    fmt = _want(audio, "format", "string", "audio.format")
    if fmt is None:
        raise bad(f"audio.format is required: one of {', '.join(CHAT_AUDIO_FORMATS)}", "audio.format",
                  "missing_required_parameter")
    if fmt not in CHAT_AUDIO_FORMATS:
        raise bad(f"audio.format {fmt!r} is not supported: use one of {', '.join(CHAT_AUDIO_FORMATS)}",
                  "audio.format", "unsupported_value")
    if stream and fmt != STREAM_AUDIO_FORMAT:
        raise bad(f"a streamed spoken answer comes as {STREAM_AUDIO_FORMAT} deltas (as OpenAI's): set audio.format "
                  f"to \"{STREAM_AUDIO_FORMAT}\"", "audio.format", "unsupported_value")
    return AudioOut(voice, fmt)


def _voice(obj: dict, param: str) -> str:
    """A voice: one of OpenAI's names (llasm's default voice) or ENGINE:VOICE; checked where it is opened."""
    voice = _want(obj, param.rsplit(".", 1)[-1], "string", param)
    if not voice:
        raise bad(f"{param} is required: one of OpenAI's voices ({', '.join(OPENAI_VOICES[:3])}, ...: llasm's "
                  "default voice) or ENGINE:VOICE from `llasm voices`", param, "missing_required_parameter")
    if voice not in OPENAI_VOICES and ":" not in voice:
        raise bad(f"{param} {voice!r} is not a voice here: use one of OpenAI's names ({', '.join(OPENAI_VOICES)}: "
                  "llasm's default voice) or ENGINE:VOICE from `llasm voices`", param, "invalid_value")
    return voice


def parse_speech_request(obj: Any) -> SpeechRequest:
    """A /v1/audio/speech request, every field checked as OpenAI's are."""
    if not isinstance(obj, dict):
        raise bad(f"the request body must be a JSON object, not {_type_name(obj)}", code="invalid_type")
    text = _want(obj, "input", "string", "input")
    if text is None:
        raise bad("input is required: the text to speak", "input", "missing_required_parameter")
    text, _ = clean_text(text, "input")
    if not text.strip():
        raise bad("input is empty: nothing to speak", "input", "invalid_value")
    if len(text) > MAX_SPEECH_INPUT:
        raise bad(f"input holds {len(text)} characters; at most {MAX_SPEECH_INPUT}", "input", "invalid_value")
    _want(obj, "model", "string", "model")
    _want(obj, "instructions", "string", "instructions")  # read and not followed: these voices take no direction
    voice = _voice(obj, "voice")
    fmt = _want(obj, "response_format", "string", "response_format", "mp3")
    if fmt not in SPEECH_RESPONSE_FORMATS:
        raise bad(f"response_format {fmt!r} is not supported: use one of {', '.join(SPEECH_RESPONSE_FORMATS)}",
                  "response_format", "unsupported_value")
    stream_format = _want(obj, "stream_format", "string", "stream_format", "audio")
    if stream_format != "audio":
        raise bad("stream_format must be \"audio\": the speech comes whole, as one file", "stream_format",
                  "unsupported_value")
    speed = _want(obj, "speed", "number", "speed", 1.0)
    speed = _checked(check_rate, speed, "speed")
    return SpeechRequest(text, voice, fmt, speed)


def _message(m: Any, param: str, notes: list[str]) -> ChatMessage:
    if not isinstance(m, dict):
        raise bad(f"{param} must be an object, not {_type_name(m)}", param, "invalid_type")
    role = _want(m, "role", "string", f"{param}.role")
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
        parts = [Part(f"{param}.content", text=_text(content, f"{param}.content", notes))]
    elif isinstance(content, list):
        parts = [_part(p, f"{param}.content[{j}]", notes) for j, p in enumerate(content)]
    else:
        raise bad(f"{param}.content must be a string or an array of content parts, not {_type_name(content)}",
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
        raise bad(f"{param} must be an object, not {_type_name(p)}", param, "invalid_type")
    kind = _want(p, "type", "string", f"{param}.type")
    if kind == "text":
        text = _want(p, "text", "string", f"{param}.text")
        if text is None:
            raise bad(f"{param}.text is required", f"{param}.text", "missing_required_parameter")
        return Part(param, text=_text(text, f"{param}.text", notes))
    if kind == "input_audio":
        audio = _want(p, "input_audio", "object", f"{param}.input_audio")
        if audio is None:
            raise bad(f"{param}.input_audio is required", f"{param}.input_audio", "missing_required_parameter")
        data = _want(audio, "data", "string", f"{param}.input_audio.data")
        if not data:
            raise bad(f"{param}.input_audio.data is required (base64 audio)", f"{param}.input_audio.data",
                      "missing_required_parameter")
        fmt = _want(audio, "format", "string", f"{param}.input_audio.format")
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


def audio_body(aid: str, data: bytes, transcript: str, expires_at: int) -> dict:
    return {"id": aid, "data": base64.b64encode(data).decode("ascii"), "expires_at": expires_at,
            "transcript": transcript}


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
