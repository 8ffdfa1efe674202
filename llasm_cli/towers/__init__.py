"""Audio towers: 16 kHz PCM in, LLM-space embeddings out (one contract, three backends).

- ``onnx``: ONNX Runtime running the bundle's ``tower.onnx`` (stack-swiglu trained on unpadded or
  chunked audio; float32, no PyTorch: what ``pip install .`` runs fast).
- ``ggml``: llama.cpp's mtmd running the tower stored as an mmproj GGUF (stack-swiglu only).
- ``torch``: the PyTorch module of ``llasm_cli/model.py`` (any adaptor; needs the train extra).

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
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from llasm_cli.audio.decode import check_finite
from llasm_cli.audio.geometry import chunk_spans, positions, split_windows
from llasm_cli.audio.mel import chunk_mel
from llasm_cli.errors import AudioFileError, BackendUnavailableError
from llasm_cli.formats.bundle import MANIFEST_FILE, Bundle

BACKENDS = ("auto", "onnx", "ggml", "torch")
CHOICE_FILE = "tower-backend.json"  # auto's measured choices, in the cache folder of cpu_probe
CHOICE_VERSION = 1
MAX_CHOICES = 64  # cache entries kept
PROBE_SECONDS = 2.0  # audio auto encodes with each candidate (twice; the faster run counts)


class TowerBackend(ABC):
    """Shared windowing and trimming; subclasses encode one padded window."""

    name = "?"  # the backend's --backend name, reported in the turn's stats
    choice = ""  # how auto came to pick it (measured or cached times), empty when named
    n_embd: int
    adaptor: str
    stack_factor: int
    tokens_per_window: int
    trim = True  # keep only the embeddings that cover real audio (the bundle's rule, Bundle.trim)

    chunked = False  # set by a backend that runs the bundle's chunked input mode (see ChunkStream)
    unpadded = False  # set by a backend that encodes only each window's real audio
    n_mels = 80
    chunk_seconds = 1.0
    context_seconds = 2.0

    def __init__(self) -> None:
        self.encode_calls = 0  # windows encoded so far; tests use it to prove KV reuse

    def token_count(self, n_samples: int) -> int:
        """Embeddings kept for one window holding ``n_samples`` (at most 30 s) of real audio."""
        return self.positions(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """All windows of a clip, trimmed to real audio and concatenated: (n_tokens, n_embd)."""
        if self.whole_clip_chunked:
            stream = self.stream()
            head = stream.push(samples)
            return np.ascontiguousarray(np.concatenate([head, stream.finish()]), dtype=np.float32)
        windows = split_windows(check_finite(samples))  # a NaN from a microphone or a request never gets in
        if not windows:
            raise AudioFileError("the audio is empty")
        outs = self.encode_windows(windows)
        self.encode_calls += len(windows)
        kept = [o[: self.token_count(w.size)] for o, w in zip(outs, windows, strict=True)]
        return np.ascontiguousarray(np.concatenate(kept, axis=0), dtype=np.float32)

    @property
    def whole_clip_chunked(self) -> bool:
        """Whether a whole clip is encoded chunk by chunk (a model that knows no unpadded input)."""
        return self.chunked and not self.unpadded

    def stream(self) -> ChunkStream:
        """An encoder fed audio as it arrives (chunked models only)."""
        if not self.chunked:
            raise BackendUnavailableError("this model was not trained on chunked audio; it cannot be encoded while "
                                          "the user speaks")
        return ChunkStream(self)

    def positions(self, n_samples: int) -> int:
        """Embeddings a clip of ``n_samples`` becomes (without boundary rows); chunked or not, the same
        count (``audio.chunked_positions``)."""
        return positions(n_samples, self.stack_factor, self.tokens_per_window, self.trim)

    def embed_mel(self, mel: np.ndarray) -> np.ndarray:
        """Unpadded log-mel (n_mels, T) -> (T / 2k, n_embd): the chunked mode's one encoder call."""
        raise BackendUnavailableError(f"the {type(self).__name__} backend cannot encode chunked audio")

    @abstractmethod
    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Each window (<= 30 s) -> its full (tokens_per_window, n_embd) embeddings."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds native resources
        """Release native resources."""


def candidates(bundle: Bundle) -> list[str]:
    """The backends that can run this bundle's encoder input on this installation, fastest-first guess.

    A chunked model keeps to the backends that encode chunk by chunk (onnx, torch) when one is
    here: ggml pads every window to 30 s, so it could never encode while the user speaks.
    """
    m = bundle.manifest
    found = []
    if m.onnx_tower and m.adaptor == "stack-swiglu" and importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnx")
    if m.torch_tower and _torch_available():
        found.append("torch")
    chunked = m.adaptor == "stack-swiglu" and "chunked" in m.encoder_input
    if m.tower_files and "padded" in m.encoder_input and not (chunked and found):
        found.append("ggml")
    return found


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
    m = bundle.manifest
    if m.onnx_tower:
        return "onnx"
    return "ggml" if m.tower_files and "padded" in m.encoder_input else "torch"


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def open_tower(
    bundle: Bundle, backend: str, engine, variant: str | None = None, n_threads: int | None = None, exact: bool = False,
    one_shot: bool = False,
) -> TowerBackend:
    """Build the tower for ``backend``; ``auto`` measures the candidates (once per bundle and machine).
    ``one_shot``: the process encodes once and exits (``llasm ask``), so opening fast counts more
    than each call's speed (the onnx backend then keeps float16 weights, see its module notes)."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        return _open(bundle, backend, engine, variant, n_threads, exact, one_shot)
    found = _unpadded_first_on_cpu(bundle, candidates(bundle))
    if len(found) <= 1:
        return _open(bundle, found[0] if found else auto_backend(bundle), engine, variant, n_threads, exact, one_shot)
    return _fastest(bundle, found, engine, variant, n_threads, exact, one_shot)


def _open(bundle: Bundle, backend: str, engine, variant: str | None, n_threads: int | None, exact: bool,
          one_shot: bool = False) -> TowerBackend:
    if backend == "onnx":
        from llasm_cli.towers.onnx import OnnxTower

        return OnnxTower(bundle, n_threads, one_shot=one_shot)
    if backend == "ggml":
        from llasm_cli.towers.ggml import GgmlTower

        return GgmlTower(bundle, engine, variant, n_threads)
    from llasm_cli.towers.torch import TorchTower

    return TorchTower(bundle, n_threads, exact=exact)


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
    m = bundle.manifest
    files = [bundle.root / MANIFEST_FILE]
    if "onnx" in found:
        onnx = bundle.root / m.onnx_tower
        files += [onnx, onnx.with_name(onnx.name + ".data")]
    if "torch" in found:
        folder = bundle.root / m.torch_tower
        files += sorted(p for p in folder.rglob("*") if p.is_file())
    if "ggml" in found:
        files += [bundle.tower_path(variant)]
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


class ChunkStream:
    """Chunked encoding of audio that is still arriving: each chunk is encoded once its audio is in.

    ``push`` returns the embeddings of the chunks the new audio completed (maybe none);
    ``finish`` encodes what is left. Concatenated, they equal ``encode`` of the whole clip.
    """

    def __init__(self, tower: TowerBackend) -> None:
        self.tower = tower
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.done = 0  # chunks encoded

    @property
    def samples(self) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.parts.append(np.asarray(check_finite(samples), dtype=np.float32))
        self.n += samples.size
        return self._encode(final=False)

    def finish(self) -> np.ndarray:
        if self.n == 0:
            raise AudioFileError("the audio is empty")
        return self._encode(final=True)

    def peek(self) -> np.ndarray:
        """What ``finish`` would return now, leaving the stream open for more audio."""
        return self._encode(final=True, advance=False)

    def _encode(self, final: bool, advance: bool = True) -> np.ndarray:
        t = self.tower
        spans = chunk_spans(self.n, t.chunk_seconds, t.context_seconds, t.stack_factor, final=final)[self.done:]
        out = [np.zeros((0, t.n_embd), dtype=np.float32)]
        if spans:
            audio = self.samples
            for span in spans:
                emb = t.embed_mel(chunk_mel(audio, span, t.n_mels))
                out.append(emb[span.skip : span.skip + span.keep])
                t.encode_calls += 1
            if advance:
                self.done += len(spans)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
