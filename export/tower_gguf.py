"""Write a ``stack-swiglu`` audio tower (Whisper encoder + adaptor) as an mmproj GGUF.

llama.cpp's mtmd loads it as projector type ``ultravox``: Whisper encoder, k-frame stacking,
RMSNorm -> Linear -> SwiGLU (gate on the second half) -> RMSNorm -> Linear.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from llasm_cli.errors import CheckpointError
from llasm_cli.files import write_gguf
from llasm_cli.formats.gguf_keys import tensor_name
from llasm_cli.model import AudioTower

from .quantize import tower_tensor

T = gguf.MODEL_TENSOR
# HF WhisperEncoder / StackSwiGLUAdaptor name -> GGUF tensor (``{bid}`` = layer or conv index)
ENCODER_TO_GGUF: dict[str, gguf.MODEL_TENSOR] = {
    "embed_positions": T.A_ENC_EMBD_POS,
    "conv{bid}": T.A_ENC_CONV1D,
    "layers.{bid}.self_attn.q_proj": T.A_ENC_ATTN_Q,
    "layers.{bid}.self_attn.k_proj": T.A_ENC_ATTN_K,
    "layers.{bid}.self_attn.v_proj": T.A_ENC_ATTN_V,
    "layers.{bid}.self_attn.out_proj": T.A_ENC_OUTPUT,
    "layers.{bid}.self_attn_layer_norm": T.A_ENC_INPUT_NORM,
    "layers.{bid}.final_layer_norm": T.A_ENC_OUTPUT_NORM,
    "layers.{bid}.fc1": T.A_ENC_FFN_UP,
    "layers.{bid}.fc2": T.A_ENC_FFN_DOWN,
    "layer_norm": T.A_POST_NORM,
}
ADAPTOR_TO_GGUF: dict[str, tuple[gguf.MODEL_TENSOR, int | None]] = {
    "norm_pre": (T.A_MM_NORM_PRE, None),
    "linear_1": (T.A_MMPROJ, 1),
    "norm_mid": (T.A_MM_NORM_MID, None),
    "linear_2": (T.A_MMPROJ, 2),
}
FTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def map_encoder_name(name: str) -> str:
    """``layers.3.fc1.weight`` -> ``a.blk.3.ffn_up.weight``; unknown names are an error."""
    module, _, suffix = name.rpartition(".")
    parts = module.split(".")
    bid = None
    if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
        bid, parts[1] = int(parts[1]), "{bid}"
    elif parts[0] in ("conv1", "conv2"):
        bid, parts[0] = int(parts[0][-1]), "conv{bid}"
    key = ".".join(parts)
    if key not in ENCODER_TO_GGUF:
        raise CheckpointError(f"can not map tensor {name!r}")
    return tensor_name(ENCODER_TO_GGUF[key], bid, suffix)


def map_adaptor_name(name: str) -> str:
    module, _, suffix = name.rpartition(".")
    if module not in ADAPTOR_TO_GGUF:
        raise CheckpointError(f"can not map tensor {name!r}")
    tensor, bid = ADAPTOR_TO_GGUF[module]
    return tensor_name(tensor, bid, suffix)


def write_tower_gguf(tower: AudioTower, out: Path, ftype: str = "f32", name: str = "llasm-tower") -> None:
    """Convert the tower to an mmproj GGUF that mtmd runs as ``ultravox``."""
    cfg, wcfg = tower.cfg, tower.whisper_config
    if cfg.type != "stack-swiglu":
        raise CheckpointError(f"adaptor {cfg.type!r} has no llama.cpp graph; it runs on the torch backend only")
    writer = gguf.GGUFWriter(None, "clip")  # the file: see the end
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(FTYPES[ftype])
    writer.add_clip_has_audio_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.ULTRAVOX)
    writer.add_audio_projection_dim(cfg.llm_dim)
    writer.add_audio_embedding_length(wcfg.d_model)
    writer.add_audio_feed_forward_length(wcfg.encoder_ffn_dim)
    writer.add_audio_block_count(wcfg.encoder_layers)
    writer.add_audio_head_count(wcfg.encoder_attention_heads)
    writer.add_audio_num_mel_bins(wcfg.num_mel_bins)
    writer.add_audio_attention_layernorm_eps(1e-5)
    writer.add_audio_stack_factor(cfg.stack_factor)

    tensors: list[tuple[str, np.ndarray]] = []
    for hf_name, t in tower.encoder.state_dict().items():
        data = t.detach().float().numpy()
        if hf_name in ("conv1.bias", "conv2.bias"):
            data = data[:, None]  # mtmd adds conv biases as [d, 1]
        tensors.append((map_encoder_name(hf_name), data))
    for hf_name, t in tower.adaptor.state_dict().items():
        if hf_name == "boundary":  # learned start/end-of-audio rows: the bundle's audio-boundary.npy, not mtmd's
            continue
        tensors.append((map_adaptor_name(hf_name), t.detach().float().numpy()))
    for gguf_name, data in tensors:
        payload, raw = tower_tensor(gguf_name, data, ftype)
        writer.add_tensor(gguf_name, np.ascontiguousarray(payload), raw_dtype=raw)

    write_gguf(writer, out)
