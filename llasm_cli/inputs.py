"""What people type, pipe, paste or send, made valid once, where it enters: text and numbers.

Text. Every string a person gives llasm (command-line options, lines from stdin or the keyboard, the
text fields of an HTTP request) goes through ``clean_text`` before anything else reads it. The rule:
a character that is not valid Unicode text is replaced by U+FFFD (�), visibly, and the caller says so
once, in one line (the note ``clean_text`` returns); nothing is refused for it, so a chat never loses
a turn. Such characters are lone surrogates: Python hands over the bytes of argv and stdin that are
not UTF-8 (a Latin-1 terminal, a pasted binary string) as U+DC80-U+DCFF ("surrogateescape"), and JSON
may spell one (``"\\ud800"`` is valid JSON, not valid text). Go's encoding/json makes the same
replacement. Paths stay as they are: a file name need not be text.

Numbers. Each option and request field has one rule here, applied by the CLI (``llasm ask --temperature
nan``) and the server (``"temperature": 9``) alike: each ``check_*`` returns the value to use and raises
``InvalidValueError`` (exit 2; HTTP 400 naming the field) for one it cannot take. ``name`` is what the
person wrote: ``--temperature`` on the command line, ``temperature`` in a request body.
"""

from __future__ import annotations

import math
import re
import sys

from llasm_cli.errors import InvalidValueError

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")  # no valid text holds one; Python's UTF-8 encoder refuses them

MAX_TEMPERATURE = 2.0  # as OpenAI's API: above it answers are noise
MAX_THREADS = 512  # GGML_MAX_N_THREADS
SEED_RANGE = (-(2**63), 2**64)  # a signed or unsigned 64-bit seed; used modulo 2**64
MIN_AUDIO_LIMIT = 1.0  # seconds: the lowest --max-audio
MIN_BODY_MIB = 0.001  # the lowest --max-body


# --- text -------------------------------------------------------------------------------


def clean_text(text: str, what: str) -> tuple[str, str | None]:
    """``text`` with every character that cannot be written as UTF-8 (a lone surrogate) replaced by
    U+FFFD, and a one-line note naming ``what`` when any was (else None)."""
    out, n = _SURROGATE.subn(REPLACEMENT, text)
    if not n:
        return text, None
    return out, (f"{what} is not valid UTF-8 text: {n} invalid character{'s' * (n != 1)} "
                 f"(bytes that are not UTF-8, or lone surrogates) replaced by {REPLACEMENT}")


def replace_invalid(text: str) -> str:
    """``clean_text`` without the note: for text that should have been cleaned where it entered."""
    return _SURROGATE.sub(REPLACEMENT, text)


def tolerant_stdin() -> None:
    """Let stdin hand over bytes that are not UTF-8 as surrogates (which ``clean_text`` replaces)
    instead of raising UnicodeDecodeError and losing the whole line."""
    if hasattr(sys.stdin, "reconfigure"):
        try:
            sys.stdin.reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # closed, or already read from in a way that forbids it
            pass


# --- numbers ------------------------------------------------------------------------------


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(name: str, rule: str, value) -> InvalidValueError:
    return InvalidValueError(f"{name} must be {rule}, got {value}", name)


def check_temperature(value: float, name: str = "--temperature") -> float:
    """From 0 (greedy) to ``MAX_TEMPERATURE``."""
    if not (_number(value) and 0 <= value <= MAX_TEMPERATURE):
        raise _refuse(name, f"a number from 0 (greedy) to {MAX_TEMPERATURE:g}", value)
    return float(value)


def check_top_p(value: float, name: str = "--top-p") -> float:
    """Above 0, at most 1."""
    if not (_number(value) and 0 < value <= 1):
        raise _refuse(name, "a number above 0 and at most 1", value)
    return float(value)


def check_max_tokens(value: int, name: str = "--max-tokens") -> int:
    """At least 1."""
    if not (_integer(value) and value >= 1):
        raise _refuse(name, "a whole number, at least 1", value)
    return value


def check_seed(value: int, name: str = "--seed") -> int:
    """Any signed or unsigned 64-bit number; returned modulo 2**64 (what the sampler's generator takes)."""
    lo, hi = SEED_RANGE
    if not (_integer(value) and lo <= value < hi):
        raise _refuse(name, f"a whole number that fits in 64 bits ({lo} to {hi - 1})", value)
    return value % 2**64


def check_threads(value: int, name: str = "--threads") -> int | None:
    """From 1 to ``MAX_THREADS``, or 0 for the default (returned as None)."""
    if not (_integer(value) and 0 <= value <= MAX_THREADS):
        raise _refuse(name, f"from 1 to {MAX_THREADS}, or 0 for the default", value)
    return value or None


def check_ctx(value: int, name: str = "--ctx", need: int = 1, why: str = "") -> int:
    """At least ``need`` positions; ``why`` says what needs them ("this question's prompt ...")."""
    if not _integer(value):
        raise _refuse(name, "a whole number of positions", value)
    if value < need:
        because = f": {why}" if why else ""
        raise InvalidValueError(f"{name} {value} is too small{because}; use {name} {need} or more", name)
    return value


def check_gpu_layers(value: int, name: str = "--gpu-layers") -> int:
    """0 or more, or -1 for all."""
    if not (_integer(value) and value >= -1):
        raise _refuse(name, "0 or more, or -1 for all layers", value)
    return value


def check_seconds(value: float, name: str) -> float:
    """A duration: finite and above 0."""
    if not (_number(value) and value > 0):
        raise _refuse(name, "a number of seconds above 0", value)
    return float(value)


SPEAKING_RATES = (0.5, 2.0)  # every engine renders these itself, intelligibly (1.0: the voice's own pace)


def check_rate(value: float, name: str = "--rate") -> float:
    """A speaking rate: 1.0 is the voice's pace, 2.0 twice as fast."""
    lo, hi = SPEAKING_RATES
    if not (_number(value) and lo <= value <= hi):
        raise _refuse(name, f"a speaking rate from {lo:g} to {hi:g} (1 is the voice's own pace)", value)
    return float(value)


def check_max_audio(value: float, name: str = "--max-audio") -> float:
    """The longest audio accepted, in seconds: finite, at least ``MIN_AUDIO_LIMIT``."""
    if not (_number(value) and value >= MIN_AUDIO_LIMIT):
        raise _refuse(name, f"a number of seconds, at least {MIN_AUDIO_LIMIT:g}", value)
    return float(value)


def check_max_body(value: float, name: str = "--max-body") -> float:
    """The largest request body, in MiB: finite, at least ``MIN_BODY_MIB``."""
    if not (_number(value) and value >= MIN_BODY_MIB):
        raise _refuse(name, f"a number of MiB, at least {MIN_BODY_MIB:g}", value)
    return float(value)


def check_api_key(value: str, name: str = "--api-key") -> str:
    """Printable ASCII: it travels in an HTTP header, which carries nothing else reliably."""
    if not all(" " < c <= "~" for c in value):  # the key itself is never shown
        raise InvalidValueError(f"{name} must be printable ASCII without spaces (it is sent in an HTTP header)", name)
    return value
