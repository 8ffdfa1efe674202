"""One GGUF LLM loaded once: weights, vocabulary and metadata (llama.cpp's ``llama_model``).

Contexts (``Engine``: one conversation; ``BatchEngine``: many) are made over it and share it; the
model never calls back into a context. What a caller must know before it sizes a context -- the
chat template, the vocabulary's tokens, the prompt's length -- is asked of the model alone.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

from llasm_cli.errors import ModelFileError
from llasm_cli.inputs import replace_invalid
from llasm_cli.llm import native

# Architectures whose graph scales token embeddings (and not injected rows) by sqrt(n_embd).
EMBED_SCALE_ARCHS = {"gemma", "gemma2", "gemma3", "gemma3n"}
# Architectures whose graph reads injected rows exactly as it reads the token_embd rows of tokens,
# but for a factor the token path applies (src/models/<arch>.cpp: llama, qwen2 and qwen3 use
# build_inp_embd as it is; gemma3 scales token input only by sqrt(n_embd)). There, tokens can join
# the embedding rows of one llama_decode (Engine._joined). True: scale by sqrt(n_embd).
JOINABLE_ARCHS = {"llama": False, "qwen2": False, "qwen3": False, "gemma3": True}
MROPE_SECTIONS = 4  # GGML_MROPE_SECTIONS: the position axes of an M-RoPE model's embedding rows


def n_pos_per_embd(model) -> int:
    """Positions llama.cpp reads per embedding row: ``MROPE_SECTIONS`` for M-RoPE models, else 1
    (llama_hparams::n_pos_per_embd; mtmd asks ``llama_model_rope_type`` the same way)."""
    rope = llama_cpp.llama_model_rope_type(model)
    return MROPE_SECTIONS if rope in (llama_cpp.LLAMA_ROPE_TYPE_MROPE, llama_cpp.LLAMA_ROPE_TYPE_IMROPE) else 1


class LlamaModel:
    """A loaded GGUF LLM, shared by every context made over it; ``close`` frees it."""

    def __init__(self, path: str | Path, n_gpu_layers: int = 0) -> None:
        native.init()
        self.path = Path(path)
        params = native.model_params(n_gpu_layers)  # extra CPU buffers only where the probe says safe
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise ModelFileError(f"llama.cpp could not load {self.path}: {native.last_log()}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self.model)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        self.n_pos_per_embd = n_pos_per_embd(self.model)
        self.arch = self.meta(gguf.Keys.General.ARCHITECTURE) or ""
        self.embed_scale = math.sqrt(self.n_embd) if self.arch in EMBED_SCALE_ARCHS else 1.0
        self._token_rows: dict[int, np.ndarray] = {}  # token_rows' cache
        self._embd: tuple | None = None  # _embd_table(): None not yet read, () none here
        self._closed = False

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return llama_cpp.llama_vocab_bos(self.vocab)

    @property
    def eos(self) -> int:
        return llama_cpp.llama_vocab_eos(self.vocab)

    @property
    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text`` without BOS; ``special`` parses control tokens like <au_start>."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate got past the doors (inputs.clean_text): U+FFFD, as there
            data = replace_invalid(text).encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -n, False, special)
        return list(buf[:n])

    def token_id(self, piece: str) -> int:
        """The id of a single special token such as ``<au_start>``; error if it is not one token."""
        ids = self.tokenize(piece, special=True)
        if len(ids) != 1:
            raise ModelFileError(f"{self.path.name}: the vocabulary has no single token {piece!r}")
        return ids[0]

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; control tokens render as nothing unless ``special``."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    @property
    def eos_text(self) -> str:
        """How the EOS token is spelled in templates (e.g. ``</s>``)."""
        return self.piece(self.eos, special=True).decode("utf-8", errors="replace") if self.eos >= 0 else ""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_rows(self, tokens: Sequence[int]) -> np.ndarray | None:
        """What the first layer sees for ``tokens`` when they are fed as embedding rows: their rows of
        the GGUF's token_embd table (dequantized), scaled as the token path scales them; None for an
        architecture not in JOINABLE_ARCHS."""
        table = self._embd_table()
        if table is None:
            return None
        offset, n_vocab, qtype, row_bytes, scale = table
        cache = self._token_rows
        missing = sorted({int(t) for t in tokens} - cache.keys())
        if missing:
            with open(self.path, "rb") as f:
                for t in missing:
                    if not 0 <= t < n_vocab:
                        raise ValueError(f"token id {t} is outside the vocabulary")
                    f.seek(offset + t * row_bytes)
                    raw = np.frombuffer(f.read(row_bytes), dtype=np.uint8)
                    if qtype == gguf.GGMLQuantizationType.F32:
                        row = raw.view(np.float32)
                    elif qtype == gguf.GGMLQuantizationType.F16:
                        row = raw.view(np.float16).astype(np.float32)
                    else:
                        row = gguf.quants.dequantize(raw[None], qtype)[0].astype(np.float32)
                    cache[t] = row * scale
        return np.stack([cache[int(t)] for t in tokens]) if len(tokens) else np.zeros((0, self.n_embd), np.float32)

    def _embd_table(self) -> tuple[int, int, gguf.GGMLQuantizationType, int, np.float32] | None:
        """Where the token_embd table lies in the file (offset, rows, type, bytes per row) and its scale; read
        from the GGUF's header once (parsing it takes ~0.5 s for a 49k vocabulary: never on a turn's path
        twice). None where rows cannot be fed for tokens (an architecture not in JOINABLE_ARCHS)."""
        if self._embd is not None:
            return self._embd or None
        self._embd = ()
        if self.arch not in JOINABLE_ARCHS:
            return None
        from llasm_cli.formats.gguf_check import read_gguf
        from llasm_cli.formats.gguf_keys import tensor_name

        info = read_gguf(self.path)
        name = tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD)
        if name not in info.offsets or info.tensors[name][-1] != self.n_embd:
            return None
        qtype = gguf.GGMLQuantizationType[info.types[name]]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        scale = np.float32(math.sqrt(self.n_embd)) if JOINABLE_ARCHS[self.arch] else np.float32(1.0)
        self._embd = (info.offsets[name], info.tensors[name][0], qtype, self.n_embd // block * size, scale)
        return self._embd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            llama_cpp.llama_model_free(self.model)
