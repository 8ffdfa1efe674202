"""Audio towers: 16 kHz PCM in, LLM-space embeddings out (one contract, two backends).

- ``ggml``: llama.cpp's mtmd running the tower stored as an mmproj GGUF (stack-swiglu only).
- ``torch``: the PyTorch module from ``finetune`` (any adaptor; needs the train extra).

Both cut audio into 30 s windows, encode each window (Whisper pads it to 30 s) and keep only the
embeddings that cover real audio: ``ceil(n / (320 k))`` per window for stack-swiglu, 64 for
llasm-v1.

A model trained on the chunked input (``encoder_input`` lists "chunked") is encoded chunk by
chunk instead (audio.chunk_spans): ``stream()`` encodes each chunk as soon as its audio has
arrived, and ``encode`` of the whole clip computes exactly the same chunks, so both give the same
embeddings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..audio import audio_token_count, check_finite, chunk_mel, chunk_spans, split_windows
from ..bundle import Bundle
from ..errors import AudioFileError, BackendUnavailableError

BACKENDS = ("auto", "ggml", "torch")


class TowerBackend(ABC):
    """Shared windowing and trimming; subclasses encode one padded window."""

    n_embd: int
    adaptor: str
    stack_factor: int
    tokens_per_window: int

    chunked = False  # set by a backend that runs the bundle's chunked input mode (see ChunkStream)
    n_mels = 80
    chunk_seconds = 1.0
    context_seconds = 2.0

    def __init__(self) -> None:
        self.encode_calls = 0  # windows encoded so far; tests use it to prove KV reuse

    def token_count(self, n_samples: int) -> int:
        """Embeddings kept for one window holding ``n_samples`` of real audio."""
        if self.adaptor == "llasm-v1":
            return self.tokens_per_window
        return audio_token_count(n_samples, self.stack_factor)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """All windows of a clip, trimmed to real audio and concatenated: (n_tokens, n_embd)."""
        if self.chunked:
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

    def stream(self) -> ChunkStream:
        """An encoder fed audio as it arrives (chunked models only)."""
        if not self.chunked:
            raise BackendUnavailableError("this model was not trained on chunked audio; it cannot be encoded while "
                                          "the user speaks")
        return ChunkStream(self)

    def positions(self, n_samples: int) -> int:
        """Embeddings a clip of ``n_samples`` becomes (without boundary rows)."""
        if self.chunked:
            return sum(s.keep for s in chunk_spans(n_samples, self.chunk_seconds, self.context_seconds,
                                                   self.stack_factor))
        return sum(self.token_count(w.size) for w in split_windows(np.zeros(n_samples, dtype=np.uint8)))

    def embed_mel(self, mel: np.ndarray) -> np.ndarray:
        """Unpadded log-mel (n_mels, T) -> (T / 2k, n_embd): the chunked mode's one encoder call."""
        raise BackendUnavailableError(f"the {type(self).__name__} backend cannot encode chunked audio")

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

    def _encode(self, final: bool) -> np.ndarray:
        t = self.tower
        spans = chunk_spans(self.n, t.chunk_seconds, t.context_seconds, t.stack_factor, final=final)[self.done:]
        out = [np.zeros((0, t.n_embd), dtype=np.float32)]
        if spans:
            audio = self.samples
            for span in spans:
                emb = t.embed_mel(chunk_mel(audio, span, t.n_mels))
                out.append(emb[span.skip : span.skip + span.keep])
                t.encode_calls += 1
            self.done += len(spans)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
