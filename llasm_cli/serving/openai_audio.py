"""The spoken side of OpenAI's API: ``modalities: ["text", "audio"]`` on chat completions and
``POST /v1/audio/speech``, their fields checked as OpenAI's are, and the ``message.audio`` body.

Every OpenAI voice name means llasm's default voice (the best installed one for the answer's language);
``ENGINE:VOICE`` names one of ``llasm voices``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from llasm_cli.inputs import check_rate, clean_text
from llasm_cli.serving.json_fields import bad, checked, type_name, want

# OpenAI's voice names: each is llasm's default voice (the best installed one for the answer's language)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
CHAT_AUDIO_FORMATS = ("wav", "mp3", "flac", "opus", "pcm16")  # OpenAI's audio.format values we can write
STREAM_AUDIO_FORMAT = "pcm16"  # streamed audio deltas are raw 24 kHz 16-bit samples, as OpenAI's
SPEECH_RESPONSE_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")  # /v1/audio/speech (OpenAI's, less aac)
MAX_SPEECH_INPUT = 4096  # characters of /v1/audio/speech input, as OpenAI allows


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


def parse_audio_out(obj: dict, stream: bool) -> AudioOut | None:
    """``modalities`` and ``audio``: the spoken answer asked for, if any."""
    modalities = want(obj, "modalities", "array", "modalities", [])
    for i, m in enumerate(modalities):
        if m not in ("text", "audio"):
            raise bad(f"modalities[{i}] must be \"text\" or \"audio\", not {json.dumps(m)}", "modalities",
                      "unsupported_value")
    audio = want(obj, "audio", "object", "audio")
    if "audio" not in modalities:
        if audio is not None:
            raise bad("audio sets the spoken answer's voice and format: ask for it with modalities "
                      "[\"text\", \"audio\"]", "audio", "invalid_value")
        return None
    if audio is None:
        raise bad("modalities [\"text\", \"audio\"] needs audio: {\"voice\": \"alloy\", \"format\": \"wav\"}",
                  "audio", "missing_required_parameter")
    voice = _voice(audio, "audio.voice")
    fmt = want(audio, "format", "string", "audio.format")
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
    voice = want(obj, param.rsplit(".", 1)[-1], "string", param)
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
        raise bad(f"the request body must be a JSON object, not {type_name(obj)}", code="invalid_type")
    text = want(obj, "input", "string", "input")
    if text is None:
        raise bad("input is required: the text to speak", "input", "missing_required_parameter")
    text, _ = clean_text(text, "input")
    if not text.strip():
        raise bad("input is empty: nothing to speak", "input", "invalid_value")
    if len(text) > MAX_SPEECH_INPUT:
        raise bad(f"input holds {len(text)} characters; at most {MAX_SPEECH_INPUT}", "input", "invalid_value")
    want(obj, "model", "string", "model")
    want(obj, "instructions", "string", "instructions")  # read and not followed: these voices take no direction
    voice = _voice(obj, "voice")
    fmt = want(obj, "response_format", "string", "response_format", "mp3")
    if fmt not in SPEECH_RESPONSE_FORMATS:
        raise bad(f"response_format {fmt!r} is not supported: use one of {', '.join(SPEECH_RESPONSE_FORMATS)}",
                  "response_format", "unsupported_value")
    stream_format = want(obj, "stream_format", "string", "stream_format", "audio")
    if stream_format != "audio":
        raise bad("stream_format must be \"audio\": the speech comes whole, as one file", "stream_format",
                  "unsupported_value")
    speed = want(obj, "speed", "number", "speed", 1.0)
    speed = checked(check_rate, speed, "speed")
    return SpeechRequest(text, voice, fmt, speed)


def audio_body(aid: str, data: bytes, transcript: str, expires_at: int) -> dict:
    return {"id": aid, "data": base64.b64encode(data).decode("ascii"), "expires_at": expires_at,
            "transcript": transcript}
