"""Quiet, shared set-up of the llama.cpp library (backend init once, logs routed to Python)."""

from __future__ import annotations

import ctypes
import os
import threading

import llama_cpp

_lock = threading.Lock()
_ready = False
_log_lines: list[str] = []
_MAX_LOG = 200


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Keep llama.cpp's chatter out of the terminal; the tail is kept for error messages."""
    if os.environ.get("LLASM_NATIVE_LOG"):
        os.write(2, text or b"")
    _log_lines.append((text or b"").decode("utf-8", errors="replace"))
    del _log_lines[:-_MAX_LOG]


def init() -> None:
    """Initialise llama.cpp's backend and its log routing, once per process."""
    global _ready
    with _lock:
        if _ready:
            return
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _ready = True


def last_log(n: int = 3) -> str:
    """The last non-empty lines llama.cpp logged, to explain a failure."""
    text = "".join(_log_lines).strip().splitlines()
    return " | ".join(line.strip() for line in text[-n:] if line.strip())


def default_threads() -> int:
    """Physical-ish core count: llama.cpp decodes fastest without hyper-threads."""
    return max(1, min(8, os.cpu_count() or 1))
