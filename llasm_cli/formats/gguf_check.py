"""Read a GGUF header and check it before llama.cpp or mtmd sees the file.

llama.cpp aborts the whole process (GGML_ASSERT) on a malformed GGUF, so every name, shape and
value it asserts on is checked here first and turned into a ModelFileError. Key names, tensor
names and value types come from gguf-py, the constants the exporter writes the files with.
(Over 400 lines on purpose: it mirrors the checks of gguf.cpp's loader, load_hparams and mtmd's clip loader
in one place.)
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from llasm_cli.audio.geometry import N_ENCODER_FRAMES
from llasm_cli.errors import ModelFileError, TowerMismatchError, show_value
from llasm_cli.formats.gguf_keys import (
    AUDIO_HEAD_COUNT_KV,
    AUDIO_HEAD_DIM,
    HAS_GEN_AUDIO_ENCODER,
    projector_type,
    tensor_name,
)

K, T, V, Q = gguf.Keys, gguf.MODEL_TENSOR, gguf.GGUFValueType, gguf.GGMLQuantizationType
LLAMA_ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
MMPROJ_ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ]  # "clip"
ROPE_SCALING_TYPES = tuple(t.value for t in gguf.RopeScalingType)
NO_VOCAB = gguf.NoVocab.tokenizer_model
BIAS = "bias"  # tensor_name's part for a bias ("blk.0.attn_q.bias")
# llama.cpp's limits (src/llama-hparams.h, src/llama-model.cpp): beyond them it aborts the process
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# Limits of ggml's gguf.cpp
_GGUF_VERSIONS = (2, 3)  # the layouts this parser reads; gguf.cpp refuses version 1
_MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
_MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
_MAX_NAME = 64  # GGML_MAX_NAME, including the terminating NUL
_MAX_DIMS = 4  # GGML_MAX_DIMS
_INT64_MAX = (1 << 63) - 1
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 4 + 8  # name length, a 1-byte name, n_dims, type, offset
_MAX_WIDTH = 1 << 20  # far above any real model's widths, far below an overflow

# Every scalar value type (all but STRING and ARRAY) as a little-endian numpy dtype
_DTYPES = {V(t): np.dtype(d).newbyteorder("<") for t, d in gguf.GGUFReader.gguf_scalar_to_np.items()}
_INT_TYPES = frozenset(t.name for t, d in _DTYPES.items() if d.kind in "iu")
_FLOAT_TYPES = frozenset(t.name for t, d in _DTYPES.items() if d.kind == "f")


def _array_type(etype: V) -> str:
    """The kv_types entry of an array: "ARRAY[INT32]"."""
    return f"{V.ARRAY.name}[{etype.name}]"


_STRING_ARRAY = _array_type(V.STRING)
_INT_ARRAYS = frozenset(_array_type(t) for t in _DTYPES if t.name in _INT_TYPES)


@dataclass
class GGUFInfo:
    """The parts of a GGUF header that validation needs."""

    path: Path
    fields: dict[str, object]  # key -> value; a string array holds just its length
    tensors: dict[str, tuple[int, ...]]  # name -> shape in numpy order (outermost first)
    types: dict[str, str]  # name -> ggml type name ("F32", "F16", "Q8_0", ...)
    kv_types: dict[str, str] = field(default_factory=dict)  # key -> "UINT32", "STRING", "ARRAY[STRING]", ...
    offsets: dict[str, int] = field(default_factory=dict)  # tensor name -> byte offset of its data in the file


def read_gguf(path: Path) -> GGUFInfo:
    """Parse a GGUF header and tensor table; any corruption becomes a ModelFileError.

    Checks everything ggml's gguf loader (ggml/src/gguf.cpp) checks, in its order, so a file that
    passes here is one llama.cpp can open: magic and version, key and tensor counts, strings and
    arrays within the file, no empty or repeated keys, no nested arrays, a power-of-two
    ``general.alignment`` of type UINT32, tensor names under 64 bytes and unique, at most 4 dims,
    none negative or zero, element and byte counts that do not overflow, a known ggml type whose
    block size divides the row, data offsets exactly where the loader expects them (in order,
    each aligned, no overlap), and the whole data section inside the file.

    Reads only the header: string arrays (262k-token vocabularies) are skipped, keeping just
    their length, so validating a large model costs milliseconds, not seconds and hundreds of MB.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _parse_gguf(path, f, os.fstat(f.fileno()).st_size)
    except ModelFileError:
        raise
    except _Corrupt as exc:
        raise ModelFileError(f"{path} is not a readable GGUF file: {exc}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a folder, not a GGUF file") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # anything else on junk input is still a bad file, never a traceback
        raise ModelFileError(f"{path} is not a readable GGUF file: {type(exc).__name__}: {exc}") from None


class _Corrupt(ValueError):
    """What _parse_gguf raises; read_gguf turns it into a ModelFileError naming the file."""


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _parse_gguf(path: Path, f, size: int) -> GGUFInfo:
    def left() -> int:
        return size - f.tell()

    def take(n: int, what: str) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise _Corrupt(f"the file ends inside {what} at byte {size} (truncated download?)")
        return data

    def read(fmt: str, what: str):
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt), what))[0]

    def raw_string(what: str) -> bytes:
        n = read("Q", f"the length of {what}")
        if n > _MAX_STRING:
            raise _Corrupt(f"{what} claims {n} bytes, more than GGUF allows ({_MAX_STRING})")
        if n > left():
            raise _Corrupt(f"{what} ({n} bytes) runs past the end of the file (truncated download?)")
        return f.read(n)

    def value(vtype: int, key: str):
        if vtype in _DTYPES:
            dtype = _DTYPES[vtype]
            return np.frombuffer(take(dtype.itemsize, f"the value of {key!r}"), dtype)[0].item()
        if vtype == V.STRING:
            return raw_string(f"the value of {key!r}").decode("utf-8", "replace")
        raise _Corrupt(f"key {key!r} has invalid GGUF value type {vtype}")

    def array(key: str):
        etype = read("I", f"the element type of {key!r}")
        count = read("Q", f"the length of {key!r}")
        if etype not in _DTYPES and etype != V.STRING:
            raise _Corrupt(f"key {key!r} is an array of invalid GGUF type {etype}")
        if count > _MAX_ARRAY:
            raise _Corrupt(f"key {key!r} claims {count} elements, more than GGUF allows ({_MAX_ARRAY})")
        if etype == V.STRING:
            if count * 8 > left():
                raise _Corrupt(f"array {key!r} ({count} strings) runs past the end of the file (truncated download?)")
            for i in range(count):  # skip the strings, keep the count
                n = read("Q", f"string {i} of {key!r}")
                if n > _MAX_STRING or n > left():
                    raise _Corrupt(f"string {i} of {key!r} runs past the end of the file (truncated download?)")
                f.seek(n, 1)
            return count, _STRING_ARRAY
        dtype = _DTYPES[etype]
        nbytes = count * dtype.itemsize
        if nbytes > left():
            raise _Corrupt(f"array {key!r} ({count} values) runs past the end of the file (truncated download?)")
        return np.frombuffer(f.read(nbytes), dtype, count).tolist(), _array_type(V(etype))

    if size < 4 or f.read(4) != struct.pack("<I", gguf.GGUF_MAGIC):
        raise _Corrupt("bad magic (not a GGUF file)")
    version = read("I", "the version")
    if version not in _GGUF_VERSIONS:
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors = read("Q", "the tensor count")
    n_kv = read("Q", "the key count")
    if n_tensors * _MIN_TENSOR_BYTES > left():
        raise _Corrupt(f"the header claims {n_tensors} tensors, more than a {size}-byte file can hold")
    if n_kv * _MIN_KV_BYTES > left():
        raise _Corrupt(f"the header claims {n_kv} keys, more than a {size}-byte file can hold")

    fields: dict[str, object] = {}
    kv_types: dict[str, str] = {}
    for i in range(n_kv):
        key = raw_string(f"key {i}").decode("utf-8", "surrogateescape")
        if not key:
            raise _Corrupt(f"key {i} is empty")
        if key in fields:
            raise _Corrupt(f"duplicate key {key!r}")
        vtype = read("I", f"the type of {key!r}")
        if vtype == V.ARRAY:
            fields[key], kv_types[key] = array(key)
        else:
            fields[key] = value(vtype, key)
            kv_types[key] = V(vtype).name

    align = gguf.GGUF_DEFAULT_ALIGNMENT
    if K.General.ALIGNMENT in fields:
        if kv_types[K.General.ALIGNMENT] != V.UINT32.name:
            raise _Corrupt(f"key {K.General.ALIGNMENT!r} must be {V.UINT32.name}, not {kv_types[K.General.ALIGNMENT]}")
        align = fields[K.General.ALIGNMENT]
        if align == 0 or align & (align - 1):
            raise _Corrupt(f"alignment {align} is not a power of 2")

    infos = []
    seen: set[str] = set()
    for i in range(n_tensors):
        raw = raw_string(f"the name of tensor {i}")
        name = raw.decode("utf-8", "surrogateescape")
        if len(raw) >= _MAX_NAME:
            raise _Corrupt(f"tensor name {name!r} is too long ({len(raw)} bytes; ggml allows {_MAX_NAME - 1})")
        if name in seen:
            raise _Corrupt(f"duplicate tensor name {name!r}")
        seen.add(name)
        n_dims = read("I", f"the dimension count of {name!r}")
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions; ggml allows {_MAX_DIMS}")
        dims = [read("q", f"the shape of {name!r}") for _ in range(n_dims)]
        if any(d <= 0 for d in dims):
            raise _Corrupt(f"tensor {name!r} has shape {dims} (a dimension of zero or less)")
        n_elems = math.prod(dims)
        if n_elems > _INT64_MAX:
            raise _Corrupt(f"tensor {name!r} has shape {dims}: its element count overflows")
        type_id = read("i", f"the type of {name!r}")
        try:
            qtype = Q(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name!r} has unknown ggml type {type_id}") from None
        row = dims[0] if dims else 1
        if block <= 0 or row % block:
            raise _Corrupt(f"tensor {name!r} ({qtype.name}) has rows of {row}, not a multiple of its block size {block}")
        nbytes = n_elems // block * type_size
        if nbytes > _INT64_MAX:
            raise _Corrupt(f"tensor {name!r} has shape {dims}: its byte size overflows")
        offset = read("Q", f"the data offset of {name!r}")
        infos.append((name, dims, qtype, offset, nbytes))

    tensors: dict[str, tuple[int, ...]] = {}
    types: dict[str, str] = {}
    offsets: dict[str, int] = {}
    if infos:
        data_start = _pad(f.tell(), align)
        if data_start > size:
            raise _Corrupt("the file ends before its tensor data starts (truncated download?)")
        expected = 0  # gguf.cpp: each tensor starts where the previous one's padded data ends
        for name, dims, qtype, offset, nbytes in infos:
            if offset != expected:
                raise _Corrupt(
                    f"tensor {name!r} has data offset {offset}, expected {expected} "
                    f"(misaligned, overlapping or out-of-order tensor data)"
                )
            expected += _pad(nbytes, align)
            if data_start + expected > size:
                short = data_start + expected - size
                raise _Corrupt(
                    f"tensor {name!r} runs past the end of the file ({short} byte{'s' * (short != 1)} missing; "
                    "truncated download?)"
                )
            tensors[name] = tuple(reversed(dims))
            types[name] = qtype.name
            offsets[name] = data_start + offset
    return GGUFInfo(path, fields, tensors, types, kv_types, offsets)


# --- keys ------------------------------------------------------------------------------------


def _require(info: GGUFInfo, key: str) -> object:
    if key not in info.fields:
        raise ModelFileError(f"{info.path.name}: required key {key!r} is missing")
    return info.fields[key]


def _int(info: GGUFInfo, key: str, hi: int, lo: int = 1, default: int | None = None) -> int:
    """An integer key in [lo, hi]: a string, float, array or absurd value is a clear error, not a crash."""
    if default is not None and key not in info.fields:
        return default
    value = _require(info, key)
    kind = info.kv_types.get(key, V.UINT32.name if type(value) is int else type(value).__name__)
    if kind not in _INT_TYPES:
        raise ModelFileError(f"{info.path.name}: key {key!r} is {kind}, expected an integer")
    if not lo <= value <= hi:
        raise ModelFileError(f"{info.path.name}: key {key!r} is {value}, expected {lo} to {hi}")
    return value


def _str(info: GGUFInfo, key: str) -> str:
    value = _require(info, key)
    if not isinstance(value, str):
        raise ModelFileError(f"{info.path.name}: key {key!r} is {info.kv_types.get(key, type(value).__name__)}, expected a string")
    return value


def _float(info: GGUFInfo, key: str, positive: bool = False) -> None:
    """An optional float key: finite, and >= 0 (or > 0). ggml asserts ``eps >= 0`` and aborts on NaN."""
    if key not in info.fields:
        return
    value, kind = info.fields[key], info.kv_types.get(key, V.FLOAT32.name)
    if kind not in _FLOAT_TYPES:
        raise ModelFileError(f"{info.path.name}: key {key!r} is {kind}, expected a float")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        want = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise ModelFileError(f"{info.path.name}: key {key!r} is {value}, expected {want} (llama.cpp would abort or compute NaN)")


# --- the LLM ---------------------------------------------------------------------------------


def _check_llm_hparams(info: GGUFInfo, arch: str) -> int:
    """What llama.cpp's llama_model::load_hparams asserts on for every architecture; returns the block count."""
    name = info.path.name
    n_layer = _int(info, K.LLM.BLOCK_COUNT.format(arch=arch), LLAMA_MAX_LAYERS)
    _int(info, K.LLM.NEXTN_PREDICT_LAYERS.format(arch=arch), n_layer, lo=0, default=0)
    n_expert = _int(info, K.LLM.EXPERT_COUNT.format(arch=arch), LLAMA_MAX_EXPERTS, lo=0, default=0)
    key = K.LLM.EXPERT_USED_COUNT.format(arch=arch)
    used = info.fields.get(key, 0)
    kind = info.kv_types.get(key, V.UINT32.name)
    if kind.startswith(V.ARRAY.name):
        count = used if isinstance(used, int) else len(used)  # string arrays are read as their length
        if kind not in _INT_ARRAYS or count > n_layer:
            raise ModelFileError(f"{name}: key {key!r} is {kind} of {count}, expected integers, one per block")
        used = max(used, default=0)
    elif kind not in _INT_TYPES:
        raise ModelFileError(f"{name}: key {key!r} is {kind}, expected an integer")
    groups = _int(info, K.LLM.EXPERT_GROUP_COUNT.format(arch=arch), LLAMA_MAX_EXPERTS, lo=0, default=0)
    group_used = _int(info, K.LLM.EXPERT_GROUP_USED_COUNT.format(arch=arch), LLAMA_MAX_EXPERTS, lo=0, default=0)
    if n_expert:
        ok = 0 < used <= n_expert and groups < n_expert
        ok = ok and (groups <= 1 or (n_expert % groups == 0 and 0 < group_used < groups))
    else:
        ok = used == 0 and groups == 0
    if not ok:
        raise ModelFileError(
            f"{name}: expert counts are inconsistent ({n_expert} experts, {used} used, {groups} groups, "
            f"{group_used} groups used); llama.cpp aborts on these"
        )
    key = K.Rope.SCALING_TYPE.format(arch=arch)
    if key in info.fields and info.fields[key] not in ROPE_SCALING_TYPES:
        raise ModelFileError(f"{name}: key {key!r} is {show_value(info.fields[key])}; llama.cpp knows {', '.join(ROPE_SCALING_TYPES)}")
    _float(info, K.Rope.FREQ_BASE.format(arch=arch), positive=True)
    _float(info, K.Rope.SCALING_FACTOR.format(arch=arch))
    _float(info, K.Attention.LAYERNORM_EPS.format(arch=arch))
    _float(info, K.Attention.LAYERNORM_RMS_EPS.format(arch=arch))
    if info.fields.get(K.Tokenizer.MODEL) == NO_VOCAB:
        raise ModelFileError(f"{name}: the model has no vocabulary (tokenizer {NO_VOCAB!r}); llasm needs one to talk")
    return n_layer


def _vocab_size(info: GGUFInfo) -> int:
    key = K.Tokenizer.LIST
    _require(info, key)
    if info.kv_types.get(key, _STRING_ARRAY) != _STRING_ARRAY or not 1 <= info.fields[key] <= _MAX_ARRAY:
        raise ModelFileError(f"{info.path.name}: key {key!r} must be a non-empty array of strings")
    return info.fields[key]


def _check_layers(info: GGUFInfo, n_layer: int, per_layer: int) -> None:
    """A block count the tensor table cannot back is refused before building its expectations."""
    if n_layer * per_layer > len(info.tensors):
        raise ModelFileError(
            f"{info.path.name}: {n_layer} blocks need at least {n_layer * per_layer} tensors; the file has {len(info.tensors)}"
        )


def _check_tensors(info: GGUFInfo, expected: dict[str, tuple[int, ...]], optional: set[str] = frozenset()) -> None:
    for name, shape in expected.items():
        if name not in info.tensors:
            if name in optional:
                continue
            raise ModelFileError(f"{info.path.name}: tensor {name!r} is missing")
        if info.tensors[name] != shape:
            raise ModelFileError(f"{info.path.name}: tensor {name!r} has shape {info.tensors[name]}, expected {shape}")


def validate_llm(path: Path) -> GGUFInfo:
    """Check a llama-architecture GGUF: keys, every tensor's name and shape, vocabulary size."""
    path = Path(path)
    info = read_gguf(path)
    arch = _str(info, K.General.ARCHITECTURE)
    if arch != LLAMA_ARCH:
        return _validate_other_llm(info, arch)
    n_layer = _check_llm_hparams(info, arch)
    n_embd = _int(info, K.LLM.EMBEDDING_LENGTH.format(arch=arch), _MAX_WIDTH)
    n_ff = _int(info, K.LLM.FEED_FORWARD_LENGTH.format(arch=arch), _MAX_WIDTH * 4)
    n_head = _int(info, K.Attention.HEAD_COUNT.format(arch=arch), 1 << 16)
    n_head_kv = _int(info, K.Attention.HEAD_COUNT_KV.format(arch=arch), 1 << 16, default=n_head)
    head_k = _int(info, K.Attention.KEY_LENGTH.format(arch=arch), _MAX_WIDTH, default=max(n_embd // n_head, 1))
    n_vocab = _vocab_size(info)
    if n_head % n_head_kv:
        raise ModelFileError(f"{path.name}: head counts {n_head}/{n_head_kv} are inconsistent")
    _check_layers(info, n_layer, 9)
    q, kv = n_head * head_k, n_head_kv * head_k
    expected = {tensor_name(T.TOKEN_EMBD): (n_vocab, n_embd), tensor_name(T.OUTPUT_NORM): (n_embd,), tensor_name(T.OUTPUT): (n_vocab, n_embd)}
    for i in range(n_layer):
        expected |= {
            tensor_name(T.ATTN_NORM, i): (n_embd,),
            tensor_name(T.ATTN_Q, i): (q, n_embd),
            tensor_name(T.ATTN_K, i): (kv, n_embd),
            tensor_name(T.ATTN_V, i): (kv, n_embd),
            tensor_name(T.ATTN_OUT, i): (n_embd, q),
            tensor_name(T.FFN_NORM, i): (n_embd,),
            tensor_name(T.FFN_GATE, i): (n_ff, n_embd),
            tensor_name(T.FFN_UP, i): (n_ff, n_embd),
            tensor_name(T.FFN_DOWN, i): (n_embd, n_ff),
        }
    _check_tensors(info, expected, optional={tensor_name(T.OUTPUT)})
    return info


def _validate_other_llm(info: GGUFInfo, arch: str) -> GGUFInfo:
    """Other architectures (e.g. a GGUF from elsewhere): check the basics llama.cpp reads first."""
    _check_llm_hparams(info, arch)
    n_embd = _int(info, K.LLM.EMBEDDING_LENGTH.format(arch=arch), _MAX_WIDTH)
    n_vocab = _vocab_size(info)
    _check_tensors(info, {tensor_name(T.TOKEN_EMBD): (n_vocab, n_embd)})
    return info


# --- the audio tower (mmproj) ----------------------------------------------------------------

# Keys mtmd's clip.cpp reads for an audio tower, with the GGUF type its getters assert on.
_TOWER_KEY_TYPES = {
    K.General.NAME: V.STRING,
    K.General.DESCRIPTION: V.STRING,
    K.Clip.HAS_VISION_ENCODER: V.BOOL,
    K.Clip.HAS_AUDIO_ENCODER: V.BOOL,
    HAS_GEN_AUDIO_ENCODER: V.BOOL,
    K.ClipVision.USE_GELU: V.BOOL,
    K.ClipVision.USE_SILU: V.BOOL,
    K.Clip.PROJECTOR_TYPE: V.STRING,
    K.ClipAudio.PROJECTOR_TYPE: V.STRING,
    K.ClipAudio.EMBEDDING_LENGTH: V.UINT32,
    K.ClipAudio.FEED_FORWARD_LENGTH: V.UINT32,
    K.ClipAudio.BLOCK_COUNT: V.UINT32,
    K.ClipAudio.PROJECTION_DIM: V.UINT32,
    K.ClipAudio.Attention.HEAD_COUNT: V.UINT32,
    AUDIO_HEAD_COUNT_KV: V.UINT32,
    AUDIO_HEAD_DIM: V.UINT32,
    K.ClipAudio.Attention.LAYERNORM_EPS: V.FLOAT32,
    K.ClipAudio.NUM_MEL_BINS: V.UINT32,
    K.ClipAudio.Projector.STACK_FACTOR: V.UINT32,
}


def validate_tower(path: Path, llm_dim: int) -> GGUFInfo:
    """Check an ultravox mmproj GGUF (a llasm bundle's tower) against what mtmd's whisper graph asserts on."""
    path = Path(path)
    info, enc = _read_audio_mmproj(path)
    proj = info.fields.get(K.Clip.PROJECTOR_TYPE) or info.fields.get(K.ClipAudio.PROJECTOR_TYPE)
    if proj != gguf.VisionProjectorType.ULTRAVOX:
        raise ModelFileError(f"{path.name}: projector type {show_value(proj)}; llasm runs {gguf.VisionProjectorType.ULTRAVOX!r} towers")
    k = _int(info, K.ClipAudio.Projector.STACK_FACTOR, 1 << 32, lo=0)
    if k <= 0 or N_ENCODER_FRAMES % k:
        raise ModelFileError(f"{path.name}: stack factor {k} must divide {N_ENCODER_FRAMES} (mtmd aborts otherwise)")
    _check_audio_projector(info, enc, proj, k, llm_dim)
    return info


# Audio projectors of the published families (mtmd's clip.cpp), as tensors around the Whisper encoder
AUDIO_PROJECTORS = (
    gguf.VisionProjectorType.ULTRAVOX, gguf.VisionProjectorType.QWEN2A, gguf.VisionProjectorType.QWEN25O,
    gguf.VisionProjectorType.VOXTRAL,
)


def validate_audio_mmproj(path: Path, llm_dim: int) -> GGUFInfo:
    """Check a published audio mmproj (Ultravox with any stack factor, Qwen2-Audio/Omni, Voxtral):
    the Whisper encoder and the projector's tensors, before mtmd (or llasm's own projector) reads them."""
    path = Path(path)
    info, enc = _read_audio_mmproj(path)
    proj = projector_type(info.fields)
    if proj not in AUDIO_PROJECTORS:
        raise ModelFileError(f"{path.name}: audio projector type {show_value(proj)}; llasm runs "
                             + ", ".join(repr(p) for p in AUDIO_PROJECTORS))
    # Qwen2.5-Omni's published mmproj holds its vision encoder too: its audio part is checked here and
    # the ggml backend hands mtmd an audio-only copy (towers/encoder_only.write_audio_only), so the
    # vision part never reaches mtmd
    if info.fields.get(K.Clip.HAS_VISION_ENCODER) is True and proj != gguf.VisionProjectorType.QWEN25O:
        raise ModelFileError(f"{path.name} also holds a vision encoder, which llasm does not check or run; "
                             "use an audio-only mmproj")
    k = 0
    if proj in (gguf.VisionProjectorType.ULTRAVOX, gguf.VisionProjectorType.VOXTRAL):
        k = _int(info, K.ClipAudio.Projector.STACK_FACTOR, N_ENCODER_FRAMES)
    _check_audio_projector(info, enc, proj, k, llm_dim)
    return info


@dataclass
class _Encoder:
    d: int
    n_ff: int
    n_layer: int
    n_mels: int
    out_dim: int


def _read_audio_mmproj(path: Path) -> tuple[GGUFInfo, _Encoder]:
    """Header, key types and the Whisper encoder's sizes of an audio mmproj."""
    info = read_gguf(path)
    arch = _str(info, K.General.ARCHITECTURE)
    if arch != MMPROJ_ARCH:
        raise ModelFileError(f"{path.name}: not an mmproj file (architecture {arch!r})")
    for key, want in _TOWER_KEY_TYPES.items():  # mtmd's gguf_get_val_* asserts the type: a wrong one aborts
        got = info.kv_types.get(key)
        if got is not None and got != want.name:
            raise ModelFileError(f"{path.name}: key {key!r} is {got}; mtmd reads it as {want.name} (and aborts otherwise)")
    _require(info, K.ClipAudio.Attention.LAYERNORM_EPS)
    _float(info, K.ClipAudio.Attention.LAYERNORM_EPS)
    if info.fields.get(K.Clip.HAS_AUDIO_ENCODER) is not True:
        raise ModelFileError(f"{path.name}: the mmproj file has no audio encoder")
    enc = _Encoder(
        d=_int(info, K.ClipAudio.EMBEDDING_LENGTH, _MAX_WIDTH),
        n_ff=_int(info, K.ClipAudio.FEED_FORWARD_LENGTH, _MAX_WIDTH * 4),
        n_layer=_int(info, K.ClipAudio.BLOCK_COUNT, 1 << 12),
        n_mels=0, out_dim=0,
    )
    n_head = _int(info, K.ClipAudio.Attention.HEAD_COUNT, 1 << 12)
    enc.n_mels = _int(info, K.ClipAudio.NUM_MEL_BINS, 1024)
    enc.out_dim = _int(info, K.ClipAudio.PROJECTION_DIM, _MAX_WIDTH)
    d = enc.d
    if d % n_head:
        raise ModelFileError(f"{path.name}: {n_head} heads do not divide width {d}")
    # Whisper attends with every head over its own slice: other values make mtmd's graph assert
    n_head_kv = _int(info, AUDIO_HEAD_COUNT_KV, 1 << 12, lo=0, default=n_head)
    head_dim = _int(info, AUDIO_HEAD_DIM, _MAX_WIDTH, lo=0, default=0)
    if n_head_kv != n_head or head_dim not in (0, d // n_head):
        raise ModelFileError(
            f"{path.name}: key {AUDIO_HEAD_COUNT_KV!r} = {n_head_kv} and "
            f"{AUDIO_HEAD_DIM!r} = {head_dim} do not fit {n_head} heads over width {d} (mtmd aborts otherwise)"
        )
    _check_layers(info, enc.n_layer, 16)
    return info, enc


def _check_audio_projector(info: GGUFInfo, enc: _Encoder, proj: str, k: int, llm_dim: int) -> None:
    """Every tensor of the Whisper encoder and of projector ``proj``: names, shapes and types."""
    path, d, n_ff, n_mels, out_dim = info.path, enc.d, enc.n_ff, enc.n_mels, enc.out_dim
    pos, conv1, conv2 = tensor_name(T.A_ENC_EMBD_POS), tensor_name(T.A_ENC_CONV1D, 1), tensor_name(T.A_ENC_CONV1D, 2)
    expected = {
        pos: (N_ENCODER_FRAMES, d),
        conv1: (d, n_mels, 3),
        tensor_name(T.A_ENC_CONV1D, 1, BIAS): (d, 1),
        conv2: (d, d, 3),
        tensor_name(T.A_ENC_CONV1D, 2, BIAS): (d, 1),
        tensor_name(T.A_POST_NORM): (d,),
        tensor_name(T.A_POST_NORM, part=BIAS): (d,),
    }
    mlp1 = tensor_name(T.A_MMPROJ, 1)
    if proj == gguf.VisionProjectorType.ULTRAVOX:
        shape1 = info.tensors.get(mlp1, ())
        hidden = shape1[0] if len(shape1) == 2 else 0
        if hidden == 0 or hidden % 2:
            raise ModelFileError(f"{path.name}: tensor {mlp1!r} is missing or has an odd width")
        expected |= {
            tensor_name(T.A_MM_NORM_PRE): (d * k,),
            mlp1: (hidden, d * k),
            tensor_name(T.A_MM_NORM_MID): (hidden // 2,),
            tensor_name(T.A_MMPROJ, 2): (out_dim, hidden // 2),
        }
    elif proj == gguf.VisionProjectorType.VOXTRAL:  # stacks k frames; linear_1 -> GELU -> linear_2, no biases
        expected |= {mlp1: (out_dim, d * k), tensor_name(T.A_MMPROJ, 2): (out_dim, out_dim)}
    else:  # qwen2a / qwen2.5o: one Linear with bias after the average pooling
        fc = tensor_name(T.A_MMPROJ_FC)
        expected |= {fc: (out_dim, d), tensor_name(T.A_MMPROJ_FC, part=BIAS): (out_dim,)}
    for i in range(enc.n_layer):
        for kind in (T.A_ENC_ATTN_Q, T.A_ENC_ATTN_V, T.A_ENC_OUTPUT):
            expected |= {tensor_name(kind, i): (d, d), tensor_name(kind, i, BIAS): (d,)}
        expected |= {
            tensor_name(T.A_ENC_ATTN_K, i): (d, d),
            tensor_name(T.A_ENC_INPUT_NORM, i): (d,), tensor_name(T.A_ENC_INPUT_NORM, i, BIAS): (d,),
            tensor_name(T.A_ENC_OUTPUT_NORM, i): (d,), tensor_name(T.A_ENC_OUTPUT_NORM, i, BIAS): (d,),
            tensor_name(T.A_ENC_FFN_UP, i): (n_ff, d), tensor_name(T.A_ENC_FFN_UP, i, BIAS): (n_ff,),
            tensor_name(T.A_ENC_FFN_DOWN, i): (d, n_ff), tensor_name(T.A_ENC_FFN_DOWN, i, BIAS): (d,),
        }
    _check_tensors(info, expected)
    for name in (pos, conv1, conv2):
        if info.types[name] not in (Q.F32.name, Q.F16.name):
            raise ModelFileError(f"{path.name}: tensor {name!r} is {info.types[name]}; mtmd needs F32 or F16 there")
    for name, ttype in info.types.items():
        parts = name.split(".")
        is_norm = name.endswith("." + BIAS) or "norm" in name or (len(parts) >= 2 and "ln" in parts[-2])
        if is_norm and ttype != Q.F32.name:
            raise ModelFileError(f"{path.name}: tensor {name!r} is {ttype}; biases and norms must be F32")
    k_bias = tensor_name(T.A_ENC_ATTN_K, 0, BIAS)
    if k_bias in info.tensors:
        raise ModelFileError(f"{path.name}: Whisper has no key bias, but {k_bias!r} is present")
    check_widths(out_dim, llm_dim, path.name)


def check_widths(tower_dim: int, llm_dim: int, what: str) -> None:
    if tower_dim != llm_dim:
        raise TowerMismatchError(
            f"{what}: the audio tower outputs {tower_dim}-wide embeddings but the LLM expects {llm_dim}; "
            "export the tower and the LLM from the same checkpoint"
        )
