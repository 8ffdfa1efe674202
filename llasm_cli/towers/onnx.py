"""The onnx backend: ONNX Runtime runs the bundle's ``tower.onnx`` (stack-swiglu; no PyTorch needed).

The graph (export/onnx_tower.py) maps an unpadded log-mel (1, n_mels, T) to (1, T / 2k, n_embd)
in float32, the same numbers as the torch backend in float32. It serves the chunked input mode
(``embed_mel``, one call per chunk) and the unpadded one (each window's real audio only); a
padded-only model gets its whole 3000-frame windows.

ONNX Runtime's worker threads spin between the operators of one call but stop the moment it
returns (``session.force_spinning_stop``): spinning after it would take the CPU from llama.cpp
decoding beside them, and blocking between operators costs a wake-up per operator, which after
the idle of a streamed chunk's 0.5 s made a 1.5 s window's encode ~58 ms instead of ~42 (2 cores,
measured in a streaming loop). CUDA or CoreML run the graph where this onnxruntime build offers
them, the CPU otherwise.

On the CPU, weights stored in float16 (export's ``half_weights``: a Cast to float32 after each) stay
float16 in memory and are cast as each call needs them: constant folding would keep a float32 copy
of every matrix (twice the file, plus ~35% for MLAS's packed copies) for the whole process. Measured
on whisper-base + adaptor (50 MiB file, 2 cores): session ~180 -> ~105 MiB at its peak, each call
~10-15% slower (the casts: ~14 ms of a 3 s chunk's ~130 ms). A float32 file runs as fast either way.
The casts cost about the same whatever the window, so a model that streams keeps the float32 copies:
its last chunk (at most 1.5 s of audio) is what is left to encode once the user stops, 51 -> 33 ms
there (0.5 s: 30 -> 19 ms), for ~53 MiB more. Not in a one-shot process (``llasm ask``): making
the copies takes ~200-290 ms of the session's opening, more than the casts of its one call cost
(built-in model, 1.8 s question: open 290-400 -> 107 ms, encode 38 -> 55-61 ms).
"""

from __future__ import annotations

import numpy as np

from llasm_cli.audio.mel import log_mel_spectrogram, unpadded_mel
from llasm_cli.errors import BackendUnavailableError, ModelFileError
from llasm_cli.formats.bundle import Bundle
from llasm_cli.formats.gguf_check import check_widths
from llasm_cli.onnx_runtime import first_line, import_ort, quiet_session_options
from llasm_cli.towers.base import TowerBackend

INPUT, OUTPUT = "mel", "embeddings"
ACCELERATORS = ("CUDAExecutionProvider", "CoreMLExecutionProvider")  # used first where the build has them


def pick_providers(ort) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ACCELERATORS if p in available] + ["CPUExecutionProvider"]


class OnnxTower(TowerBackend):
    name = "onnx"

    def __init__(self, bundle: Bundle, n_threads: int | None = None, providers: list[str] | None = None,
                 one_shot: bool = False) -> None:
        super().__init__()
        ort = import_ort()
        m = bundle.manifest
        if m.adaptor != "stack-swiglu":
            raise BackendUnavailableError(f"the onnx backend runs stack-swiglu towers, not {m.adaptor!r}: use --backend torch")
        path = bundle.onnx_tower_path()
        if n_threads is None:
            from llasm_cli.llm.native import default_threads

            n_threads = default_threads()
        so = quiet_session_options(ort, n_threads)
        providers = providers or pick_providers(ort)
        disabled = None
        streams = "chunked" in m.encoder_input  # short calls: the casts would be a third of each (module notes)
        self.float16_weights = providers == ["CPUExecutionProvider"] and (one_shot or not streams)
        if self.float16_weights:  # float16 weights stay float16 (cast per call)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # ALL's layout passes fold too
            disabled = ["ConstantFolding"]
        # opened by path: a tower over ~1.5 GB keeps its weights in <name>.data beside the graph, and
        # ONNX Runtime (1.24 on) refuses weight files that a hostile graph names outside its folder
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers, disabled_optimizers=disabled)
        except Exception as exc:  # ONNX Runtime raises its own classes: bad protobuf, bad graph, missing data file
            raise ModelFileError(f"ONNX Runtime could not load {path}: {first_line(exc)}") from None
        self.providers = self.session.get_providers()
        self._check_io(path, m.n_mels, m.llm_dim)
        self.n_embd = m.llm_dim
        self.adaptor = m.adaptor
        self.stack_factor = m.stack_factor
        self.tokens_per_window = m.tokens_per_window
        self.trim = bundle.trim
        self.n_mels = m.n_mels
        self.unpadded = "unpadded" in m.encoder_input
        self.chunked = "chunked" in m.encoder_input
        self.chunk_seconds, self.context_seconds = m.chunk_seconds, m.context_seconds

    def _check_io(self, path, n_mels: int, llm_dim: int) -> None:
        """One input (1, n_mels, T) and one output (1, tokens, llm_dim), as export/onnx_tower.py writes them."""
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in ins] != [INPUT] or OUTPUT not in [o.name for o in outs]:
            raise ModelFileError(f"{path.name} is not a llasm ONNX tower: it takes {[i.name for i in ins]} and gives "
                                 f"{[o.name for o in outs]}, not {INPUT!r} -> {OUTPUT!r}")
        mel_shape = ins[0].shape
        out_shape = next(o.shape for o in outs if o.name == OUTPUT)
        if len(mel_shape) != 3 or mel_shape[1] != n_mels or len(out_shape) != 3:
            raise ModelFileError(f"{path.name} takes a mel of shape {mel_shape}; the manifest says {n_mels} mel bins")
        if isinstance(out_shape[2], int):
            check_widths(out_shape[2], llm_dim, path.name)

    def embed_mel(self, mel: np.ndarray) -> np.ndarray:
        return self._run(mel[None])[0]

    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for w in windows:
            if self.unpadded:  # only the real audio, as the adaptor was trained
                mel = unpadded_mel(w, self.n_mels, self.stack_factor)
            else:
                mel = log_mel_spectrogram(w, self.n_mels)
            out.append(self._run(mel[None])[0])
        return out

    def _run(self, mel: np.ndarray) -> np.ndarray:
        try:
            (emb,) = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(mel, dtype=np.float32)})
        except Exception as exc:  # a graph that loads but cannot run this input
            raise ModelFileError(f"ONNX Runtime failed on the audio tower: {first_line(exc)}") from None
        if emb.ndim != 3 or emb.shape[2] != self.n_embd:
            raise ModelFileError(f"the ONNX tower gave embeddings of shape {emb.shape}, not (1, n, {self.n_embd})")
        return emb

    def close(self) -> None:
        self.session = None
