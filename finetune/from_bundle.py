"""Turn a bundle back into a training checkpoint, so a shipped model can be trained further.

A bundle keeps the LLM only as GGUF (often quantized) and the tower in the torch folder; the float
checkpoint it came from may be long gone. This reads the GGUF's tensors back into the Hugging Face
Llama layout (dequantized; q/k rows un-permuted from llama.cpp's RoPE order), takes the adaptor from
the bundle's torch tower, and takes the parts a GGUF cannot give back exactly (the SentencePiece
model, the HF config, the float32 Whisper) from a checkpoint of the same recipe, checking that its
vocabulary and shapes are the bundle's. Used by ``python -m llasm_finetune.demo --continue-from``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import torch
from llasm_export.llm_gguf import map_name

from llasm_cli.errors import CheckpointError
from llasm_cli.formats.bundle import load_bundle
from llasm_cli.model import (
    ADAPTOR_FILE,
    LLM_DIR,
    AdaptorConfig,
    LlasmModel,
    load_strict,
    read_meta,
    read_safetensors,
)

from .checkpoint import load_checkpoint, save_checkpoint


def unpermute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``export.llm_gguf.permute_for_rope``: llama.cpp's interleaved pairs back to rotate-half."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_llm_state(path: Path, hf_names: list[str], n_head: int, n_head_kv: int) -> dict[str, torch.Tensor]:
    """The HF state dict a Llama GGUF holds, as float32: every name in ``hf_names`` must be in the file."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    state = {}
    for name in hf_names:
        gname, perm = map_name(name)
        if gname not in tensors:
            raise CheckpointError(f"{path.name} has no tensor {gname} (for {name}): not the same architecture")
        t = tensors[gname]
        data = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        data = data.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        if perm:
            data = unpermute_for_rope(data, n_head if perm == "q" else n_head_kv)
        state[name] = torch.from_numpy(data.copy())
    return state


def gguf_tokens(path: Path) -> list[str]:
    """The vocabulary a GGUF carries, in id order."""
    reader = gguf.GGUFReader(path)
    field = reader.fields[gguf.Keys.Tokenizer.LIST]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def import_bundle(bundle: Path, like: Path, out: Path, llm_type: str | None = None,
                  adaptor: dict | None = None) -> Path:
    """Write checkpoint ``out`` holding bundle's weights, with ``like``'s tokenizer, LLM config and Whisper.

    ``adaptor`` replaces fields of the adaptor config (e.g. the encoder inputs the next stage trains)."""
    b = load_bundle(bundle)
    if not b.manifest.torch_tower:
        raise CheckpointError(f"{bundle} has no torch tower: its adaptor weights are only in GGUF/ONNX form")
    gguf_path = b.llm_path(llm_type)
    model, tokenizer, _ = load_checkpoint(Path(like))
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if gguf_tokens(gguf_path) != vocab:
        raise CheckpointError(f"{like} has another vocabulary than {gguf_path}: build it from the same recipe and data")
    cfg = model.llm.config
    state = gguf_llm_state(gguf_path, list(model.llm.state_dict()), cfg.num_attention_heads, cfg.num_key_value_heads)
    load_strict(model.llm, state, f"the LLM of {gguf_path}")

    tower_dir = b.torch_tower_path()
    meta = read_meta(tower_dir)
    # only the adaptor: the Whisper stays like's float32 one (the bundle's may be float16)
    load_strict(model.tower.adaptor, read_safetensors(tower_dir / ADAPTOR_FILE), f"the adaptor of {bundle}")
    meta = dataclasses.replace(meta, adaptor=AdaptorConfig.from_dict(meta.adaptor.to_dict() | (adaptor or {})))
    model.tower.cfg = meta.adaptor
    spm = Path(like) / LLM_DIR / "tokenizer.model"
    save_checkpoint(LlasmModel(model.tower, model.llm, model.audio_start_id, model.audio_end_id), tokenizer, meta,
                    Path(out), spm_model=spm if spm.is_file() else None)
    return Path(out)
