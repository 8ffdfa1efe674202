"""Audio towers: 16 kHz PCM in, LLM-space embeddings out (one contract, base.py; backends registered in REGISTRY).

- ``onnx``: ONNX Runtime running the bundle's ``tower.onnx`` (stack-swiglu trained on unpadded or
  chunked audio; float32, no PyTorch: what ``pip install .`` runs fast).
- ``ggml``: llama.cpp's mtmd running the tower stored as an mmproj GGUF (stack-swiglu only).
- ``torch``: the PyTorch module of ``llasm_cli/model.py`` (any adaptor; needs the train extra).
- ``whisper``: Whisper's own transcript as the LLM's input rows (adaptor ``transcript``; CTranslate2).

``auto`` measures the backends that can run the bundle here and keeps the fastest (see
``open_tower``); the choice is cached per bundle, thread count and device.

Each cuts audio into 30 s windows, encodes each window (ggml pads it to 30 s) and keeps only the
embeddings that cover real audio: ``ceil(n / (320 k))`` per window for stack-swiglu, 64 for
llasm-v1 (audio.geometry.positions).

A model trained on the chunked input (``encoder_input`` lists "chunked") is encoded chunk by
chunk while the user speaks (audio.chunk_spans): ``stream()`` encodes each chunk as soon as its
audio has arrived. ``encode`` of a whole clip computes exactly the same chunks, so both give the
same embeddings, unless the model was also trained on unpadded clips: then a whole clip (a file, a
request) is encoded unpadded, one encoder call per 30 s instead of one per chunk with its context
read again (2-3x less encoder work for the same positions).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llasm_cli.errors import BackendUnavailableError
from llasm_cli.formats.bundle import MANIFEST_FILE, Bundle
from llasm_cli.towers.base import ChunkStream, TowerBackend  # noqa: F401 (the contract, public here)

CHOICE_FILE = "tower-backend.json"  # auto's measured choices, in llasm's cache folder (files.cache_dir)
CHOICE_VERSION = 1
MAX_CHOICES = 64  # cache entries kept
PROBE_SECONDS = 2.0  # audio auto encodes with each candidate (twice; the faster run counts)


@dataclass(frozen=True)
class Backend:
    """One way to run a bundle's audio tower. Adding a backend is one more entry in ``REGISTRY``."""

    name: str
    carried: Callable[[Bundle], bool]  # the bundle holds this backend's tower
    installed: Callable[[], bool]  # its library imports here
    streams: bool  # it encodes chunk by chunk (a chunked model's audio while it is spoken)
    files: Callable[[Bundle, str | None], list[Path]]  # what a measured choice depends on (variant given)
    open: Callable[..., TowerBackend]  # (bundle, llm, variant, n_threads, exact, one_shot) -> the tower


def _open_onnx(bundle: Bundle, llm, variant, n_threads, exact, one_shot) -> TowerBackend:
    from llasm_cli.towers.onnx import OnnxTower

    return OnnxTower(bundle, n_threads, one_shot=one_shot)


def _open_torch(bundle: Bundle, llm, variant, n_threads, exact, one_shot) -> TowerBackend:
    from llasm_cli.towers.torch import TorchTower

    return TorchTower(bundle, n_threads, exact=exact)


def _open_ggml(bundle: Bundle, llm, variant, n_threads, exact, one_shot) -> TowerBackend:
    from llasm_cli.towers.ggml import GgmlTower

    return GgmlTower(bundle, llm, variant, n_threads)


def _open_transcript(bundle: Bundle, llm, variant, n_threads, exact, one_shot) -> TowerBackend:
    from llasm_cli.audio.ears import DECODER_THREADS
    from llasm_cli.towers.transcript import TranscriptTower

    # one clip and exit: one copy of Whisper, on the decoder's thread (a second copy for the encoder takes ~0.3 s
    # to load, more than its encoder saves on a question: 18 ms at 3 s)
    return TranscriptTower(bundle, llm, DECODER_THREADS if one_shot else n_threads)


def _ears_files(bundle: Bundle, variant: str | None) -> list[Path]:
    ears = bundle.manifest.ears or ""
    return [] if ears.startswith("packaged:") else [bundle.root / ears / "model.bin"]


def _onnx_files(bundle: Bundle, variant: str | None) -> list[Path]:
    onnx = bundle.root / bundle.manifest.onnx_tower
    return [onnx, onnx.with_name(onnx.name + ".data")]


def _torch_files(bundle: Bundle, variant: str | None) -> list[Path]:
    return sorted(p for p in (bundle.root / bundle.manifest.torch_tower).rglob("*") if p.is_file())


def _installed(*modules: str) -> Callable[[], bool]:
    return lambda: all(importlib.util.find_spec(m) is not None for m in modules)


REGISTRY: tuple[Backend, ...] = (  # in order of preference when nothing has been measured
    Backend("onnx", lambda b: bool(b.manifest.onnx_tower) and b.manifest.adaptor == "stack-swiglu",
            _installed("onnxruntime"), True, _onnx_files, _open_onnx),
    Backend("torch", lambda b: bool(b.manifest.torch_tower) and b.manifest.adaptor != "transcript", _installed("torch", "transformers"), True,
            _torch_files, _open_torch),
    Backend("ggml", lambda b: bool(b.manifest.tower_files) and "padded" in b.manifest.encoder_input,
            lambda: True, False, lambda b, variant: [b.tower_path(variant)], _open_ggml),
    Backend("whisper", lambda b: b.manifest.adaptor == "transcript", _installed("ctranslate2"), False, _ears_files,
            _open_transcript),
)
BY_NAME = {b.name: b for b in REGISTRY}
BACKENDS = ("auto", *BY_NAME)  # what --backend accepts


def candidates(bundle: Bundle) -> list[str]:
    """The backends that can run this bundle's encoder input on this installation, fastest-first guess.

    A chunked model keeps to the backends that encode chunk by chunk (onnx, torch) when one is
    here: ggml pads every window to 30 s, so it could never encode while the user speaks.
    """
    found = [b for b in REGISTRY if b.carried(bundle) and b.installed()]
    m = bundle.manifest
    if m.adaptor == "stack-swiglu" and "chunked" in m.encoder_input and any(b.streams for b in found):
        found = [b for b in found if b.streams]
    return [b.name for b in found]


def _unpadded_first_on_cpu(bundle: Bundle, found: list[str]) -> list[str]:
    """Without a GPU, ggml is not timed beside a backend that encodes only the real audio.

    mtmd pads every window to 30 s, so on a CPU it does the work of 30 s for a 2 s question
    (default model, 2-core EPYC: ~1300 ms against ~200 ms for the onnx tower); timing it
    made a new user's first ``llasm ask`` wait seconds for three padded encodes. With a GPU
    (where mtmd runs on CUDA or Metal) every candidate is still measured."""
    real_audio = {"unpadded", "chunked"} & set(bundle.manifest.encoder_input)
    if "ggml" in found and len(found) > 1 and real_audio and not _gpu_nodes() and platform.system() != "Darwin":
        return [f for f in found if f != "ggml"]  # (macOS: Metal)
    return found


def auto_backend(bundle: Bundle) -> str:
    """The one backend to try when none of the candidates is installed (its error says what to install)."""
    found = candidates(bundle)
    if found:
        return found[0]
    return next((b.name for b in REGISTRY if b.carried(bundle)), "torch")


def open_tower(
    bundle: Bundle, backend: str, engine, variant: str | None = None, n_threads: int | None = None, exact: bool = False,
    one_shot: bool = False,
) -> TowerBackend:
    """Build the tower for ``backend``; ``auto`` measures the candidates (once per bundle and machine).
    ``one_shot``: the process encodes once and exits (``llasm ask``), so opening fast counts more
    than each call's speed (the onnx backend then keeps float16 weights, see its module notes)."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    hears = bundle.manifest.adaptor == "transcript"
    if backend != "auto" and hears != (backend == "whisper"):
        raise BackendUnavailableError(
            f"this model hears through Whisper's transcript: use --backend whisper (or auto), not {backend}" if hears
            else f"--backend whisper runs models that hear a transcript; this one's adaptor is {bundle.manifest.adaptor}")
    if backend != "auto":
        return _open(bundle, backend, engine, variant, n_threads, exact, one_shot)
    found = _unpadded_first_on_cpu(bundle, candidates(bundle))
    if len(found) <= 1:
        return _open(bundle, found[0] if found else auto_backend(bundle), engine, variant, n_threads, exact, one_shot)
    return _fastest(bundle, found, engine, variant, n_threads, exact, one_shot)


def _open(bundle: Bundle, backend: str, engine, variant: str | None, n_threads: int | None, exact: bool,
          one_shot: bool = False) -> TowerBackend:
    return BY_NAME[backend].open(bundle, engine, variant, n_threads, exact, one_shot)


def _fastest(bundle: Bundle, found: list[str], engine, variant: str | None, n_threads: int | None,
             exact: bool, one_shot: bool = False) -> TowerBackend:
    """The cached choice for this bundle and machine, else each candidate timed on the same audio.

    A candidate that cannot start here (BackendUnavailableError) is left out; a broken model file
    is an error, not a reason to quietly run another backend.
    """
    from llasm_cli.files import cache_dir, read_json, write_json_best_effort
    from llasm_cli.llm.native import default_threads

    threads = n_threads or default_threads()
    key = choice_key(bundle, found, threads, variant, exact)
    path = cache_dir() / CHOICE_FILE
    cached = read_json(path)
    entry = cached.get(key)
    if isinstance(entry, dict) and entry.get("backend") in found:
        tower = _open(bundle, entry["backend"], engine, variant, n_threads, exact, one_shot)
        tower.choice = f"auto, cached: {_show_ms(entry.get('ms'))}"
        return tower
    if sys.stderr.isatty():  # seconds of silence on a first run otherwise (loading PyTorch, say)
        print(f"llasm: timing this model's audio encoders here ({', '.join(found)}); once, the choice is cached",
              file=sys.stderr, flush=True)
    best: TowerBackend | None = None
    times: dict[str, float] = {}
    unavailable: BackendUnavailableError | None = None
    try:
        for name in found:
            try:
                tower = _open(bundle, name, engine, variant, n_threads, exact, one_shot)
            except BackendUnavailableError as exc:
                unavailable = unavailable or exc
                continue
            times[name] = _time_encode(tower)
            if best is None or times[name] < times[best.name]:
                best, tower = tower, best
            if tower is not None:
                tower.close()
    except BaseException:
        if best is not None:
            best.close()
        raise
    if best is None:
        raise unavailable or BackendUnavailableError("no audio-tower backend can run this model here")
    ms = {k: round(v * 1e3, 2) for k, v in times.items()}
    if len(times) > 1:
        cached.pop(key, None)
        cached[key] = {"backend": best.name, "ms": ms, "bundle": str(bundle.root), "threads": threads,
                       "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_best_effort(path, dict(list(cached.items())[-MAX_CHOICES:]))  # the newest; old bundles' entries go
    best.choice = f"auto, measured: {_show_ms(ms)}"
    return best


def _time_encode(tower: TowerBackend) -> float:
    """Seconds for the faster of two encodes of PROBE_SECONDS of quiet noise, after one that warms
    the backend up (first-call set-up is not what a conversation pays on every turn)."""
    from llasm_cli.audio.geometry import SAMPLE_RATE

    audio = np.random.default_rng(0).standard_normal(int(PROBE_SECONDS * SAMPLE_RATE)).astype(np.float32) * 0.01
    tower.encode(audio)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        tower.encode(audio)
        best = min(best, time.perf_counter() - t0)
    tower.encode_calls = 0
    return best


def _show_ms(ms) -> str:
    if not isinstance(ms, dict):
        return "?"
    return ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items() if isinstance(v, (int, float)))


def choice_key(bundle: Bundle, found: list[str], threads: int, variant: str | None, exact: bool) -> str:
    """What auto's choice depends on: the bundle's files (path, size, mtime), the candidates, the
    thread count, the tower variant and precision, and the device (CPU, GPU, ONNX Runtime providers)."""
    files = [bundle.root / MANIFEST_FILE] + [f for name in found for f in BY_NAME[name].files(bundle, variant)]
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([str(f), None, None])
    providers = None
    if "onnx" in found:
        from llasm_cli.onnx_runtime import import_ort

        providers = import_ort().get_available_providers()
    parts = [CHOICE_VERSION, stats, found, threads, variant, exact, providers, _device()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _device() -> list:
    """The hardware and builds a timing depends on, cheaply (without importing torch)."""
    import importlib.metadata

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                cpu = value.strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "torch", "llama_cpp_python"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return [platform.machine(), platform.system(), cpu, os.cpu_count(), versions, _gpu_nodes()]


def _gpu_nodes() -> list[str]:
    """The CUDA, ROCm and DRI device nodes this machine has."""
    return sorted(p for p in ("/dev/nvidiactl", "/dev/kfd", "/dev/dri") if os.path.exists(p))


