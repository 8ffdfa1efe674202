"""The runnable bundle: manifest, file layout, and validation before llama.cpp sees a file.

A malformed GGUF trips a GGML_ASSERT inside llama.cpp and aborts the whole process, so every
name, shape and size llama.cpp relies on is checked here first and turned into a clear error.

Layout::

    BUNDLE/llasm-bundle.json     the manifest (this module's Manifest)
    BUNDLE/llm.<variant>.gguf    the LLM, one file per quantization variant
    BUNDLE/tower.<variant>.gguf  the audio tower as an mmproj GGUF (ggml backend; stack-swiglu)
    BUNDLE/tower-torch/          the audio tower as safetensors (torch backend)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path, PureWindowsPath

from .errors import BundleError, ModelFileError, TowerMismatchError

MANIFEST_FILE = "llasm-bundle.json"
BUNDLE_FORMAT = "llasm-bundle"
BUNDLE_VERSION = 1
TORCH_TOWER_DIR = "tower-torch"
MAX_MANIFEST_BYTES = 16 << 20
# With no --variant, the first of these a bundle has runs: smallest that keeps quality first.
PREFERRED_VARIANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16", "bf16", "f32")
ADAPTOR_TYPES = ("stack-swiglu", "llasm-v1")
ENCODER_INPUTS = ("padded", "unpadded")
N_ENCODER_FRAMES = 1500  # Whisper encoder frames per 30 s window
# llama.cpp's limits (src/llama-hparams.h, src/llama-model.cpp): beyond them it aborts the process
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


@dataclass
class Manifest:
    """What a bundle holds and how to run it."""

    name: str
    adaptor: str  # "stack-swiglu" | "llasm-v1"
    llm_dim: int
    n_mels: int
    tokens_per_window: int  # embeddings for one full 30 s window
    stack_factor: int  # stack-swiglu: frames per embedding; llasm-v1: 0
    audio_start: str
    audio_end: str
    system_prompt: str
    llm_files: dict[str, str]  # variant ("f32", "f16", "q8_0", ...) -> file name
    tower_files: dict[str, str] = field(default_factory=dict)  # variant -> mmproj GGUF (ggml backend)
    torch_tower: str | None = TORCH_TOWER_DIR
    encoder_input: list = field(default_factory=lambda: ["padded"])  # what the adaptor was trained on
    temperature: float = 0.2
    max_tokens: int = 1024

    def to_json(self) -> str:
        data = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION} | asdict(self)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Manifest:
        """Check every field's JSON type and range: a hand-edited or hostile manifest is a BundleError."""
        if not isinstance(data, dict):
            raise BundleError(f"{where} must hold a JSON object, not {type(data).__name__}")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not a llasm bundle manifest (format {_show(data.get('format'))})")
        version = data.get("version")
        if type(version) is not int or version != BUNDLE_VERSION:
            raise BundleError(
                f"{where} has bundle version {_show(version)}; this llasm reads version {BUNDLE_VERSION}. "
                "Re-export the bundle or upgrade llasm."
            )
        fields = set(cls.__dataclass_fields__)
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = set(body) - fields
        if unknown:
            raise BundleError(f"{where} has unknown keys {sorted(unknown)}")
        try:
            manifest = cls(**body)
        except TypeError as exc:
            raise BundleError(f"{where} is incomplete: {exc}") from None
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        def bad(name: str, want: str) -> BundleError:
            return BundleError(f"{where}: {name} must be {want}, not {_show(getattr(self, name))}")

        for name in ("name", "audio_start", "audio_end", "system_prompt"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "a string")
        if self.adaptor not in ADAPTOR_TYPES:
            raise bad("adaptor", " or ".join(repr(a) for a in ADAPTOR_TYPES))
        for name, hi in (("llm_dim", 1 << 20), ("n_mels", 1024), ("tokens_per_window", 1 << 16), ("max_tokens", 1 << 24)):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= hi:
                raise bad(name, f"a whole number from 1 to {hi}")
        k = self.stack_factor
        if self.adaptor == "stack-swiglu":
            if type(k) is not int or not 1 <= k <= N_ENCODER_FRAMES or N_ENCODER_FRAMES % k:
                raise bad("stack_factor", f"a whole number that divides {N_ENCODER_FRAMES} (mtmd aborts otherwise)")
            if self.tokens_per_window != N_ENCODER_FRAMES // k:
                raise bad("tokens_per_window", f"{N_ENCODER_FRAMES // k} with stack_factor {k}")
        elif type(k) is not int or not 0 <= k <= N_ENCODER_FRAMES:
            raise bad("stack_factor", f"a whole number from 0 to {N_ENCODER_FRAMES}")
        t = self.temperature
        if type(t) not in (int, float) or not math.isfinite(t) or not 0 <= t <= 100:
            raise bad("temperature", "a number from 0 to 100")
        if (not isinstance(self.encoder_input, list) or not self.encoder_input
                or any(not isinstance(e, str) or e not in ENCODER_INPUTS for e in self.encoder_input)):
            raise bad("encoder_input", f"a non-empty list of {' and/or '.join(repr(e) for e in ENCODER_INPUTS)}")
        for name in ("llm_files", "tower_files"):
            files = getattr(self, name)
            if not isinstance(files, dict):
                raise bad(name, "an object mapping variant names to file names")
            for variant, file in files.items():
                if not variant or not isinstance(file, str):
                    raise bad(name, "an object mapping variant names to file names")
                _check_file_name(file, f"{name}[{variant!r}]", where)
        if not self.llm_files:
            raise BundleError(f"{where} lists no LLM file")
        if self.torch_tower is not None:
            if not isinstance(self.torch_tower, str):
                raise bad("torch_tower", "a folder name or null")
            _check_file_name(self.torch_tower, "torch_tower", where)


def _show(value: object, limit: int = 60) -> str:
    """repr() for an error message, cut short (a hostile manifest may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_file_name(name: str, what: str, where: str) -> None:
    """A manifest names files inside the bundle folder: one plain name, never a path out of it."""
    if (
        not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
        or PureWindowsPath(name).drive or name != name.strip()
    ):
        raise BundleError(
            f"{where}: {what} is {_show(name)}; it must be a plain file name inside the bundle folder, not a path"
        )


@dataclass
class Bundle:
    """A bundle directory with its parsed manifest."""

    root: Path
    manifest: Manifest

    def llm_path(self, variant: str | None = None) -> Path:
        return self._pick(self.manifest.llm_files, variant, "LLM")

    def tower_path(self, variant: str | None = None) -> Path:
        if not self.manifest.tower_files:
            raise BundleError(
                f"bundle {self.root} has no ggml tower (adaptor {self.manifest.adaptor!r}); use --backend torch"
            )
        return self._pick(self.manifest.tower_files, variant, "tower")

    def torch_tower_path(self) -> Path:
        if not self.manifest.torch_tower:
            raise BundleError(f"bundle {self.root} has no torch tower; use --backend ggml")
        path = self._inside(self.manifest.torch_tower)
        if not path.is_dir():
            raise BundleError(f"bundle {self.root} is incomplete: {path.name}/ is missing")
        return path

    def _inside(self, name: str) -> Path:
        """``root/name``, refused if a symlink (or ``name`` itself) leads out of the bundle folder."""
        _check_file_name(name, "a file name", str(self.root / MANIFEST_FILE))
        path = self.root / name
        if path.is_symlink() or path.exists():
            try:
                root = self.root.resolve(strict=True)
                target = path.resolve(strict=False)
            except (OSError, RuntimeError) as exc:  # a symlink loop
                raise BundleError(f"bundle {self.root}: cannot resolve {name}: {exc}") from None
            if target == root or not target.is_relative_to(root):
                raise BundleError(
                    f"bundle {self.root}: {name} is a link to {target}, outside the bundle folder; "
                    "copy the file into the bundle instead"
                )
        return path

    def _pick(self, files: dict[str, str], variant: str | None, what: str) -> Path:
        if variant is None:
            variant = next((v for v in PREFERRED_VARIANTS if v in files), next(iter(files)))
        if variant not in files:
            raise BundleError(f"bundle has no {what} variant {variant!r}; it has {sorted(files)}")
        path = self._inside(files[variant])
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {files[variant]} is missing")
        return path


def demo_bundle_path() -> Path | None:
    """The small demo model that ships inside the package (see finetune/demo.py), if present."""
    path = Path(__file__).resolve().parent / "models" / "demo"
    return path if (path / MANIFEST_FILE).is_file() else None


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory (or its manifest file) and parse the manifest."""
    root = Path(path)
    if root.is_file() and root.name == MANIFEST_FILE:
        root = root.parent
    manifest_path = root / MANIFEST_FILE
    if not root.exists():
        raise BundleError(f"bundle not found: {root}")
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a llasm bundle: {MANIFEST_FILE} is missing (create one with `llasm export`)")
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{manifest_path} is {manifest_path.stat().st_size} bytes; a manifest is a few kB")
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, UTF-8 or a 5000-digit number
        raise BundleError(f"cannot read {manifest_path}: {_show(str(exc), 200)[1:-1]}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    return Bundle(root, Manifest.from_dict(data, str(manifest_path)))


# --- GGUF validation -------------------------------------------------------------------------


@dataclass
class GGUFInfo:
    """The parts of a GGUF header that validation needs."""

    path: Path
    fields: dict[str, object]  # key -> value; a string array holds just its length
    tensors: dict[str, tuple[int, ...]]  # name -> shape in numpy order (outermost first)
    types: dict[str, str]  # name -> ggml type name ("F32", "F16", "Q8_0", ...)
    kv_types: dict[str, str] = field(default_factory=dict)  # key -> "UINT32", "STRING", "ARRAY[STRING]", ...


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


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {
    0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
    8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64",
}
_INT_TYPES = frozenset({"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64"})
# Limits of ggml's gguf.cpp
GGUF_DEFAULT_ALIGNMENT = 32
_MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
_MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
_MAX_NAME = 64  # GGML_MAX_NAME, including the terminating NUL
_MAX_DIMS = 4  # GGML_MAX_DIMS
_INT64_MAX = (1 << 63) - 1
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 4 + 8  # name length, a 1-byte name, n_dims, type, offset


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _parse_gguf(path: Path, f, size: int) -> GGUFInfo:
    import gguf

    def left() -> int:
        return size - f.tell()

    def read(fmt: str, what: str):
        n = struct.calcsize(fmt)
        data = f.read(n)
        if len(data) != n:
            raise _Corrupt(f"the file ends inside {what} at byte {size} (truncated download?)")
        return struct.unpack("<" + fmt, data)[0]

    def raw_string(what: str) -> bytes:
        n = read("Q", f"the length of {what}")
        if n > _MAX_STRING:
            raise _Corrupt(f"{what} claims {n} bytes, more than GGUF allows ({_MAX_STRING})")
        if n > left():
            raise _Corrupt(f"{what} ({n} bytes) runs past the end of the file (truncated download?)")
        return f.read(n)

    def value(vtype: int, key: str):
        if vtype in _SCALARS:
            return read(_SCALARS[vtype], f"the value of {key!r}")
        if vtype == _STRING:
            return raw_string(f"the value of {key!r}").decode("utf-8", "replace")
        raise _Corrupt(f"key {key!r} has invalid GGUF value type {vtype}")

    def array(key: str):
        etype = read("I", f"the element type of {key!r}")
        count = read("Q", f"the length of {key!r}")
        if etype not in _TYPE_NAMES or etype == _ARRAY:
            raise _Corrupt(f"key {key!r} is an array of invalid GGUF type {etype}")
        if count > _MAX_ARRAY:
            raise _Corrupt(f"key {key!r} claims {count} elements, more than GGUF allows ({_MAX_ARRAY})")
        if etype == _STRING:
            if count * 8 > left():
                raise _Corrupt(f"array {key!r} ({count} strings) runs past the end of the file (truncated download?)")
            for i in range(count):  # skip the strings, keep the count
                n = read("Q", f"string {i} of {key!r}")
                if n > _MAX_STRING or n > left():
                    raise _Corrupt(f"string {i} of {key!r} runs past the end of the file (truncated download?)")
                f.seek(n, 1)
            return count, "ARRAY[STRING]"
        fmt = _SCALARS[etype]
        nbytes = count * struct.calcsize(fmt)
        if nbytes > left():
            raise _Corrupt(f"array {key!r} ({count} values) runs past the end of the file (truncated download?)")
        return list(struct.unpack(f"<{count}{fmt}", f.read(nbytes))), f"ARRAY[{_TYPE_NAMES[etype]}]"

    if size < 4 or f.read(4) != b"GGUF":
        raise _Corrupt("bad magic (not a GGUF file)")
    version = read("I", "the version")
    if version not in (2, 3):
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
        if vtype == _ARRAY:
            fields[key], kv_types[key] = array(key)
        else:
            fields[key] = value(vtype, key)
            kv_types[key] = _TYPE_NAMES[vtype]

    align = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in fields:
        if kv_types["general.alignment"] != "UINT32":
            raise _Corrupt(f"key 'general.alignment' must be UINT32, not {kv_types['general.alignment']}")
        align = fields["general.alignment"]
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
        n_elems = 1
        for d in dims:
            n_elems *= d
        if n_elems > _INT64_MAX:
            raise _Corrupt(f"tensor {name!r} has shape {dims}: its element count overflows")
        type_id = read("i", f"the type of {name!r}")
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
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
    return GGUFInfo(path, fields, tensors, types, kv_types)


def _require(info: GGUFInfo, key: str) -> object:
    if key not in info.fields:
        raise ModelFileError(f"{info.path.name}: required key {key!r} is missing")
    return info.fields[key]


def _int(info: GGUFInfo, key: str, hi: int, lo: int = 1, default: int | None = None) -> int:
    """An integer key in [lo, hi]: a string, float, array or absurd value is a clear error, not a crash."""
    if default is not None and key not in info.fields:
        return default
    value = _require(info, key)
    kind = info.kv_types.get(key, "UINT32" if type(value) is int else type(value).__name__)
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
    value, kind = info.fields[key], info.kv_types.get(key, "FLOAT32")
    if kind not in ("FLOAT32", "FLOAT64"):
        raise ModelFileError(f"{info.path.name}: key {key!r} is {kind}, expected a float")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        want = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise ModelFileError(f"{info.path.name}: key {key!r} is {value}, expected {want} (llama.cpp would abort or compute NaN)")


def _check_llm_hparams(info: GGUFInfo, arch: str) -> int:
    """What llama.cpp's llama_model::load_hparams asserts on for every architecture; returns the block count."""
    name = info.path.name
    n_layer = _int(info, f"{arch}.block_count", LLAMA_MAX_LAYERS)
    _int(info, f"{arch}.nextn_predict_layers", n_layer, lo=0, default=0)
    n_expert = _int(info, f"{arch}.expert_count", LLAMA_MAX_EXPERTS, lo=0, default=0)
    key = f"{arch}.expert_used_count"
    used = info.fields.get(key, 0)
    kind = info.kv_types.get(key, "UINT32")
    if kind.startswith("ARRAY["):
        if kind[6:-1] not in _INT_TYPES or len(used) > n_layer:
            raise ModelFileError(f"{name}: key {key!r} is {kind} of {len(used)}, expected integers, one per block")
        used = max(used, default=0)
    elif kind not in _INT_TYPES:
        raise ModelFileError(f"{name}: key {key!r} is {kind}, expected an integer")
    groups = _int(info, f"{arch}.expert_group_count", LLAMA_MAX_EXPERTS, lo=0, default=0)
    group_used = _int(info, f"{arch}.expert_group_used_count", LLAMA_MAX_EXPERTS, lo=0, default=0)
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
    key = f"{arch}.rope.scaling.type"
    if key in info.fields and info.fields[key] not in ROPE_SCALING_TYPES:
        raise ModelFileError(f"{name}: key {key!r} is {_show(info.fields[key])}; llama.cpp knows {', '.join(ROPE_SCALING_TYPES)}")
    _float(info, f"{arch}.rope.freq_base", positive=True)
    _float(info, f"{arch}.rope.scaling.factor")
    _float(info, f"{arch}.attention.layer_norm_epsilon")
    _float(info, f"{arch}.attention.layer_norm_rms_epsilon")
    if info.fields.get("tokenizer.ggml.model", "llama") == "no_vocab":
        raise ModelFileError(f"{name}: the model has no vocabulary (tokenizer 'no_vocab'); llasm needs one to talk")
    return n_layer


def _vocab_size(info: GGUFInfo) -> int:
    key = "tokenizer.ggml.tokens"
    _require(info, key)
    if info.kv_types.get(key, "ARRAY[STRING]") != "ARRAY[STRING]" or not 1 <= info.fields[key] <= _MAX_ARRAY:
        raise ModelFileError(f"{info.path.name}: key {key!r} must be a non-empty array of strings")
    return info.fields[key]


def _check_layers(info: GGUFInfo, n_layer: int, per_layer: int) -> None:
    """A block count the tensor table cannot back is refused before building its expectations."""
    if n_layer * per_layer > len(info.tensors):
        raise ModelFileError(
            f"{info.path.name}: {n_layer} blocks need at least {n_layer * per_layer} tensors; the file has {len(info.tensors)}"
        )


_MAX_WIDTH = 1 << 20  # far above any real model's widths, far below an overflow


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
    arch = _str(info, "general.architecture")
    if arch != "llama":
        return _validate_other_llm(info, arch)
    n_layer = _check_llm_hparams(info, arch)
    n_embd = _int(info, "llama.embedding_length", _MAX_WIDTH)
    n_ff = _int(info, "llama.feed_forward_length", _MAX_WIDTH * 4)
    n_head = _int(info, "llama.attention.head_count", 1 << 16)
    n_head_kv = _int(info, "llama.attention.head_count_kv", 1 << 16, default=n_head)
    head_k = _int(info, "llama.attention.key_length", _MAX_WIDTH, default=max(n_embd // n_head, 1))
    n_vocab = _vocab_size(info)
    if n_head % n_head_kv:
        raise ModelFileError(f"{path.name}: head counts {n_head}/{n_head_kv} are inconsistent")
    _check_layers(info, n_layer, 9)
    expected = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for i in range(n_layer):
        expected |= {
            f"blk.{i}.attn_norm.weight": (n_embd,),
            f"blk.{i}.attn_q.weight": (n_head * head_k, n_embd),
            f"blk.{i}.attn_k.weight": (n_head_kv * head_k, n_embd),
            f"blk.{i}.attn_v.weight": (n_head_kv * head_k, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, n_head * head_k),
            f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
        }
    _check_tensors(info, expected, optional={"output.weight"})
    return info


def _validate_other_llm(info: GGUFInfo, arch: str) -> GGUFInfo:
    """Other architectures (e.g. a GGUF from elsewhere): check the basics llama.cpp reads first."""
    _check_llm_hparams(info, arch)
    n_embd = _int(info, f"{arch}.embedding_length", _MAX_WIDTH)
    n_vocab = _vocab_size(info)
    _check_tensors(info, {"token_embd.weight": (n_vocab, n_embd)})
    return info


def llm_embedding_width(info: GGUFInfo) -> int:
    arch = info.fields["general.architecture"]
    return int(info.fields[f"{arch}.embedding_length"])


# Keys mtmd's clip.cpp reads for an audio tower, with the GGUF type its getters assert on.
_TOWER_KEY_TYPES = {
    "general.name": "STRING",
    "general.description": "STRING",
    "clip.has_vision_encoder": "BOOL",
    "clip.has_audio_encoder": "BOOL",
    "clip.has_gen_audio_encoder": "BOOL",
    "clip.use_gelu": "BOOL",
    "clip.use_silu": "BOOL",
    "clip.projector_type": "STRING",
    "clip.audio.projector_type": "STRING",
    "clip.audio.embedding_length": "UINT32",
    "clip.audio.feed_forward_length": "UINT32",
    "clip.audio.block_count": "UINT32",
    "clip.audio.projection_dim": "UINT32",
    "clip.audio.attention.head_count": "UINT32",
    "clip.audio.attention.head_count_kv": "UINT32",
    "clip.audio.attention.head_dim": "UINT32",
    "clip.audio.attention.layer_norm_epsilon": "FLOAT32",
    "clip.audio.num_mel_bins": "UINT32",
    "clip.audio.projector.stack_factor": "UINT32",
}


def validate_tower(path: Path, llm_dim: int) -> GGUFInfo:
    """Check an ultravox mmproj GGUF against what mtmd's whisper graph asserts on."""
    path = Path(path)
    info = read_gguf(path)
    arch = _str(info, "general.architecture")
    if arch != "clip":
        raise ModelFileError(f"{path.name}: not an mmproj file (architecture {arch!r})")
    for key, want in _TOWER_KEY_TYPES.items():  # mtmd's gguf_get_val_* asserts the type: a wrong one aborts
        got = info.kv_types.get(key)
        if got is not None and got != want:
            raise ModelFileError(f"{path.name}: key {key!r} is {got}; mtmd reads it as {want} (and aborts otherwise)")
    _require(info, "clip.audio.attention.layer_norm_epsilon")
    _float(info, "clip.audio.attention.layer_norm_epsilon")
    if info.fields.get("clip.has_audio_encoder") is not True:
        raise ModelFileError(f"{path.name}: the mmproj file has no audio encoder")
    proj = info.fields.get("clip.projector_type") or info.fields.get("clip.audio.projector_type")
    if proj != "ultravox":
        raise ModelFileError(f"{path.name}: projector type {_show(proj)}; llasm runs 'ultravox' towers")
    d = _int(info, "clip.audio.embedding_length", _MAX_WIDTH)
    n_ff = _int(info, "clip.audio.feed_forward_length", _MAX_WIDTH * 4)
    n_layer = _int(info, "clip.audio.block_count", 1 << 12)
    n_head = _int(info, "clip.audio.attention.head_count", 1 << 12)
    n_mels = _int(info, "clip.audio.num_mel_bins", 1024)
    out_dim = _int(info, "clip.audio.projection_dim", _MAX_WIDTH)
    k = _int(info, "clip.audio.projector.stack_factor", 1 << 32, lo=0)
    if k <= 0 or N_ENCODER_FRAMES % k:
        raise ModelFileError(f"{path.name}: stack factor {k} must divide {N_ENCODER_FRAMES} (mtmd aborts otherwise)")
    if d % n_head:
        raise ModelFileError(f"{path.name}: {n_head} heads do not divide width {d}")
    # Whisper attends with every head over its own slice: other values make mtmd's graph assert
    n_head_kv = _int(info, "clip.audio.attention.head_count_kv", 1 << 12, lo=0, default=n_head)
    head_dim = _int(info, "clip.audio.attention.head_dim", _MAX_WIDTH, lo=0, default=0)
    if n_head_kv != n_head or head_dim not in (0, d // n_head):
        raise ModelFileError(
            f"{path.name}: key 'clip.audio.attention.head_count_kv' = {n_head_kv} and "
            f"'clip.audio.attention.head_dim' = {head_dim} do not fit {n_head} heads over width {d} (mtmd aborts otherwise)"
        )
    _check_layers(info, n_layer, 16)
    mlp1 = info.tensors.get("mm.a.mlp.1.weight", ())
    hidden = mlp1[0] if len(mlp1) == 2 else 0
    expected = {
        "a.position_embd.weight": (N_ENCODER_FRAMES, d),
        "a.conv1d.1.weight": (d, n_mels, 3),
        "a.conv1d.1.bias": (d, 1),
        "a.conv1d.2.weight": (d, d, 3),
        "a.conv1d.2.bias": (d, 1),
        "a.post_ln.weight": (d,),
        "a.post_ln.bias": (d,),
        "mm.a.norm_pre.weight": (d * k,),
        "mm.a.mlp.1.weight": (hidden, d * k),
        "mm.a.norm_mid.weight": (hidden // 2,),
        "mm.a.mlp.2.weight": (out_dim, hidden // 2),
    }
    for i in range(n_layer):
        for part in ("attn_q", "attn_v", "attn_out"):
            expected |= {f"a.blk.{i}.{part}.weight": (d, d), f"a.blk.{i}.{part}.bias": (d,)}
        expected |= {
            f"a.blk.{i}.attn_k.weight": (d, d),
            f"a.blk.{i}.ln1.weight": (d,), f"a.blk.{i}.ln1.bias": (d,),
            f"a.blk.{i}.ln2.weight": (d,), f"a.blk.{i}.ln2.bias": (d,),
            f"a.blk.{i}.ffn_up.weight": (n_ff, d), f"a.blk.{i}.ffn_up.bias": (n_ff,),
            f"a.blk.{i}.ffn_down.weight": (d, n_ff), f"a.blk.{i}.ffn_down.bias": (d,),
        }
    if hidden == 0 or hidden % 2:
        raise ModelFileError(f"{path.name}: tensor 'mm.a.mlp.1.weight' is missing or has an odd width")
    _check_tensors(info, expected)
    for name in ("a.position_embd.weight", "a.conv1d.1.weight", "a.conv1d.2.weight"):
        if info.types[name] not in ("F32", "F16"):
            raise ModelFileError(f"{path.name}: tensor {name!r} is {info.types[name]}; mtmd needs F32 or F16 there")
    for name, ttype in info.types.items():
        parts = name.split(".")
        is_norm = name.endswith(".bias") or "norm" in name or (len(parts) >= 2 and "ln" in parts[-2])
        if is_norm and ttype != "F32":
            raise ModelFileError(f"{path.name}: tensor {name!r} is {ttype}; biases and norms must be F32")
    if "a.blk.0.attn_k.bias" in info.tensors:
        raise ModelFileError(f"{path.name}: Whisper has no key bias, but 'a.blk.0.attn_k.bias' is present")
    check_widths(out_dim, llm_dim, path.name)
    return info


def check_widths(tower_dim: int, llm_dim: int, what: str) -> None:
    if tower_dim != llm_dim:
        raise TowerMismatchError(
            f"{what}: the audio tower outputs {tower_dim}-wide embeddings but the LLM expects {llm_dim}; "
            "export the tower and the LLM from the same checkpoint"
        )
