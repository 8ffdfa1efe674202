"""Quantized variants: llama.cpp's own quantizer for the LLM, Q8_0 rows for the audio tower.

LLM variants (q8_0, q5_k_m, q4_k_m) are made from the f16 GGUF by ``llama_model_quantize``,
the same code as llama.cpp's ``llama-quantize``. The mmproj tower is written directly in Q8_0
(gguf's reference quantizer) for matrices whose rows are a multiple of 32; convolutions, norms,
biases and the position table stay as mtmd expects them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_path

LLM_QUANTS = {"q8_0": 7, "q5_k_m": 17, "q4_k_m": 15}  # llama_ftype values
TOWER_TYPES = ("f32", "f16", "q8_0")


def quantize_llm(src: Path, dst: Path, qtype: str, threads: int = 0) -> None:
    """Quantize an f16/f32 LLM GGUF with llama.cpp (llama_model_quantize)."""
    import llama_cpp

    from llasm_cli.llm import native

    if qtype not in LLM_QUANTS:
        raise CheckpointError(f"unknown LLM quantization {qtype!r}; choose from {sorted(LLM_QUANTS)}")
    native.init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLM_QUANTS[qtype]
    params.nthread = threads
    with atomic_path(dst) as tmp:  # llama.cpp writes the temporary; dst appears only when it is complete
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise CheckpointError(f"llama.cpp could not quantize {src.name} to {qtype}: {native.last_log()}")


def write_llm_types(folder: Path, files: dict[str, str], write: Callable[[Path, str], None],
                    progress: Callable[[str], None] = lambda step: None) -> None:
    """Each LLM type into ``folder / files[type]``: f32 and f16 by ``write(path, type)``, the quantized
    types by llama.cpp's quantizer from one F16 written for them first (and removed at the end)."""
    f16 = folder / ".llm.f16.tmp.gguf"
    for t, file in files.items():
        progress(f"writing the LLM ({t})")
        if t in LLM_QUANTS:
            if not f16.exists():
                write(f16, "f16")
            quantize_llm(f16, folder / file, t)
        else:
            write(folder / file, t)
    f16.unlink(missing_ok=True)


def tower_tensor(name: str, data: np.ndarray, ftype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """(payload, raw type) for one tower tensor in file type ``ftype``; raw type None = numpy dtype."""
    matrix = data.ndim == 2 and name.endswith(".weight") and "position_embd" not in name
    if ftype == "q8_0" and matrix and data.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data.astype(np.float32), q), q
    if ftype in ("f16", "q8_0") and data.ndim >= 2 and name.endswith(".weight") and "position_embd" not in name:
        return data.astype(np.float16), None
    return data.astype(np.float32), None
