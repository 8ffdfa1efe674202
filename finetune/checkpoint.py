"""Read and write llasm checkpoints: directories any Hugging Face tool can open.

Layout::

    CKPT/llasm.json             adaptor type + sizes, audio token strings, system prompt
    CKPT/llm/                   LlamaForCausalLM folder (config, safetensors, tokenizer)
    CKPT/whisper/               Whisper folder (config.json + model.safetensors)
    CKPT/adaptor.safetensors    adaptor weights
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from llasm_cli.files import atomic_folder
from llasm_cli.model import LLM_DIR, CheckpointMeta, LlasmModel, load_tower, read_meta, save_tower


def save_checkpoint(model: LlasmModel, tokenizer, meta: CheckpointMeta, out: Path, spm_model: Path | None = None) -> None:
    """Write the checkpoint atomically: a temp folder next to ``out`` renamed into place."""
    with atomic_folder(out) as tmp:
        model.llm.save_pretrained(tmp / LLM_DIR)
        tokenizer.save_pretrained(tmp / LLM_DIR)
        if spm_model is not None:
            shutil.copy(spm_model, tmp / LLM_DIR / "tokenizer.model")
        save_tower(model.tower, meta, tmp)


def load_checkpoint(ckpt: Path, dtype: torch.dtype = torch.float32) -> tuple[LlasmModel, object, CheckpointMeta]:
    """The full model, its tokenizer and its metadata."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    tower = load_tower(ckpt, meta)
    llm = LlamaForCausalLM.from_pretrained(ckpt / LLM_DIR, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt / LLM_DIR)
    ids = tokenizer.convert_tokens_to_ids([meta.audio_start, meta.audio_end])
    model = LlasmModel(tower.to(dtype), llm, audio_start_id=ids[0], audio_end_id=ids[1])
    return model, tokenizer, meta

