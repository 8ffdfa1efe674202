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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BundleError, ModelFileError, TowerMismatchError

MANIFEST_FILE = "llasm-bundle.json"
BUNDLE_FORMAT = "llasm-bundle"
BUNDLE_VERSION = 1
TORCH_TOWER_DIR = "tower-torch"
# With no --variant, the first of these a bundle has runs: smallest that keeps quality first.
PREFERRED_VARIANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16", "bf16", "f32")


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
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not a llasm bundle manifest (format {data.get('format')!r})")
        if data.get("version") != BUNDLE_VERSION:
            raise BundleError(
                f"{where} has bundle version {data.get('version')}; this llasm reads version {BUNDLE_VERSION}. "
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
        if not manifest.llm_files:
            raise BundleError(f"{where} lists no LLM file")
        return manifest


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
        path = self.root / self.manifest.torch_tower
        if not path.is_dir():
            raise BundleError(f"bundle {self.root} is incomplete: {path.name}/ is missing")
        return path

    def _pick(self, files: dict[str, str], variant: str | None, what: str) -> Path:
        if variant is None:
            variant = next((v for v in PREFERRED_VARIANTS if v in files), next(iter(files)))
        if variant not in files:
            raise BundleError(f"bundle has no {what} variant {variant!r}; it has {sorted(files)}")
        path = self.root / files[variant]
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {files[variant]} is missing")
        return path


def demo_bundle_path() -> Path | None:
    """The small demo model that ships inside the package (see bench/train_demo.py), if present."""
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
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    return Bundle(root, Manifest.from_dict(data, str(manifest_path)))


# --- GGUF validation -------------------------------------------------------------------------


@dataclass
class GGUFInfo:
    """The parts of a GGUF header that validation needs."""

    path: Path
    fields: dict[str, object]
    tensors: dict[str, tuple[int, ...]]  # name -> shape in numpy order (outermost first)
    types: dict[str, str]  # name -> ggml type name ("F32", "F16", "Q8_0", ...)


def read_gguf(path: Path) -> GGUFInfo:
    """Parse a GGUF header and tensor table; any corruption becomes a ModelFileError.

    Reads only the header: string arrays (262k-token vocabularies) are skipped, keeping just
    their length, so validating a large model costs milliseconds, not seconds and hundreds of MB.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _parse_gguf(path, f, path.stat().st_size)
    except ModelFileError:
        raise
    except Exception as exc:  # struct errors, bad UTF-8, unknown enum values on junk input
        raise ModelFileError(f"{path} is not a readable GGUF file: {exc}") from None


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _parse_gguf(path: Path, f, size: int) -> GGUFInfo:
    import struct

    import gguf

    def read(fmt: str):
        n = struct.calcsize(fmt)
        data = f.read(n)
        if len(data) != n:
            raise ValueError("unexpected end of file (truncated download?)")
        return struct.unpack("<" + fmt, data)[0]

    def string() -> str:
        n = read("Q")
        if n > size:
            raise ValueError("string length past the end of the file")
        return f.read(n).decode("utf-8")

    def value(vtype: int):
        if vtype in _SCALARS:
            return read(_SCALARS[vtype])
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = read("I"), read("Q")
            if count > size:
                raise ValueError("array length past the end of the file")
            if etype == _STRING:
                for _ in range(count):  # skip the strings, keep the count
                    f.seek(read("Q"), 1)
                return count
            return [value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    if f.read(4) != b"GGUF":
        raise ValueError("bad magic (not a GGUF file)")
    version = read("I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = read("Q"), read("Q")
    fields = {}
    for _ in range(n_kv):
        key = string()
        fields[key] = value(read("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [read("Q") for _ in range(read("I"))]
        infos.append((name, dims, gguf.GGMLQuantizationType(read("I")), read("Q")))
    align = int(fields.get("general.alignment", 32))
    data_start = -(-f.tell() // align) * align
    tensors: dict[str, tuple[int, ...]] = {}
    types: dict[str, str] = {}
    for name, dims, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_elems = 1
        for d in dims:
            n_elems *= d
        if data_start + offset + n_elems // block * type_size > size:
            raise ValueError(f"tensor {name} runs past the end of the file (truncated download?)")
        tensors[name] = tuple(int(d) for d in reversed(dims))
        types[name] = qtype.name
    return GGUFInfo(path, fields, tensors, types)


def _require(info: GGUFInfo, key: str) -> object:
    if key not in info.fields:
        raise ModelFileError(f"{info.path.name}: required key {key!r} is missing")
    return info.fields[key]


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
    arch = _require(info, "general.architecture")
    if arch != "llama":
        return _validate_other_llm(info, str(arch))
    n_embd = int(_require(info, "llama.embedding_length"))
    n_layer = int(_require(info, "llama.block_count"))
    n_ff = int(_require(info, "llama.feed_forward_length"))
    n_head = int(_require(info, "llama.attention.head_count"))
    n_head_kv = int(info.fields.get("llama.attention.head_count_kv", n_head))
    head_k = int(info.fields.get("llama.attention.key_length", n_embd // max(n_head, 1)))
    n_vocab = int(_require(info, "tokenizer.ggml.tokens"))
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise ModelFileError(f"{path.name}: head counts {n_head}/{n_head_kv} are inconsistent")
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
    n_embd = int(_require(info, f"{arch}.embedding_length"))
    n_vocab = int(_require(info, "tokenizer.ggml.tokens"))
    _check_tensors(info, {"token_embd.weight": (n_vocab, n_embd)})
    return info


def llm_embedding_width(info: GGUFInfo) -> int:
    arch = info.fields["general.architecture"]
    return int(info.fields[f"{arch}.embedding_length"])


def validate_tower(path: Path, llm_dim: int) -> GGUFInfo:
    """Check an ultravox mmproj GGUF against what mtmd's whisper graph asserts on."""
    path = Path(path)
    info = read_gguf(path)
    if _require(info, "general.architecture") != "clip":
        raise ModelFileError(f"{path.name}: not an mmproj file (architecture {info.fields['general.architecture']!r})")
    if not info.fields.get("clip.has_audio_encoder"):
        raise ModelFileError(f"{path.name}: the mmproj file has no audio encoder")
    proj = info.fields.get("clip.projector_type") or info.fields.get("clip.audio.projector_type")
    if proj != "ultravox":
        raise ModelFileError(f"{path.name}: projector type {proj!r}; llasm runs 'ultravox' towers")
    d = int(_require(info, "clip.audio.embedding_length"))
    n_ff = int(_require(info, "clip.audio.feed_forward_length"))
    n_layer = int(_require(info, "clip.audio.block_count"))
    n_head = int(_require(info, "clip.audio.attention.head_count"))
    n_mels = int(_require(info, "clip.audio.num_mel_bins"))
    out_dim = int(_require(info, "clip.audio.projection_dim"))
    k = int(_require(info, "clip.audio.projector.stack_factor"))
    if k <= 0 or 1500 % k:
        raise ModelFileError(f"{path.name}: stack factor {k} must divide 1500 (mtmd aborts otherwise)")
    if n_head <= 0 or d % n_head:
        raise ModelFileError(f"{path.name}: {n_head} heads do not divide width {d}")
    hidden = info.tensors.get("mm.a.mlp.1.weight", (0, 0))[0]
    expected = {
        "a.position_embd.weight": (1500, d),
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
    for name, ttype in info.types.items():
        if (name.endswith(".bias") or "norm" in name or "ln" in name.split(".")[-2]) and ttype != "F32":
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
