"""Write a LlamaForCausalLM checkpoint folder as a llama.cpp GGUF (``llama`` architecture).

Three steps, as in llama.cpp's converters: set parameters, map tensors, choose per-tensor types.
The SentencePiece vocabulary, the added audio tokens and the chat template go into the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

from llasm_cli.errors import CheckpointError
from llasm_cli.files import write_gguf
from llasm_cli.formats.gguf_keys import tensor_name

T = gguf.MODEL_TENSOR
# Hugging Face Llama name -> (GGUF tensor, permute-for-rope as "q"/"k"/None)
HF_TO_GGUF: dict[str, tuple[gguf.MODEL_TENSOR, str | None]] = {
    "model.embed_tokens.weight": (T.TOKEN_EMBD, None),
    "model.norm.weight": (T.OUTPUT_NORM, None),
    "lm_head.weight": (T.OUTPUT, None),
    "model.layers.{bid}.input_layernorm.weight": (T.ATTN_NORM, None),
    "model.layers.{bid}.self_attn.q_proj.weight": (T.ATTN_Q, "q"),
    "model.layers.{bid}.self_attn.k_proj.weight": (T.ATTN_K, "k"),
    "model.layers.{bid}.self_attn.v_proj.weight": (T.ATTN_V, None),
    "model.layers.{bid}.self_attn.o_proj.weight": (T.ATTN_OUT, None),
    "model.layers.{bid}.post_attention_layernorm.weight": (T.FFN_NORM, None),
    "model.layers.{bid}.mlp.gate_proj.weight": (T.FFN_GATE, None),
    "model.layers.{bid}.mlp.up_proj.weight": (T.FFN_UP, None),
    "model.layers.{bid}.mlp.down_proj.weight": (T.FFN_DOWN, None),
}
FTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def map_name(name: str) -> tuple[str, str | None]:
    """HF tensor name -> (GGUF tensor name, rope permutation kind); unknown names are an error."""
    parts = name.split(".")
    bid = None
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        bid = int(parts[2])
        parts[2] = "{bid}"
    key = ".".join(parts)
    if key not in HF_TO_GGUF:
        raise CheckpointError(f"can not map tensor {name!r}")
    tensor, perm = HF_TO_GGUF[key]
    return tensor_name(tensor, bid), perm


def permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k for rotate-half RoPE; llama.cpp's llama graph expects interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_vocab(llm_dir: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types from tokenizer.model plus added tokens, padded to n_vocab."""
    import sentencepiece as spm

    model_file = llm_dir / "tokenizer.model"
    if not model_file.is_file():
        raise CheckpointError(
            f"{llm_dir} has no tokenizer.model: only SentencePiece (LLaMA-2 style) vocabularies export so far"
        )
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    for tok in _added_tokens(llm_dir):
        if tok["id"] < len(tokens):
            continue
        if tok["id"] != len(tokens):
            raise CheckpointError(f"added token {tok['content']!r} has id {tok['id']}, expected {len(tokens)}")
        tokens.append(tok["content"].encode("utf-8"))
        scores.append(-1000.0)
        types.append(gguf.TokenType.CONTROL if tok.get("special") else gguf.TokenType.USER_DEFINED)
    if len(tokens) > n_vocab:
        raise CheckpointError(f"tokenizer has {len(tokens)} tokens but the embedding only {n_vocab} rows")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types


def _added_tokens(llm_dir: Path) -> list[dict]:
    tok_json = llm_dir / "tokenizer.json"
    if tok_json.is_file():
        return sorted(json.loads(tok_json.read_text()).get("added_tokens", []), key=lambda t: t["id"])
    added = llm_dir / "added_tokens.json"
    if added.is_file():
        return [{"content": k, "id": v, "special": True} for k, v in sorted(json.loads(added.read_text()).items(), key=lambda kv: kv[1])]
    return []


def read_chat_template(llm_dir: Path) -> str | None:
    jinja = llm_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = llm_dir / "tokenizer_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("chat_template")
    return None


def llama_writer(cfg: dict, n_vocab: int, ftype: str, name: str) -> gguf.GGUFWriter:
    """A GGUF writer holding a ``llama`` model's hyper-parameters from its Hugging Face config."""
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    n_embd = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or n_embd // n_head
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_file_type(FTYPES[ftype])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(n_embd)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(n_vocab)
    if head_dim != n_embd // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    return writer


def write_llm_gguf(llm_dir: Path, out: Path, ftype: str = "f32", name: str = "llasm") -> None:
    """Convert the LLM folder of a checkpoint to ``out`` in the given type (f32 or f16)."""
    llm_dir = Path(llm_dir)
    cfg = json.loads((llm_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise CheckpointError(f"LLM model_type is {cfg.get('model_type')!r}; only 'llama' exports so far")
    if cfg.get("rope_scaling"):
        raise CheckpointError("rope_scaling is not supported by the exporter yet")
    n_head, n_head_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    state: dict[str, torch.Tensor] = {}
    for f in sorted(llm_dir.glob("*.safetensors")):
        state |= load_file(str(f))
    if not state:
        raise CheckpointError(f"no safetensors weights in {llm_dir}")
    n_vocab = state["model.embed_tokens.weight"].shape[0]

    writer = llama_writer(cfg, n_vocab, ftype, name)  # the file: see the end

    tokens, scores, types = read_vocab(llm_dir, n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(cfg.get("bos_token_id", 1))
    writer.add_eos_token_id(cfg.get("eos_token_id", 2) if not isinstance(cfg.get("eos_token_id"), list) else cfg["eos_token_id"][0])
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    template = read_chat_template(llm_dir)
    if template:
        writer.add_chat_template(template)

    mapped = {k: map_name(k) for k in sorted(state) if not k.endswith(SKIPPED_SUFFIXES)}
    add_llama_tensors(writer, state, mapped, n_head, n_head_kv, ftype)
    write_gguf(writer, out)


def add_llama_tensors(writer: gguf.GGUFWriter, state: dict, mapped: dict, n_head: int, n_head_kv: int,
                      ftype: str) -> None:
    """Each Hugging Face tensor under its GGUF name (``mapped``: name -> (GGUF name, rope permutation)),
    q/k rows permuted for llama.cpp's rope, matrices in f16 when ``ftype`` is f16."""
    for hf_name, (gguf_name, perm) in mapped.items():
        data = state[hf_name].float().numpy()
        if perm == "q":
            data = permute_for_rope(data, n_head)
        elif perm == "k":
            data = permute_for_rope(data, n_head_kv)
        dtype = np.float16 if (ftype == "f16" and data.ndim == 2) else np.float32
        writer.add_tensor(gguf_name, np.ascontiguousarray(data.astype(dtype)))
