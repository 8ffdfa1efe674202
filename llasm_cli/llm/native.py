"""Quiet, safe, shared set-up of the llama.cpp library.

Backend init once per process, llama.cpp's and mtmd's logs routed to Python (shown only when
verbose), and the model parameters every llama.cpp model in llasm is loaded with, including
whether ggml's extra CPU buffer types are safe on this machine (see ``cpu_probe``).
"""

from __future__ import annotations

import ctypes
import os
import threading

import llama_cpp

_lock = threading.Lock()
_ready = False
_log_lines: list[str] = []
_MAX_LOG = 200
_verbose = bool(os.environ.get("LLASM_NATIVE_LOG"))
_extra_buffers: bool | None = None


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Keep llama.cpp's chatter out of the terminal; the tail is kept for error messages."""
    if _verbose:
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


def set_verbose(on: bool) -> None:
    """Show llama.cpp's own log on stderr (``--verbose``); otherwise it is only kept for errors."""
    global _verbose
    _verbose = on or bool(os.environ.get("LLASM_NATIVE_LOG"))


def extra_buffers() -> bool:
    """Whether models may use ggml's extra CPU buffer types (AMX, repacked weights) on this machine.

    Decided once per process from the cached probe verdict; when the probe runs now and finds
    them unsafe, one line on stderr says why (later runs stay quiet unless verbose).
    """
    global _extra_buffers
    with _lock:
        if _extra_buffers is None:
            from llasm_cli.llm.cpu_probe import extra_buffers_verdict

            verdict = extra_buffers_verdict()
            _extra_buffers = verdict.extra_buffers
            if _verbose or (verdict.probed and not verdict.extra_buffers):
                state = "on" if verdict.extra_buffers else "off"
                os.write(2, f"llasm: ggml's extra CPU buffer types (AMX, repacked weights) {state}: "
                            f"{verdict.reason}\n".encode())
        return _extra_buffers


def model_params(n_gpu_layers: int = 0):
    """llama_model_params for any model llasm loads: the probe's verdict on extra buffers applied."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = extra_buffers()
    if params.use_extra_bufts and n_gpu_layers == 0:
        # Weights ggml repacks for this CPU are copies: a memory-mapped file's pages they were read
        # from stay resident beside them (a 636 MiB Q4_K_M LLaMA held 630 mapped + 455 repacked
        # MiB). Read into memory instead, each weight is held once (1153 -> 708 MiB).
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return params


def last_log(n: int = 3) -> str:
    """The last non-empty lines llama.cpp logged, to explain a failure."""
    text = "".join(_log_lines).strip().splitlines()
    return " | ".join(line.strip() for line in text[-n:] if line.strip())


def default_threads() -> int:
    """$LLASM_THREADS, else the core count up to 8: llama.cpp decodes fastest without hyper-threads."""
    env = os.environ.get("LLASM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, os.cpu_count() or 1))


def gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (CUDA, Metal, Vulkan, ...)."""
    return bool(llama_cpp.llama_supports_gpu_offload())
