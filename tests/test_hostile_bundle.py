"""Hostile bundles: truncated and malformed GGUFs, manifests that point outside the bundle or hold
the wrong JSON types, and fuzzing of both. llama.cpp aborts the whole process on a malformed GGUF,
so every one of these must end in a BundleError (exit 3, one line), never in a crash or a traceback.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llasm_cli.errors import BundleError, ModelFileError
from llasm_cli.files import atomic_file, atomic_folder, atomic_path, atomic_write_bytes, atomic_write_text
from llasm_cli.formats.bundle import MANIFEST_FILE, Bundle, Manifest, load_bundle
from llasm_cli.formats.gguf_check import read_gguf, validate_llm, validate_tower
from tests.helpers import assert_clean_error, run_llasm

# --- a GGUF taken apart, independently of llasm_cli.formats.bundle's reader -----------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw)) + raw


def kv(key: str | bytes, vtype: int, value) -> bytes:
    """One KV pair; ``value`` is a Python value, or bytes taken as the raw payload."""
    if isinstance(value, bytes) and vtype != STR:
        payload = value
    elif vtype == STR:
        payload = gstr(value)
    else:
        payload = struct.pack("<" + _FMT[vtype], value)
    return gstr(key) + u32(vtype) + payload


def kv_array(key: str, etype: int, items: list) -> bytes:
    body = b"".join(gstr(i) if etype == STR else struct.pack("<" + _FMT[etype], i) for i in items)
    return gstr(key) + u32(ARR) + u32(etype) + u64(len(items)) + body


def tensor_info(name: str | bytes, dims: list[int], ttype: int, offset: int) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in dims) + u32(ttype) + u64(offset)


def pad(n: int, align: int) -> int:
    return -(-n // align) * align


@dataclass
class Parts:
    """A GGUF file as byte pieces, with where each piece sits in the original file."""

    version: int
    kvs: list[tuple[str, bytes]]  # (key, raw KV bytes)
    infos: list[tuple[str, bytes]]  # (tensor name, raw tensor-info bytes)
    data: bytes  # the data section, from its aligned start
    align: int = 32
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (start, end) in the file

    def join(self, align: int | None = None) -> bytes:
        head = b"GGUF" + u32(self.version) + u64(len(self.infos)) + u64(len(self.kvs))
        head += b"".join(raw for _, raw in self.kvs) + b"".join(raw for _, raw in self.infos)
        align = align or self.align
        return head + bytes(pad(len(head), align) - len(head)) + self.data

    def set_kv(self, key: str, raw: bytes) -> Parts:
        """Replace (or add) one KV pair; tensor offsets are relative to the data section, so they hold."""
        kvs = [(k, raw if k == key else r) for k, r in self.kvs]
        if key not in dict(self.kvs):
            kvs.append((key, raw))
        return Parts(self.version, kvs, list(self.infos), self.data, self.align)


def split_gguf(data: bytes) -> Parts:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n : pos]

    def num(fmt: str):
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    spans: dict[str, tuple[int, int]] = {}
    assert take(4) == b"GGUF"
    version, n_tensors, n_kv = num("I"), num("Q"), num("Q")
    kvs, align = [], 32
    for i in range(n_kv):
        start = pos
        key = take(num("Q")).decode()
        key_end = pos
        vtype = num("I")
        value_start = pos
        if vtype == STR:
            value = take(num("Q"))
        elif vtype == ARR:
            etype, count = num("I"), num("Q")
            for _ in range(count):
                take(num("Q")) if etype == STR else take(struct.calcsize(_FMT[etype]))
            value = None
        else:
            value = num(_FMT[vtype])
        if key == "general.alignment":
            align = value
        kvs.append((key, data[start:pos]))
        spans[f"kv {i} ({key})"] = (start, pos)
        spans[f"kv {i} key"] = (start, key_end)
        spans[f"kv {i} value"] = (value_start, pos)
    infos = []
    for i in range(n_tensors):
        start = pos
        name = take(num("Q")).decode()
        n_dims = num("I")
        take(8 * n_dims + 4 + 8)
        infos.append((name, data[start:pos]))
        spans[f"tensor info {i} ({name})"] = (start, pos)
    data_start = pad(pos, align)
    spans["padding"] = (pos, data_start)
    spans["data"] = (data_start, len(data))
    return Parts(version, kvs, infos, data[data_start:], align, spans)


def cut_points(data: bytes) -> dict[str, int]:
    """Every section boundary of a GGUF, and a point inside each section."""
    parts = split_gguf(data)
    sp = parts.spans
    cuts = {"empty file": 0, "inside the magic": 2, "after the magic": 4, "after the version": 8,
            "after the tensor count": 16, "after the kv count": 24}
    kv_ids = sorted({int(k.split()[1]) for k in sp if k.startswith("kv ")})
    for i in [*kv_ids[:6], kv_ids[-1]]:  # the first several KV pairs and the last one
        label = next(k for k in sp if k.startswith(f"kv {i} ("))
        start, end = sp[label]
        key_start, key_end = sp[f"kv {i} key"]
        value_start, value_end = sp[f"kv {i} value"]
        cuts |= {
            f"{label}: inside the key length": key_start + 4,
            f"{label}: inside the key": (key_start + 8 + key_end) // 2,
            f"{label}: after the key": key_end,
            f"{label}: inside the value type": key_end + 2,
            f"{label}: after the value type": value_start,
            f"{label}: inside the value": (value_start + value_end) // 2,
            f"{label}: one byte short": end - 1,
            f"{label}: after it": end,
        }
    infos = [k for k in sp if k.startswith("tensor info")]
    for label in [*infos[:3], infos[len(infos) // 2], infos[-1]]:
        start, end = sp[label]
        cuts |= {
            f"{label}: inside the name": start + 10,
            f"{label}: inside the shape": end - 14,
            f"{label}: inside the type": end - 10,
            f"{label}: inside the offset": end - 4,
            f"{label}: after it": end,
        }
    pad_start, data_start = sp["padding"]
    cuts["after the tensor-info table"] = pad_start
    if data_start - pad_start > 1:
        cuts["inside the alignment padding"] = pad_start + (data_start - pad_start) // 2
    cuts |= {
        "at the start of tensor data": data_start,
        "inside the first tensor": data_start + 3,
        "in the middle of tensor data": (data_start + len(data)) // 2,
        "one byte short of the end": len(data) - 1,
    }
    return cuts


@pytest.fixture(scope="module")
def bundle(swiglu) -> Path:
    return swiglu[1]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --- 1. a GGUF cut at every section boundary ----------------------------------------------------


@pytest.mark.parametrize("kind", ["llm", "tower"])
def test_gguf_cut_at_every_boundary(bundle, tmp_path, kind):
    src = bundle / f"{kind}.f16.gguf"
    validate = validate_llm if kind == "llm" else (lambda p: validate_tower(p, 64))
    validate(src)  # the whole file passes
    data = src.read_bytes()
    cuts = cut_points(data)
    assert len(cuts) > 60
    slipped = []
    for label, at in cuts.items():
        path = _write(tmp_path, f"cut-{at}.gguf", data[:at])
        try:
            validate(path)
            slipped.append(label)
        except ModelFileError as exc:
            assert str(path) in str(exc) or path.name in str(exc), exc
            assert "\n" not in str(exc)
        path.unlink()
    assert not slipped, f"cuts that validated: {slipped}"


@pytest.mark.parametrize("kind", ["llm", "tower"])
def test_gguf_cut_at_every_header_byte(bundle, tmp_path, kind):
    """Not just the boundaries: any cut before the end of the data is refused by read_gguf."""
    data = (bundle / f"{kind}.f16.gguf").read_bytes()
    header_end = split_gguf(data).spans["data"][0]
    path = _write(tmp_path, "cut.gguf", data)
    step = 1 if kind == "tower" else 7  # the LLM header holds the vocabulary: every seventh byte
    for at in [len(data) - 1, *range(header_end, -1, -step)]:  # shrinking the file in place
        os.truncate(path, at)
        with pytest.raises(ModelFileError):
            read_gguf(path)


@pytest.mark.parametrize("label,needle", [
    ("after the kv count", "the header claims 21 tensors, more than a 24-byte file can hold"),
    ("inside the alignment padding", "before its tensor data"),
    ("one byte short of the end", "1 byte missing"),
])
def test_cut_llm_through_the_cli(bundle, question_wav, tmp_path, label, needle):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    data = (b / "llm.f16.gguf").read_bytes()
    cuts = cut_points(data)
    (b / "llm.f16.gguf").write_bytes(data[: cuts[label]])
    res = run_llasm("ask", str(question_wav), "-m", str(b))
    assert_clean_error(res, 3, "llm.f16.gguf", needle)


def test_cut_tower_through_the_cli(bundle, question_wav, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    data = (b / "tower.f16.gguf").read_bytes()
    label = next(k for k in cut_points(data) if k.startswith("tensor info 0") and k.endswith("inside the shape"))
    (b / "tower.f16.gguf").write_bytes(data[: cut_points(data)[label]])
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "ggml")
    assert_clean_error(res, 3, "tower.f16.gguf", "the header claims 41 tensors")
    assert_clean_error(run_llasm("info", str(b)), 3, "tower.f16.gguf")


# --- 1b. malformed GGUFs: what ggml's gguf.cpp refuses, and worse --------------------------------

F32_T, F16_T, Q8_0_T = 0, 1, 8


def tiny_gguf(kvs: list[bytes] | None = None, infos: list[bytes] | None = None, data: bytes | None = None,
              version: int = 3, n_kv: int | None = None, n_tensors: int | None = None, align: int = 32,
              padding: int | None = None) -> bytes:
    kvs = [kv("general.architecture", STR, "llama"), kv("general.alignment", U32, align)] if kvs is None else kvs
    infos = [tensor_info("a", [8], F32_T, 0), tensor_info("b", [4, 2], F16_T, 32)] if infos is None else infos
    head = b"GGUF" + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    data = bytes(64) if data is None else data
    return head + bytes(pad(len(head), align) - len(head) if padding is None else padding) + data


HOSTILE_GGUF = {
    "not GGUF at all": (b"PK\x03\x04" + bytes(100), "bad magic"),
    "version 1": (tiny_gguf(version=1), "unsupported GGUF version 1"),
    "big-endian version": (tiny_gguf(version=3 << 24), "unsupported GGUF version"),
    "absurd key count": (tiny_gguf(n_kv=2**62), "claims 4611686018427387904 keys"),
    "absurd tensor count": (tiny_gguf(n_tensors=2**63 + 5), "tensors, more than"),
    "more keys than present": (tiny_gguf(n_kv=3), "the name of tensor 1 claims"),
    "empty key": (tiny_gguf([kv("", U32, 1)]), "key 0 is empty"),
    "duplicate key": (tiny_gguf([kv("general.alignment", U32, 32), kv("general.alignment", U32, 32)]), "duplicate key"),
    "unknown value type": (tiny_gguf([kv("x", 13, b"\0" * 8)]), "invalid GGUF value type 13"),
    "nested array": (tiny_gguf([gstr("x") + u32(ARR) + u32(ARR) + u64(1) + u32(U8) + u64(1) + b"\0"]), "array of invalid"),
    "string longer than GGUF allows": (tiny_gguf([gstr("x") + u32(STR) + u64(2**40)]), "more than GGUF allows"),
    "string past the end": (tiny_gguf([gstr("x") + u32(STR) + u64(10**6) + b"abc"]), "runs past the end"),
    "key length past the end": (tiny_gguf([u64(2**29) + b"x"]), "runs past the end"),
    "array count absurd": (tiny_gguf([gstr("x") + u32(ARR) + u32(U32) + u64(2**61)]), "more than GGUF allows"),
    "string array past the end": (tiny_gguf([gstr("x") + u32(ARR) + u32(STR) + u64(10**6) + gstr("a")]), "runs past the end"),
    "numeric array past the end": (tiny_gguf([gstr("x") + u32(ARR) + u32(F64) + u64(10**6)]), "runs past the end"),
    "alignment zero": (tiny_gguf([kv("general.alignment", U32, 0)]), "alignment 0 is not a power of 2"),
    "alignment not a power of 2": (tiny_gguf([kv("general.alignment", U32, 48)]), "alignment 48 is not a power of 2"),
    "alignment as a string": (tiny_gguf([kv("general.alignment", STR, "32")]), "must be UINT32, not STRING"),
    "alignment as UINT64": (tiny_gguf([kv("general.alignment", U64, 32)]), "must be UINT32, not UINT64"),
    "duplicate tensor name": (tiny_gguf(infos=[tensor_info("a", [8], F32_T, 0), tensor_info("a", [8], F32_T, 32)]),
                              "duplicate tensor name 'a'"),
    "tensor name of 64 bytes": (tiny_gguf(infos=[tensor_info("n" * 64, [8], F32_T, 0)]), "too long"),
    "five dimensions": (tiny_gguf(infos=[tensor_info("a", [1, 1, 1, 1, 8], F32_T, 0)]), "5 dimensions"),
    "a zero dimension": (tiny_gguf(infos=[tensor_info("a", [8, 0], F32_T, 0)]), "zero or less"),
    "a negative dimension": (tiny_gguf(infos=[tensor_info("a", [8, -1], F32_T, 0)]), "zero or less"),
    "element count overflows": (tiny_gguf(infos=[tensor_info("a", [2**32, 2**32], F32_T, 0)]), "overflows"),
    "byte size overflows": (tiny_gguf(infos=[tensor_info("a", [2**31, 2**31], F32_T, 0)]), "overflows"),
    "huge tensor, small file": (tiny_gguf(infos=[tensor_info("a", [2**20, 2**20], F32_T, 0)]), "runs past the end"),
    "unknown ggml type": (tiny_gguf(infos=[tensor_info("a", [8], 99, 0)]), "unknown ggml type 99"),
    "removed ggml type (Q4_2)": (tiny_gguf(infos=[tensor_info("a", [32], 4, 0)]), "unknown ggml type 4"),
    "negative ggml type": (tiny_gguf(infos=[tensor_info("a", [8], 2**32 - 1, 0)]), "unknown ggml type -1"),
    "row not a multiple of the block": (tiny_gguf(infos=[tensor_info("a", [33], Q8_0_T, 0)]), "not a multiple of its block size 32"),
    "misaligned data offset": (tiny_gguf(infos=[tensor_info("a", [8], F32_T, 0), tensor_info("b", [8], F32_T, 36)]),
                               "has data offset 36, expected 32"),
    "overlapping tensors": (tiny_gguf(infos=[tensor_info("a", [16], F32_T, 0), tensor_info("b", [8], F32_T, 32)]),
                            "has data offset 32, expected 64"),
    "tensors out of order": (tiny_gguf(infos=[tensor_info("a", [8], F32_T, 32), tensor_info("b", [8], F32_T, 0)]),
                             "has data offset 32, expected 0"),
    "data offset past the end": (tiny_gguf(infos=[tensor_info("a", [8], F32_T, 2**40)]), "expected 0"),
    "no data section": (tiny_gguf(data=b""), "runs past the end"),
    "file ends inside the alignment padding": (tiny_gguf(padding=1, data=b""), "ends before its tensor data starts"),
}


def test_the_tiny_gguf_itself_is_valid(tmp_path):
    info = read_gguf(_write(tmp_path, "ok.gguf", tiny_gguf()))
    assert info.tensors == {"a": (8,), "b": (2, 4)} and info.types == {"a": "F32", "b": "F16"}
    assert info.kv_types == {"general.architecture": "STRING", "general.alignment": "UINT32"}


@pytest.mark.parametrize("case", sorted(HOSTILE_GGUF))
def test_malformed_gguf(tmp_path, case):
    data, needle = HOSTILE_GGUF[case]
    path = _write(tmp_path, "bad.gguf", data)
    with pytest.raises(ModelFileError) as err:
        read_gguf(path)
    assert needle in str(err.value) and str(path) in str(err.value), str(err.value)


def test_a_folder_or_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="folder"):
        read_gguf(tmp_path)
    with pytest.raises(ModelFileError, match="cannot read"):
        read_gguf(tmp_path / "nope.gguf")


def _rewrite(src: Path, dst: Path, key: str, raw: bytes) -> Path:
    return _write(dst.parent, dst.name, split_gguf(src.read_bytes()).set_kv(key, raw).join())


LLM_KEY_CASES = [
    ("llama.embedding_length", kv("llama.embedding_length", STR, "64"), "is STRING, expected an integer"),
    ("llama.embedding_length", kv("llama.embedding_length", F32, 64.0), "is FLOAT32, expected an integer"),
    ("llama.embedding_length", kv("llama.embedding_length", U64, 2**63), "expected 1 to"),
    ("llama.block_count", kv("llama.block_count", U32, 2**31), "expected 1 to 512"),
    ("llama.block_count", kv("llama.block_count", U32, 500), "500 blocks need at least 4500 tensors"),
    ("llama.block_count", kv("llama.block_count", I32, -2), "expected 1 to"),
    ("llama.attention.head_count", kv("llama.attention.head_count", U32, 0), "expected 1 to"),
    ("llama.feed_forward_length", kv_array("llama.feed_forward_length", U32, [128, 128]), "ARRAY[UINT32], expected an integer"),
    ("tokenizer.ggml.tokens", kv("tokenizer.ggml.tokens", U32, 400), "must be a non-empty array of strings"),
    ("tokenizer.ggml.tokens", kv_array("tokenizer.ggml.tokens", STR, []), "must be a non-empty array of strings"),
    ("general.architecture", kv("general.architecture", U32, 1), "expected a string"),
    # what llama.cpp's load_hparams asserts on (it aborts the process), or computes NaN from
    ("llama.expert_count", kv("llama.expert_count", U32, 2000), "expected 0 to 1024"),
    ("llama.expert_count", kv("llama.expert_count", U32, 4), "expert counts are inconsistent"),
    ("llama.expert_used_count", kv("llama.expert_used_count", U32, 2), "expert counts are inconsistent"),
    ("llama.expert_group_count", kv("llama.expert_group_count", U32, 2), "expert counts are inconsistent"),
    ("llama.nextn_predict_layers", kv("llama.nextn_predict_layers", U32, 9), "expected 0 to 2"),
    ("llama.rope.scaling.type", kv("llama.rope.scaling.type", STR, "bogus"), "llama.cpp knows none, linear"),
    ("llama.rope.scaling.factor", kv("llama.rope.scaling.factor", F32, -2.0), "0 or more"),
    ("llama.rope.freq_base", kv("llama.rope.freq_base", F32, 0.0), "above 0"),
    ("llama.rope.freq_base", kv("llama.rope.freq_base", F32, math.nan), "above 0"),
    ("llama.attention.layer_norm_rms_epsilon", kv("llama.attention.layer_norm_rms_epsilon", F32, -1.0), "0 or more"),
    ("llama.attention.layer_norm_rms_epsilon", kv("llama.attention.layer_norm_rms_epsilon", F32, math.nan), "0 or more"),
    ("llama.attention.layer_norm_rms_epsilon", kv("llama.attention.layer_norm_rms_epsilon", U32, 0), "expected a float"),
    ("tokenizer.ggml.model", kv("tokenizer.ggml.model", STR, "no_vocab"), "has no vocabulary"),
]


@pytest.mark.parametrize("key,raw,needle", LLM_KEY_CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(LLM_KEY_CASES)])
def test_llm_keys_of_the_wrong_type(bundle, tmp_path, key, raw, needle):
    path = _rewrite(bundle / "llm.f16.gguf", tmp_path / "llm.gguf", key, raw)
    with pytest.raises(ModelFileError, match=None) as err:
        validate_llm(path)
    assert needle in str(err.value), str(err.value)


TOWER_KEY_CASES = [
    ("clip.audio.embedding_length", kv("clip.audio.embedding_length", U64, 384), "mtmd reads it as UINT32"),
    ("clip.has_audio_encoder", kv("clip.has_audio_encoder", U8, 1), "mtmd reads it as BOOL"),
    ("clip.projector_type", kv("clip.projector_type", U32, 7), "mtmd reads it as STRING"),
    ("clip.audio.attention.layer_norm_epsilon", kv("clip.audio.attention.layer_norm_epsilon", F64, 1e-5),
     "mtmd reads it as FLOAT32"),
    ("clip.audio.block_count", kv("clip.audio.block_count", U32, 2**30), "expected 1 to 4096"),
    ("clip.audio.block_count", kv("clip.audio.block_count", U32, 4000), "4000 blocks need at least"),
    ("clip.audio.attention.head_count", kv("clip.audio.attention.head_count", U32, 0), "expected 1 to"),
    ("clip.audio.projector.stack_factor", kv("clip.audio.projector.stack_factor", U32, 0), "stack factor 0 must divide"),
    ("clip.audio.attention.layer_norm_epsilon", kv("clip.audio.attention.layer_norm_epsilon", F32, -1.0), "0 or more"),
    ("clip.audio.attention.layer_norm_epsilon", kv("clip.audio.attention.layer_norm_epsilon", F32, math.inf), "0 or more"),
    ("clip.audio.attention.head_count_kv", kv("clip.audio.attention.head_count_kv", U32, 0), "do not fit"),
    ("clip.audio.attention.head_count_kv", kv("clip.audio.attention.head_count_kv", U32, 3), "do not fit"),
    ("clip.audio.attention.head_dim", kv("clip.audio.attention.head_dim", U32, 7), "do not fit"),
]


@pytest.mark.parametrize("key,raw,needle", TOWER_KEY_CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(TOWER_KEY_CASES)])
def test_tower_keys_of_the_wrong_type(bundle, tmp_path, key, raw, needle):
    path = _rewrite(bundle / "tower.f16.gguf", tmp_path / "tower.gguf", key, raw)
    with pytest.raises(ModelFileError) as err:
        validate_tower(path, 64)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("kind,key,raw", [
    ("llm", "llama.attention.layer_norm_rms_epsilon", kv("llama.attention.layer_norm_rms_epsilon", F32, math.nan)),
    ("tower", "clip.audio.attention.head_count_kv", kv("clip.audio.attention.head_count_kv", U32, 0)),
], ids=["llm-rms-eps-nan", "tower-kv-heads-0"])
def test_values_that_abort_llama_cpp_through_the_cli(bundle, question_wav, tmp_path, kind, key, raw):
    """Both of these passed validation once and then killed the process inside ggml (GGML_ASSERT)."""
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    _rewrite(bundle / f"{kind}.f16.gguf", b / f"{kind}.f16.gguf", key, raw)
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "ggml", "--variant", "f16")
    assert_clean_error(res, 3, f"{kind}.f16.gguf", key)


def test_rewriting_without_a_change_stays_valid(bundle, tmp_path):
    """The test's own GGUF surgery keeps a file valid: the failures above are the edits."""
    for kind in ("llm", "tower"):
        parts = split_gguf((bundle / f"{kind}.f16.gguf").read_bytes())
        path = _write(tmp_path, f"{kind}.gguf", parts.join())
        validate_llm(path) if kind == "llm" else validate_tower(path, 64)


# --- 2. manifests that point outside the bundle, or hold the wrong types -----------------------


@pytest.fixture()
def manifest(bundle) -> dict:
    return json.loads((bundle / MANIFEST_FILE).read_text())


def _bundle_with(tmp_path: Path, manifest: dict, src: Path | None = None) -> Path:
    b = tmp_path / "b"
    if src is not None:
        shutil.copytree(src, b)
    b.mkdir(exist_ok=True)
    (b / MANIFEST_FILE).write_text(json.dumps(manifest))
    return b


@pytest.mark.parametrize("field_,value", [
    ("llm_files", {"f16": "../llm.f16.gguf"}),
    ("llm_files", {"f16": "/etc/passwd"}),
    ("llm_files", {"f16": "sub/llm.f16.gguf"}),
    ("llm_files", {"f16": "sub\\llm.f16.gguf"}),
    ("llm_files", {"f16": ".."}),
    ("llm_files", {"f16": ""}),
    ("llm_files", {"f16": "C:llm.gguf"}),
    ("llm_files", {"f16": "llm.gguf\u0000.txt"}),
    ("tower_files", {"f16": "../../tower.f16.gguf"}),
    ("tower_files", {"f16": "/tmp/tower.f16.gguf"}),
    ("torch_tower", "../tower-torch"),
    ("torch_tower", "/"),
    ("torch_tower", "."),
])
def test_manifest_paths_stay_inside(manifest, field_, value):
    manifest[field_] = value
    with pytest.raises(BundleError, match="plain file name inside the bundle folder"):
        Manifest.from_dict(manifest, "m.json")


def test_manifest_path_outside_through_the_cli(bundle, manifest, tmp_path):
    manifest["llm_files"] = {"f16": "../../../../../../etc/passwd"}
    b = _bundle_with(tmp_path, manifest)
    assert_clean_error(run_llasm("info", str(b)), 3, "not a path")


def test_symlinks_out_of_the_bundle(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(b / "llm.f16.gguf", outside / "llm.f16.gguf")
    os.symlink(outside / "llm.f16.gguf", b / "llm.f16.gguf")
    shutil.move(b / "tower-torch", outside / "tower-torch")
    os.symlink(os.path.relpath(outside / "tower-torch", b), b / "tower-torch")
    loaded = load_bundle(b)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        loaded.llm_path("f16")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        loaded.torch_tower_path()
    assert loaded.llm_path("f32").name == "llm.f32.gguf"  # the rest of the bundle still opens
    res = run_llasm("info", str(b))
    assert_clean_error(res, 3, "llm.f16.gguf", "outside the bundle folder")


def test_symlinks_inside_the_bundle_are_fine(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "llm.f16.gguf").rename(b / "real.gguf")
    os.symlink("real.gguf", b / "llm.f16.gguf")
    assert validate_llm(load_bundle(b).llm_path("f16"))
    link_loop = b / "llm.f32.gguf"
    link_loop.unlink()
    os.symlink("llm.f32.gguf", link_loop)
    with pytest.raises(BundleError):
        load_bundle(b).llm_path("f32")


BAD_FIELDS = [
    ("llm_dim", "64"), ("llm_dim", 64.0), ("llm_dim", True), ("llm_dim", 0), ("llm_dim", -64), ("llm_dim", 10**30),
    ("llm_dim", None), ("n_mels", [80]), ("n_mels", 0), ("tokens_per_window", "300"), ("tokens_per_window", 301),
    ("stack_factor", 0), ("stack_factor", -5), ("stack_factor", 8), ("stack_factor", "5"), ("stack_factor", 5.0),
    ("stack_factor", 10**20), ("max_tokens", 0), ("max_tokens", 1.5), ("max_tokens", 2**64),
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -0.1), ("temperature", "0.2"),
    ("temperature", True), ("temperature", 1e308), ("llm_files", ["llm.f16.gguf"]), ("llm_files", "llm.f16.gguf"),
    ("llm_files", {}), ("llm_files", {"f16": 5}), ("llm_files", {"f16": None}), ("llm_files", {"": "llm.f16.gguf"}),
    ("tower_files", ["tower.f16.gguf"]), ("tower_files", None), ("torch_tower", 5), ("torch_tower", ["tower-torch"]),
    ("encoder_input", "padded"), ("encoder_input", []), ("encoder_input", ["sideways"]), ("encoder_input", [1]),
    ("encoder_input", [["padded"]]), ("name", 5), ("system_prompt", None), ("audio_start", ["<au_start>"]),
    ("adaptor", "stack-swiglu-v9"), ("adaptor", 5), ("version", "1"), ("version", True), ("version", 2),
    ("format", None), ("surprise", 1), ("history_turns", -1), ("history_turns", 1.5), ("history_turns", "0"),
    ("history_turns", True), ("history_turns", 10**9),
]


@pytest.mark.parametrize("field_,value", BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v in BAD_FIELDS])
def test_manifest_field_of_the_wrong_type(manifest, field_, value):
    manifest[field_] = value
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(manifest, "m.json")
    assert "m.json" in str(err.value) and len(str(err.value)) < 400


def test_manifest_missing_fields_and_non_objects(manifest):
    for key in ("llm_dim", "llm_files", "name"):
        broken = {k: v for k, v in manifest.items() if k != key}
        with pytest.raises(BundleError, match="incomplete"):
            Manifest.from_dict(broken, "m.json")
    for data in ([], "x", 5, None):
        with pytest.raises(BundleError, match="JSON object"):
            Manifest.from_dict(data, "m.json")


def test_llasm_v1_manifest_keeps_stack_factor_zero(manifest):
    manifest |= {"adaptor": "llasm-v1", "stack_factor": 0, "tokens_per_window": 64, "tower_files": {}}
    assert Manifest.from_dict(manifest, "m.json").stack_factor == 0


@pytest.mark.parametrize("text,needle", [
    (b'{"format": "llasm-bundle", "version": 1, "llm_dim": ' + b"9" * 5000 + b"}", "cannot read"),
    (b"[" * 100000 + b"]" * 100000, "cannot read"),
    (b'{"format": "llasm-bundle", "version": 1, "name": "\xff\xfe"}', "cannot read"),
    (b"", "cannot read"),
    (b"[]", "must hold a JSON object"),
])
def test_manifest_text_that_breaks_json(tmp_path, text, needle):
    b = tmp_path / "b"
    b.mkdir()
    (b / MANIFEST_FILE).write_bytes(text)
    with pytest.raises(BundleError, match=needle):
        load_bundle(b)


def test_huge_manifest(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    with open(b / MANIFEST_FILE, "wb") as f:
        f.truncate(64 << 20)  # sparse: a 64 MB file of zeros costs nothing
    with pytest.raises(BundleError, match="a manifest is a few kB"):
        load_bundle(b)


def test_manifest_nan_as_json_text(manifest, tmp_path):
    manifest["temperature"] = math.nan
    b = _bundle_with(tmp_path, manifest)
    assert "NaN" in (b / MANIFEST_FILE).read_text()
    with pytest.raises(BundleError, match="temperature must be a number"):
        load_bundle(b)


@pytest.mark.parametrize("field_,value,needle", [
    ("llm_dim", "64", "llm_dim must be a whole number"),
    ("stack_factor", 0, "stack_factor must be a whole number that divides 1500"),
    ("temperature", math.nan, "temperature must be a number"),
    ("llm_files", ["llm.f16.gguf"], "llm_files must be an object"),
])
def test_manifest_types_through_the_cli(bundle, manifest, tmp_path, field_, value, needle):
    manifest[field_] = value
    b = _bundle_with(tmp_path, manifest, bundle)
    assert_clean_error(run_llasm("info", str(b)), 3, needle)


# --- 3. fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 33, 63, 64, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**62, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.fixture(scope="module")
def fuzz_files(bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    return {kind: (bundle / f"{kind}.f16.gguf").read_bytes() for kind in ("llm", "tower")}, folder


def _mutations(header_len: int):
    at = st.integers(0, header_len)
    flip = st.tuples(st.just("flip"), at, st.integers(1, 255))
    word = st.tuples(st.just("u64"), at, st.sampled_from(INTERESTING))
    word32 = st.tuples(st.just("u32"), at, st.sampled_from(INTERESTING[:20]))
    cut = st.tuples(st.just("cut"), at, st.just(0))
    insert = st.tuples(st.just("insert"), at, st.integers(1, 16))
    delete = st.tuples(st.just("delete"), at, st.integers(1, 16))
    return st.lists(st.one_of(flip, word, word32, cut, insert, delete), min_size=1, max_size=4)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, at, arg in ops:
        at = min(at, len(buf))
        if op == "flip" and at < len(buf):
            buf[at] ^= arg
        elif op == "u64":
            buf[at : at + 8] = struct.pack("<Q", arg)
        elif op == "u32":
            buf[at : at + 4] = struct.pack("<I", arg & 0xFFFFFFFF)
        elif op == "cut":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = bytes([0xA5]) * arg
        elif op == "delete":
            del buf[at : at + arg]
    return bytes(buf)


def _only_bundle_errors(path: Path, kind: str) -> None:
    try:
        info = read_gguf(path)
    except ModelFileError:
        return
    assert info.tensors is not None
    try:
        validate_llm(path) if kind == "llm" else validate_tower(path, 64)
    except BundleError:
        pass


@pytest.mark.parametrize("kind", ["llm", "tower"])
def test_fuzz_gguf_bytes(fuzz_files, kind):
    """Random flips, words, cuts, insertions and deletions in a real GGUF's header: ModelFileError or a result."""
    files, folder = fuzz_files
    data = files[kind]
    header_len = split_gguf(data).spans["data"][0] + 64
    path = folder / f"{kind}.gguf"

    @FUZZ
    @given(ops=_mutations(header_len))
    def run(ops):
        path.write_bytes(_mutate(data, ops))
        _only_bundle_errors(path, kind)

    run()


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["..", "/", "../x.gguf", "/etc/passwd", "a/b", "padded", "unpadded",
                                           "stack-swiglu", "llasm-v1", "llasm-bundle", "f16", ""]),
)


def _json_containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(json_scalars, _json_containers, max_leaves=8)
FIELDS = ["format", "version", *Manifest.__dataclass_fields__]


def _check_manifest(data) -> None:
    try:
        m = Manifest.from_dict(data, "m.json")
    except BundleError as exc:
        assert "\n" not in str(exc) or len(str(exc)) < 2000
        return
    again = Manifest.from_dict(json.loads(m.to_json()), "m.json")  # what passes, round-trips
    assert again == m
    root = Path(tempfile.gettempdir()) / "llasm-no-such-bundle"
    for call in (lambda: Bundle(root, m).llm_path(), lambda: Bundle(root, m).tower_path(),
                 lambda: Bundle(root, m).torch_tower_path()):
        try:
            call()
        except BundleError:
            pass


@FUZZ
@given(data=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=len(FIELDS)))
def test_fuzz_manifest_dicts(data):
    _check_manifest(data)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), json_values | st.just(KeyError)), min_size=1, max_size=4))
def test_fuzz_real_manifest(edits):
    base = json.loads(_REAL_MANIFEST.read_text()) if _REAL_MANIFEST.exists() else None
    data = dict(base or _FALLBACK_MANIFEST)
    for key, value in edits:
        if value is KeyError:
            data.pop(key, None)
        else:
            data[key] = value
    _check_manifest(data)


_REAL_MANIFEST = Path(__file__).resolve().parents[1] / "llasm_cli" / "models" / "demo" / MANIFEST_FILE
_FALLBACK_MANIFEST = {
    "format": "llasm-bundle", "version": 1, "name": "x", "adaptor": "stack-swiglu", "llm_dim": 64, "n_mels": 80,
    "tokens_per_window": 300, "stack_factor": 5, "audio_start": "<au_start>", "audio_end": "<au_end>",
    "system_prompt": "", "llm_files": {"f16": "llm.f16.gguf"}, "tower_files": {"f16": "tower.f16.gguf"},
    "torch_tower": "tower-torch", "encoder_input": ["padded"], "temperature": 0.2, "max_tokens": 1024,
}


def test_the_fuzzed_manifest_is_valid_before_edits():
    data = json.loads(_REAL_MANIFEST.read_text()) if _REAL_MANIFEST.exists() else _FALLBACK_MANIFEST
    assert Manifest.from_dict(data, "m.json").llm_dim > 0
    assert Manifest.from_dict(_FALLBACK_MANIFEST, "m.json").stack_factor == 5


# --- 4. atomic writes ----------------------------------------------------------------------------


def test_atomic_writes_replace_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    target.chmod(0o640)
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert atomic_write_bytes(target, b"new").read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o640  # an existing file keeps its permissions
    with atomic_path(tmp_path / "sub" / "x.wav") as tmp:
        assert tmp.suffix == ".wav" and tmp.parent == tmp_path / "sub" and tmp.name.startswith(".x.tmp-")
        tmp.write_bytes(b"RIFF")
    assert (tmp_path / "sub" / "x.wav").read_bytes() == b"RIFF"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.json", "sub", "x.wav"]  # no temporaries left
    with pytest.raises(ValueError):
        with atomic_file(target, "a"):
            pass


def test_atomic_folder_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out) as tmp:
            (tmp / "a").write_text("2")
            raise KeyboardInterrupt
    assert (out / "a").read_text() == "1"
    with atomic_folder(out) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    with atomic_folder(out, replace=False) as tmp:  # a cache: the folder already there wins
        (tmp / "c").write_text("4")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_writers_leave_no_half_file(swiglu, tmp_path, monkeypatch):
    """A GGUF writer that dies half-way leaves neither the target nor a temporary behind."""
    import gguf
    from llasm_export.llm_gguf import write_llm_gguf

    ckpt, _ = swiglu

    def die(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", die)
    with pytest.raises(OSError, match="disk full"):
        write_llm_gguf(ckpt / "llm", tmp_path / "llm.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_expert_count_as_string_array_is_a_clear_error(tmp_path):
    """A string array where llama.cpp expects integers (read by the header parser as its length)."""
    import gguf

    from llasm_cli.llm.cpu_probe import write_random_llama

    src = write_random_llama(tmp_path / "ok.gguf", 64, 128, 1, 2, 288)
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for kv in reader.fields.values():
        if kv.name.startswith("GGUF.") or kv.name == gguf.Keys.General.ARCHITECTURE:
            continue
        w.add_key_value(kv.name, kv.contents(), kv.types[0],
                        kv.types[-1] if kv.types[0] == gguf.GGUFValueType.ARRAY else None)
    w.add_array("llama.expert_used_count", ["a", "b"])
    for t in reader.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="expert_used_count"):
        validate_llm(tmp_path / "bad.gguf")
