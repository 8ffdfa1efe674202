"""A Hugging Face Ultravox checkpoint -> an LLM GGUF + an audio mmproj GGUF that llasm runs (ggml backend).

    python -m llasm_export.ultravox CHECKPOINT OUT [--llm PATH] [--type f16] [--tower-type f16]

An Ultravox checkpoint (fixie-ai/ultravox) holds the Whisper encoder as ``audio_tower.*`` (Hugging
Face WhisperEncoder names) and the projector as ``multi_modal_projector.{ln_pre,linear_1,ln_mid,
linear_2}``; its config names the stack factor and the LLM (``text_model_id``), whose weights are
usually not in the checkpoint. The output folder is a published pair, as llama.cpp's own converter
(``convert_hf_to_gguf.py --mmproj``) lays it out: ``mmproj-NAME-TYPE.gguf`` (projector type
``ultravox``) beside the LLM GGUF. llasm opens such a folder as a model (published.py); Ultravox's
stack factor 8 does not divide 1500, so the runtime runs mtmd's encoder alone and the projector in
numpy (towers/encoder_only.py), and the folder is not a llasm bundle with a manifest (whose
stack-swiglu towers must divide 1500).

The LLM: ``--llm`` as a GGUF file (copied as it is, e.g. the Llama 3.2 GGUF people already have) or
a Hugging Face Llama folder (converted, SentencePiece vocabularies only); without ``--llm``, the
config's ``text_model_id`` from the Hugging Face cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from llasm_cli.audio.geometry import N_ENCODER_FRAMES
from llasm_cli.errors import CheckpointError, LlasmError
from llasm_cli.files import atomic_folder, write_gguf
from llasm_cli.formats.gguf_check import validate_audio_mmproj, validate_llm
from llasm_cli.formats.gguf_keys import embedding_length, tensor_name

from .llm_gguf import write_llm_gguf
from .quantize import LLM_QUANTS, TOWER_TYPES, tower_tensor, write_llm_types
from .tower_gguf import FTYPES, map_encoder_name

T = gguf.MODEL_TENSOR
ARCHITECTURE = "UltravoxModel"
ENCODER_PREFIX = "audio_tower."
# Ultravox projector module -> GGUF tensor (llama.cpp's tensor_mapping for "audio.multi_modal_projector.*")
PROJECTOR_TO_GGUF: dict[str, tuple[gguf.MODEL_TENSOR, int | None]] = {
    "multi_modal_projector.ln_pre": (T.A_MM_NORM_PRE, None),
    "multi_modal_projector.linear_1": (T.A_MMPROJ, 1),
    "multi_modal_projector.ln_mid": (T.A_MM_NORM_MID, None),
    "multi_modal_projector.linear_2": (T.A_MMPROJ, 2),
}
LAYER_NORM_EPS = 1e-5  # Whisper's (what the converter writes)
LLM_TYPES = ("f32", "f16", *LLM_QUANTS)


def is_ultravox(folder: Path) -> bool:
    """Whether ``folder`` is a Hugging Face Ultravox checkpoint (its config names the architecture)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ARCHITECTURE in (config.get("architectures") or [])


def read_config(ckpt: Path) -> dict:
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {ckpt / 'config.json'}: {exc}") from None
    if ARCHITECTURE not in (config.get("architectures") or []):
        raise CheckpointError(f"{ckpt} is not an Ultravox checkpoint (architectures {config.get('architectures')})")
    if config.get("projector_act", "swiglu") != "swiglu":
        raise CheckpointError(f"projector_act {config['projector_act']!r}: llama.cpp's ultravox graph runs SwiGLU only")
    if config.get("projector_ln_mid") is False:
        raise CheckpointError("this Ultravox projects with ln_post after linear_2 (projector_ln_mid false), which "
                              "llama.cpp's ultravox graph has no norm for; Ultravox 0.4.1 and later use ln_mid")
    k = config.get("stack_factor")
    audio = config.get("audio_config") or {}
    text = config.get("text_config") or {}
    if type(k) is not int or not 1 <= k <= N_ENCODER_FRAMES:
        raise CheckpointError(f"stack_factor must be a whole number from 1 to {N_ENCODER_FRAMES}, not {k!r}")
    for key in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins"):
        if type(audio.get(key)) is not int:
            raise CheckpointError(f"config.json: audio_config.{key} is missing (a Whisper encoder config)")
    if audio.get("max_source_positions", N_ENCODER_FRAMES) != N_ENCODER_FRAMES:
        raise CheckpointError(f"audio_config.max_source_positions must be {N_ENCODER_FRAMES} (30 s windows)")
    if type(text.get("hidden_size")) is not int:
        raise CheckpointError("config.json: text_config.hidden_size (the LLM's width) is missing")
    return config


def read_tensors(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors in {ckpt}")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state |= load_file(str(f))
    return state


def map_tensor(name: str) -> str:
    """``audio_tower.layers.3.fc1.weight`` -> ``a.blk.3.ffn_up.weight``; anything else is an error."""
    if name.startswith(ENCODER_PREFIX):
        return map_encoder_name(name[len(ENCODER_PREFIX):])
    module, _, suffix = name.rpartition(".")
    if module in PROJECTOR_TO_GGUF and suffix == "weight":
        kind, bid = PROJECTOR_TO_GGUF[module]
        return tensor_name(kind, bid, suffix)
    if name.startswith(("language_model.", "multi_modal_projector.ln_post")):
        raise CheckpointError(f"can not map tensor {name!r}: this checkpoint carries "
                              + ("its LLM's weights, which llasm does not export yet" if name.startswith("language_model.")
                                 else "ln_post, which llama.cpp's ultravox graph has no norm for"))
    raise CheckpointError(f"can not map tensor {name!r}")


def write_mmproj(config: dict, state: dict[str, np.ndarray], out: Path, ftype: str, name: str) -> None:
    """The audio tower as an mmproj GGUF with the keys and tensors llama.cpp's converter writes."""
    audio, k = config["audio_config"], config["stack_factor"]
    d, width = audio["d_model"], config["text_config"]["hidden_size"]
    want = {
        "multi_modal_projector.ln_pre.weight": (d * k,),
        "multi_modal_projector.linear_2.weight": (width, None),
    }
    for hf_name, shape in want.items():
        got = state.get(hf_name)
        if got is None or got.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, got.shape)):
            raise CheckpointError(f"tensor {hf_name!r} has shape {None if got is None else got.shape}, "
                                  f"expected {tuple('*' if s is None else s for s in shape)} (stack factor {k}, "
                                  f"encoder width {d}, LLM width {width})")
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(FTYPES[ftype])
    writer.add_clip_has_audio_encoder(True)
    writer.add_audio_projection_dim(width)
    writer.add_audio_embedding_length(d)
    writer.add_audio_feed_forward_length(audio["encoder_ffn_dim"])
    writer.add_audio_block_count(audio["encoder_layers"])
    writer.add_audio_head_count(audio["encoder_attention_heads"])
    writer.add_clip_projector_type(gguf.VisionProjectorType.ULTRAVOX)
    writer.add_audio_num_mel_bins(audio["num_mel_bins"])
    writer.add_audio_attention_layernorm_eps(LAYER_NORM_EPS)
    writer.add_audio_stack_factor(k)
    for hf_name in sorted(state):
        gguf_name = map_tensor(hf_name)
        data = np.asarray(state[hf_name], dtype=np.float32)
        if hf_name.endswith(("conv1.bias", "conv2.bias")):
            data = data[:, None]  # mtmd adds conv biases as [d, 1]
        if ".conv1d." in gguf_name and gguf_name.endswith(".weight"):
            payload, raw = data.astype(np.float16), None  # as llama.cpp's converter: F16 whatever the type
        else:
            payload, raw = tower_tensor(gguf_name, data, ftype)
        writer.add_tensor(gguf_name, np.ascontiguousarray(payload), raw_dtype=raw)
    write_gguf(writer, out)


def find_llm(config: dict, llm: Path | None) -> Path:
    """The LLM to pair the tower with: ``llm``, else the config's text_model_id in the Hugging Face cache."""
    if llm is not None:
        if not llm.exists():
            raise CheckpointError(f"LLM not found: {llm}")
        return llm
    repo = config.get("text_model_id")
    if not isinstance(repo, str) or not repo:
        raise CheckpointError("the checkpoint's config names no text_model_id: pass the LLM with --llm")
    from llasm_cli.hub.pull import cached_snapshot, resolve

    try:
        found = cached_snapshot(resolve(repo))
    except LlasmError:
        found = None
    if found is None:
        raise CheckpointError(f"the LLM this checkpoint names, {repo}, is not in the Hugging Face cache: download it "
                              "(`llasm pull` takes any repository) or pass --llm (a GGUF file or a Llama folder)")
    return found


def export_ultravox(
    ckpt: Path, out: Path, llm: Path | None = None, types: tuple[str, ...] = ("f16",), tower_type: str = "f16",
    name: str | None = None, overwrite: bool = False, progress: Callable[[str], None] = lambda step: None,
) -> list[Path]:
    """Write ``out``: the LLM GGUF(s) and the mmproj GGUF. Returns the files written."""
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --force to replace it")
    if tower_type not in TOWER_TYPES:
        raise CheckpointError(f"unknown tower type {tower_type!r}; choose from {TOWER_TYPES}")
    bad = [t for t in types if t not in LLM_TYPES]
    if bad or not types:
        raise CheckpointError(f"unknown LLM type(s) {bad}; choose from {LLM_TYPES}")
    config = read_config(ckpt)
    state = read_tensors(ckpt)
    for hf_name in state:
        map_tensor(hf_name)  # every name known before anything is written
    llm_src = find_llm(config, Path(llm) if llm is not None else None)
    name = name or ckpt.name
    width = config["text_config"]["hidden_size"]
    with atomic_folder(out) as tmp:
        progress(f"writing the audio tower ({tower_type})")
        tower = tmp / f"mmproj-{name}-{tower_type}.gguf"
        write_mmproj(config, state, tower, tower_type, f"{name}-tower")
        validate_audio_mmproj(tower, width)
        if llm_src.is_file():
            progress(f"copying the LLM {llm_src.name}")
            info = validate_llm(llm_src)
            got = info.fields.get(embedding_length(info.fields[gguf.Keys.General.ARCHITECTURE]))
            if got != width:
                raise CheckpointError(f"{llm_src.name} is {got} wide; "
                                      f"the projector makes {width}-wide embeddings")
            shutil.copyfile(llm_src, tmp / llm_src.name)
        else:
            write_llm_types(tmp, {t: f"{name}-llm-{t}.gguf" for t in types},
                            partial(write_llm_gguf, llm_src, name=name), progress)
    return sorted(out.glob("*.gguf"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--llm", type=Path, help="the LLM: a GGUF file or a Llama folder (default: text_model_id, cached)")
    parser.add_argument("--type", action="append", dest="types", help=f"LLM type(s): {', '.join(LLM_TYPES)}")
    parser.add_argument("--tower-type", default="f16", help=f"mmproj type: {', '.join(TOWER_TYPES)}")
    parser.add_argument("--name")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        files = export_ultravox(args.checkpoint, args.out, args.llm, tuple(args.types or ["f16"]), args.tower_type,
                                args.name, args.force)
    except LlasmError as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n".join(str(f) for f in files))


if __name__ == "__main__":
    main()
