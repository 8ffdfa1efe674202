"""The original LLaSM release (LinkSoul-AI/LLaSM: LinkSoul/LLaSM-Cllama2) -> a runnable llasm bundle.

    llasm export LLASM_DIR OUT [--whisper WHISPER_DIR] [--type q4_k_m] [--tower-type f16|f32]
    python -m llasm_export.llasm_v1 LLASM_DIR OUT [--whisper WHISPER_DIR] [--type q4_k_m] ...

The checkpoint (transformers 4.31, ``model_type: llaaa``): ``config.json`` (LLaMA keys plus
``mm_audio_tower``, ``mm_hidden_size``, ``audio_token_len``), ``pytorch_model-0000N-of-00003.bin``
shards with ``pytorch_model.bin.index.json``, standard LLaMA tensor names plus
``model.mm_projector.{weight,bias}`` (Linear mm_hidden_size -> hidden_size), and a LLaMA
SentencePiece tokenizer. The shards are pickles: they are read with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers, so a shard can never run code.

The audio path is Whisper's whole encoder-decoder, whose weights are not in the checkpoint: LLaSM
loads ``mm_audio_tower`` (``openai/whisper-large-v2``), feeds the decoder 64 copies of
``<|startoftranscript|>`` against the encoder's output and projects the decoder's last hidden state
(64 x 1280) with ``mm_projector``. ``--whisper`` names that Whisper folder; by default it is the
Hugging Face cache's snapshot of ``mm_audio_tower`` (``llasm pull whisper-large-v2``).

The bundle: the LLM as GGUF (F16 or F32 written here, other types from llama.cpp's quantizer, the
three audio tokens kept in the vocabulary), the audio tower for the torch backend (Whisper
encoder + decoder + projector as adaptor ``llasm-v1``; llama.cpp's mtmd has no Whisper decoder),
and a manifest whose prompt is LLaSM's own (``infer_tokenize.tokenize_Cllama2``), token for token::

    <<SYS>>\\n{system}\\n<</SYS>>\\n\\n <s> [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<au_start> 64 x <au_patch> <au_end> [/INST]

the system block once without BOS, then BOS and the instruction. The GGUF's chat template writes
exactly that (with BOS as text, and llama.cpp's automatic BOS off), the 64 patch positions take
the projector's output, and the bundle keeps LLaSM's system prompt and temperature 0.2.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gguf

from llasm_cli.errors import CheckpointError, LlasmError
from llasm_cli.files import atomic_folder, write_gguf
from llasm_cli.formats.bundle import Manifest, llm_file
from llasm_cli.model import DEFAULT_SYSTEM_PROMPT, AdaptorConfig, CheckpointMeta

from .bundle import write_tower_and_manifest
from .llm_gguf import SKIPPED_SUFFIXES, add_llama_tensors, llama_writer, map_name, read_vocab
from .quantize import LLM_QUANTS, write_llm_types

MODEL_TYPE = "llaaa"
INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
PROJECTOR_PREFIX = "model.mm_projector."
AUDIO_PATCH, AUDIO_START, AUDIO_END = "<au_patch>", "<au_start>", "<au_end>"
AUDIO_TOKENS = (AUDIO_PATCH, AUDIO_START, AUDIO_END)  # the order infer.py adds them in
LLM_TYPES = ("f32", "f16", *LLM_QUANTS)
TOWER_DTYPES = {"f32": "float32", "f16": "float16"}  # the torch tower's stored precision
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps",
                 "max_position_embeddings", "vocab_size", "mm_audio_tower", "mm_hidden_size", "audio_token_len")
# LLaSM's Cllama2 prompt (infer_tokenize.tokenize_Cllama2): the system block once on its own, then per
# user turn BOS + "[INST] " (+ the system block again on the first) + content + " [/INST] "; answers
# end with EOS. BOS is written as text ("<s>" is a control token, parsed from template text) because
# llama.cpp's automatic BOS would come before the first system block.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{{ system }}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<s>[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST] ' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def is_llasm_v1(folder: Path) -> bool:
    """Whether ``folder`` is an original LLaSM checkpoint (its config.json says model_type llaaa)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


def read_config(src: Path) -> dict:
    """config.json, checked: a LLaMA without rope scaling, with LLaSM's audio keys."""
    path = src / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{src} is not an original LLaSM checkpoint (model_type {config.get('model_type')!r}, "
                              f"expected {MODEL_TYPE!r})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    if config.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling is not supported by the exporter yet")
    for key in ("mm_hidden_size", "audio_token_len", "hidden_size", "num_attention_heads", "num_hidden_layers"):
        if type(config[key]) is not int or config[key] < 1:
            raise CheckpointError(f"{path}: {key} must be a positive whole number, not {config[key]!r}")
    for key in ("bos_token_id", "eos_token_id"):
        if type(config.get(key, 0)) is not int:
            raise CheckpointError(f"{path}: {key} must be one token id, not {config[key]!r}")
    return config


def shard_files(src: Path) -> list[Path]:
    """The weight files: those ``pytorch_model.bin.index.json`` names, or one ``pytorch_model.bin``."""
    index = src / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from None
        names = sorted(set(weight_map.values()))
        if any(not isinstance(n, str) or Path(n).name != n for n in names):
            raise CheckpointError(f"{index} names a weight file outside the checkpoint folder")
        files = [src / n for n in names]
    else:
        files = [src / SINGLE_FILE]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{src} is incomplete: {missing} missing")
    return files


def load_shard(path: Path) -> dict:
    """One pickled shard, tensors only: ``weights_only=True`` refuses any other object before it is built."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a pre-zip (legacy) file cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name} holds objects other than tensors, which llasm will not unpickle (they could run code): "
            f"{reason}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch weight file: {exc}") from None
    if not isinstance(state, dict) or any(not isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} must hold a dict of tensors, not {type(state).__name__}")
    return state


def read_state(src: Path) -> dict:
    """Every tensor of the checkpoint, keyed by its Hugging Face name (memory-mapped where possible)."""
    state: dict = {}
    for f in shard_files(src):
        part = load_shard(f)
        twice = sorted(set(state) & set(part))
        if twice:
            raise CheckpointError(f"{f.name} repeats tensors of another shard: {twice[:5]}")
        state |= part
    return state


def split_projector(state: dict, config: dict) -> tuple[dict, dict]:
    """(LLM tensors, the projector as LlasmV1Adaptor's ``mm_projector.{weight,bias}``), shapes checked."""
    llm = {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)}
    proj = {"mm_projector." + k[len(PROJECTOR_PREFIX):]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    want = {"mm_projector.weight": (config["hidden_size"], config["mm_hidden_size"]),
            "mm_projector.bias": (config["hidden_size"],)}
    for key, shape in want.items():
        if key not in proj:
            raise CheckpointError(f"the checkpoint has no model.{key}: not a LLaSM model with its audio projector")
        if tuple(proj[key].shape) != shape:
            raise CheckpointError(f"model.{key} has shape {tuple(proj[key].shape)}, expected {shape} "
                                  "(hidden_size x mm_hidden_size)")
    unknown = sorted(set(proj) - set(want))
    if unknown:
        raise CheckpointError(f"can not map tensor 'model.{unknown[0]}'")
    return llm, proj


def read_tokens(src: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[int], dict[str, int]]:
    """The vocabulary with the three audio tokens as control tokens, at the ids LLaSM gives them.

    infer.py adds ``<au_patch>``, ``<au_start>``, ``<au_end>`` to the tokenizer (a no-op for tokens
    it already has): each missing one takes the next id after the tokenizer's last token.
    """
    tokens, scores, types = read_vocab(src, n_vocab)
    real = [i for i, t in enumerate(types) if t != gguf.TokenType.UNUSED]
    next_id = (max(real) + 1) if real else 0
    ids: dict[str, int] = {}
    for piece in AUDIO_TOKENS:
        raw = piece.encode()
        if raw in tokens:
            ids[piece] = tokens.index(raw)
        else:
            ids[piece], next_id = next_id, next_id + 1
        if ids[piece] >= n_vocab:
            raise CheckpointError(f"{piece} would be token {ids[piece]}, but the embedding has only {n_vocab} rows")
        tokens[ids[piece]], scores[ids[piece]], types[ids[piece]] = raw, -1000.0, gguf.TokenType.CONTROL
    return tokens, scores, types, ids


def write_llm(config: dict, state: dict, src: Path, out: Path, ftype: str, name: str) -> None:
    """The LLaMA half as a ``llama`` GGUF (f32 or f16): LLaSM's vocabulary, template and BOS handling."""
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    if "model.embed_tokens.weight" not in state:
        raise CheckpointError("the checkpoint has no model.embed_tokens.weight")
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    tokens, scores, types, _ = read_tokens(src, n_vocab)
    names = [k for k in sorted(state) if not k.endswith(SKIPPED_SUFFIXES)]
    mapped = {k: map_name(k) for k in names}  # every name known before anything is written

    writer = llama_writer(config, n_vocab, ftype, name)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(int(config.get("bos_token_id", 1)))
    writer.add_eos_token_id(int(config.get("eos_token_id", 2)))
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)  # the template writes BOS after the first system block
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    add_llama_tensors(writer, state, mapped, n_head, n_head_kv, ftype)
    write_gguf(writer, out)


def find_whisper(config: dict, whisper: Path | None) -> Path:
    """The Whisper folder: ``whisper``, else ``mm_audio_tower`` as a folder or from the Hugging Face cache."""
    if whisper is not None:
        if not Path(whisper).is_dir():
            raise CheckpointError(f"Whisper folder not found: {whisper}")
        return Path(whisper)
    named = config["mm_audio_tower"]
    if isinstance(named, str) and Path(named).is_dir():
        return Path(named)
    from llasm_cli.hub.pull import cached_snapshot, resolve

    try:
        found = cached_snapshot(resolve(named)) if isinstance(named, str) else None
    except LlasmError:
        found = None
    if found is None:
        raise CheckpointError(f"LLaSM's audio tower {named!r} is not in the Hugging Face cache: "
                              "`llasm pull whisper-large-v2`, or pass --whisper DIR (a Whisper folder)")
    return found


def whisper_config(folder: Path, config: dict):
    """The Whisper folder's WhisperConfig, checked against what LLaSM's projector and decoder queries need."""
    from transformers import WhisperConfig

    try:
        wcfg = WhisperConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder} is not a Whisper folder: {exc}") from None
    if wcfg.d_model != config["mm_hidden_size"]:
        raise CheckpointError(f"the Whisper in {folder} is {wcfg.d_model} wide, but LLaSM's projector reads "
                              f"mm_hidden_size {config['mm_hidden_size']}: is it whisper-large-v2?")
    if config["audio_token_len"] > wcfg.max_target_positions:
        raise CheckpointError(f"audio_token_len {config['audio_token_len']} exceeds the Whisper decoder's "
                              f"{wcfg.max_target_positions} positions")
    return wcfg


def whisper_weights(folder: Path) -> dict:
    """Whisper's weights keyed ``encoder.*`` / ``decoder.*`` (safetensors, else pickled .bin read weights-only)."""
    from llasm_cli.model import whisper_state

    if any(folder.glob("*.safetensors")):
        return whisper_state(folder)
    state: dict = {}
    for f in shard_files(folder):
        state |= load_shard(f)
    return {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("proj_out")}


def build_llasm_tower(config: dict, projector: dict, whisper: Path):
    """Whisper encoder + decoder + mm_projector as the runtime's AudioTower (adaptor llasm-v1), and its meta."""
    from llasm_cli.model import build_tower

    wcfg = whisper_config(whisper, config)
    cfg = AdaptorConfig(type="llasm-v1", encoder_dim=wcfg.d_model, llm_dim=config["hidden_size"],
                        n_queries=config["audio_token_len"], decoder_token_id=int(wcfg.decoder_start_token_id))
    tower = build_tower(wcfg, cfg, whisper_weights(whisper), {k: v.float() for k, v in projector.items()})
    return tower.eval(), CheckpointMeta(adaptor=cfg, audio_start=AUDIO_START, audio_end=AUDIO_END,
                                        system_prompt=DEFAULT_SYSTEM_PROMPT)


def export_llasm_v1(
    src: Path, out: Path, whisper: Path | None = None, types: tuple[str, ...] = ("f16",), tower_type: str = "f16",
    name: str | None = None, overwrite: bool = False, progress: Callable[[str], None] = lambda step: None,
) -> Manifest:
    """Convert the LLaSM checkpoint ``src`` (+ its Whisper) into bundle ``out``; returns the manifest.

    LLM types f32/f16 are written here, q8_0/q5_k_m/q4_k_m by llama.cpp's quantizer from the F16;
    ``tower_type`` f16 (what LLaSM ran) or f32 is the torch tower's stored precision.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CheckpointError(f"checkpoint not found: {src}")
    bad = [t for t in types if t not in LLM_TYPES]
    if bad or not types:
        raise CheckpointError(f"unknown LLM type(s) {bad}; choose from {LLM_TYPES}")
    if tower_type not in TOWER_DTYPES:
        raise CheckpointError(f"the llasm-v1 tower runs in PyTorch: --tower-type f16 or f32, not {tower_type!r}")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --force to replace it")
    config = read_config(src)
    whisper_dir = find_whisper(config, whisper)
    whisper_config(whisper_dir, config)  # a wrong Whisper fails now, not after the LLM is written
    progress("reading the weights")
    llm_state, projector = split_projector(read_state(src), config)
    name = name or src.name
    with atomic_folder(out) as tmp:
        llm_files = {t: llm_file(t) for t in types}
        write_llm_types(tmp, llm_files, partial(write_llm, config, llm_state, src, name=name), progress)
        del llm_state
        progress("loading Whisper")
        tower, meta = build_llasm_tower(config, projector, whisper_dir)
        manifest = write_tower_and_manifest(tmp, name, tower, meta, llm_files, tower_types=(),
                                            torch_dtype=TOWER_DTYPES[tower_type], progress=progress)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--whisper", type=Path, help="Whisper folder (default: mm_audio_tower from the HF cache)")
    parser.add_argument("--type", action="append", dest="types", help=f"LLM type(s): {', '.join(LLM_TYPES)}")
    parser.add_argument("--tower-type", default="f16", choices=sorted(TOWER_DTYPES))
    parser.add_argument("--name")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        m = export_llasm_v1(args.checkpoint, args.out, args.whisper, tuple(args.types or ["f16"]), args.tower_type,
                            args.name, args.force, progress=print)
    except LlasmError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {args.out}: " + ", ".join([*m.llm_files.values(), m.torch_tower or ""]))


if __name__ == "__main__":
    main()
