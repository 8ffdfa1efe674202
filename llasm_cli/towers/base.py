"""The audio-tower contract every backend keeps: 16 kHz PCM in, LLM-space embeddings out.

``TowerBackend`` cuts audio into 30 s windows, has a backend encode each window and keeps only the
embeddings that cover real audio (audio.geometry.positions); ``ChunkStream`` encodes a chunked model's
audio chunk by chunk while it is still arriving, with the same embeddings as the whole clip's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from llasm_cli.audio.decode import check_finite
from llasm_cli.audio.geometry import chunk_spans, positions, split_windows
from llasm_cli.audio.mel import chunk_mel
from llasm_cli.errors import AudioFileError, BackendUnavailableError


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
    transcript: str | None = None  # what the last clip was heard as, for a tower that hears words (transcript.py)
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


class ChunkStream:
    """Chunked encoding of audio that is still arriving: each chunk is encoded once its audio is in.

    ``push`` returns the embeddings of the chunks the new audio completed (maybe none);
    ``finish`` encodes what is left. Concatenated, they equal ``encode`` of the whole clip.
    """

    heard = ""  # the words committed so far, for a stream that hears words (towers/transcript.py)

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

    def prefetch(self) -> None:
        """The speaker has just gone quiet: work for the coming ``peek`` may start (a stream that hears words
        decodes its last words then, towers/transcript.py); chunks are encoded as their audio comes in."""

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
