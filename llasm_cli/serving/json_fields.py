"""JSON request fields checked one by one: every refusal is an OpenAI-style 400 naming the field.

Shared by the chat-completions parser (openai_api.py) and the speech endpoints' (openai_audio.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from llasm_cli.errors import InvalidValueError
from llasm_cli.inputs import clean_text


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


def type_name(v: Any) -> str:
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


def want(obj: dict, key: str, kind: str, param: str, default: Any = None) -> Any:
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
        raise bad(f"{param} must be {article} {kind}, not {type_name(v)}", param, "invalid_type")
    return v


def checked(check, value: Any, param: str) -> Any:
    """``value`` (None: not given) under one of inputs.py's rules, the same as the CLI's; a 400 naming ``param``."""
    if value is None:
        return None
    try:
        return check(value, param)
    except InvalidValueError as exc:
        raise bad(str(exc), param, "invalid_value") from None


def text_field(value: str, param: str, notes: list[str]) -> str:
    """Text made valid (inputs.clean_text: a lone surrogate such as "\\ud800" becomes U+FFFD), noted."""
    text, note = clean_text(value, param)
    if note:
        notes.append(note)
    return text
