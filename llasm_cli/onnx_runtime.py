"""ONNX Runtime beside llama.cpp: imported on demand, sessions whose threads stop when a call returns.

Two things in llasm run ONNX graphs, the onnx audio tower (towers/onnx.py) and the Silero voice-activity
model (audio/vad_onnx.py); both make their sessions here, so both leave the CPU to llama.cpp between calls.
"""

from __future__ import annotations

from llasm_cli.errors import BackendUnavailableError


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "the onnx backend needs ONNX Runtime: pip install onnxruntime (or use --backend torch or ggml)"
        ) from None
    return onnxruntime


def quiet_session_options(ort, n_threads: int):
    """Session options for a model run beside llama.cpp: ``n_threads`` that spin only while a call
    runs (idle, they would take the CPU from decoding), one operator at a time, errors only in the log."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only; they come back as exceptions anyway
    return so


def first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
