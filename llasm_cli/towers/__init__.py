"""Audio towers: 16 kHz PCM in, LLM-space embeddings out (one contract, two backends).

- ``ggml``: llama.cpp's mtmd running the tower stored as an mmproj GGUF (stack-swiglu only).
- ``torch``: the PyTorch module from ``finetune`` (any adaptor; needs the train extra).

Both cut audio into 30 s windows, encode each window (Whisper pads it to 30 s) and keep only the
embeddings that cover real audio: ``ceil(n / (320 k))`` per window for stack-swiglu, 64 for
llasm-v1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..audio import audio_token_count, check_finite, split_windows
from ..bundle import Bundle
from ..errors import AudioFileError, BackendUnavailableError

BACKENDS = ("auto", "ggml", "torch")


class TowerBackend(ABC):
    """Shared windowing and trimming; subclasses encode one padded window."""

    n_embd: int
    adaptor: str
    stack_factor: int
    tokens_per_window: int

    def __init__(self) -> None:
        self.encode_calls = 0  # windows encoded so far; tests use it to prove KV reuse

    def token_count(self, n_samples: int) -> int:
        """Embeddings kept for one window holding ``n_samples`` of real audio."""
        if self.adaptor == "llasm-v1":
            return self.tokens_per_window
        return audio_token_count(n_samples, self.stack_factor)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """All windows of a clip, trimmed to real audio and concatenated: (n_tokens, n_embd)."""
        windows = split_windows(check_finite(samples))  # a NaN from a microphone or a request never gets in
        if not windows:
            raise AudioFileError("the audio is empty")
        outs = self.encode_windows(windows)
        self.encode_calls += len(windows)
        kept = [o[: self.token_count(w.size)] for o, w in zip(outs, windows, strict=True)]
        return np.ascontiguousarray(np.concatenate(kept, axis=0), dtype=np.float32)

    @abstractmethod
    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Each window (<= 30 s) -> its full (tokens_per_window, n_embd) embeddings."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds native resources
        """Release native resources."""


def auto_backend(bundle: Bundle) -> str:
    """ggml where the bundle has an mmproj tower, unless the faster unpadded torch path is there."""
    m = bundle.manifest
    if "unpadded" in m.encoder_input and _torch_available():
        return "torch"
    return "ggml" if m.tower_files else "torch"


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def open_tower(
    bundle: Bundle, backend: str, engine, variant: str | None = None, n_threads: int | None = None, exact: bool = False
) -> TowerBackend:
    """Build the tower for ``backend`` (``auto`` picks ggml where the bundle has it)."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        backend = auto_backend(bundle)
    if backend == "ggml":
        from .ggml import GgmlTower

        return GgmlTower(bundle, engine, variant, n_threads)
    from .torch import TorchTower

    return TorchTower(bundle, n_threads, exact=exact)
