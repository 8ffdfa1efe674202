"""Read and write llasm checkpoints: directories any Hugging Face tool can open.

Layout::

    CKPT/llasm.json             adaptor type + sizes, audio token strings, system prompt
    CKPT/llm/                   LlamaForCausalLM folder (config, safetensors, tokenizer)
    CKPT/whisper/               Whisper folder (config.json + model.safetensors)
    CKPT/adaptor.safetensors    adaptor weights
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperConfig

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_folder

from .model import AUDIO_END, AUDIO_START, AdaptorConfig, AudioTower, LlasmModel

CHECKPOINT_FORMAT = "llasm-checkpoint"
CHECKPOINT_VERSION = 1
META_FILE = "llasm.json"
LLM_DIR = "llm"
WHISPER_DIR = "whisper"
ADAPTOR_FILE = "adaptor.safetensors"
WHISPER_WEIGHTS = "model.safetensors"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass
class CheckpointMeta:
    """What ``llasm.json`` holds."""

    adaptor: AdaptorConfig
    audio_start: str = AUDIO_START
    audio_end: str = AUDIO_END
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "adaptor": self.adaptor.to_dict(),
            "audio_start": self.audio_start,
            "audio_end": self.audio_end,
            "system_prompt": self.system_prompt,
        }


def read_meta(ckpt: Path) -> CheckpointMeta:
    """Parse and check ``llasm.json``; every problem names the file and what to fix."""
    path = Path(ckpt) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a llasm checkpoint: {META_FILE} is missing")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        return CheckpointMeta(
            adaptor=AdaptorConfig.from_dict(data["adaptor"]),
            audio_start=data["audio_start"],
            audio_end=data["audio_end"],
            system_prompt=data["system_prompt"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is malformed: {exc}") from None


def save_checkpoint(model: LlasmModel, tokenizer, meta: CheckpointMeta, out: Path, spm_model: Path | None = None) -> None:
    """Write the checkpoint atomically: a temp folder next to ``out`` renamed into place."""
    with atomic_folder(out) as tmp:
        model.llm.save_pretrained(tmp / LLM_DIR)
        tokenizer.save_pretrained(tmp / LLM_DIR)
        if spm_model is not None:
            shutil.copy(spm_model, tmp / LLM_DIR / "tokenizer.model")
        (tmp / WHISPER_DIR).mkdir()
        model.tower.whisper_config.save_pretrained(tmp / WHISPER_DIR)
        whisper_state = {f"encoder.{k}": v for k, v in model.tower.encoder.state_dict().items()}
        if model.tower.decoder is not None:
            whisper_state |= {f"decoder.{k}": v for k, v in model.tower.decoder.state_dict().items()}
        save_file({k: v.contiguous() for k, v in whisper_state.items()}, str(tmp / WHISPER_DIR / WHISPER_WEIGHTS))
        adaptor_state = {k: v.contiguous() for k, v in model.tower.adaptor.state_dict().items()}
        save_file(adaptor_state, str(tmp / ADAPTOR_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load weights, naming every missing, unexpected or mis-shaped tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
            )
    module.load_state_dict(state)


def whisper_state(whisper_dir: Path) -> dict[str, torch.Tensor]:
    """Whisper weights keyed ``encoder.*`` / ``decoder.*`` whatever HF class saved them."""
    files = sorted(Path(whisper_dir).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {whisper_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= _read_safetensors(f)
    return {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("proj_out")}


def load_tower(ckpt: Path, meta: CheckpointMeta | None = None) -> AudioTower:
    """Rebuild the audio tower (Whisper part + adaptor) from a checkpoint directory."""
    ckpt = Path(ckpt)
    meta = meta or read_meta(ckpt)
    whisper_cfg = WhisperConfig.from_pretrained(ckpt / WHISPER_DIR)
    tower = AudioTower(whisper_cfg, meta.adaptor)
    state = whisper_state(ckpt / WHISPER_DIR)
    _load_strict(tower.encoder, {k[8:]: v for k, v in state.items() if k.startswith("encoder.")}, "whisper encoder")
    if tower.decoder is not None:
        _load_strict(tower.decoder, {k[8:]: v for k, v in state.items() if k.startswith("decoder.")}, "whisper decoder")
    _load_strict(tower.adaptor, _read_safetensors(ckpt / ADAPTOR_FILE), "adaptor")
    return tower.eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


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


def llm_config(ckpt: Path) -> LlamaConfig:
    return LlamaConfig.from_pretrained(Path(ckpt) / LLM_DIR)
