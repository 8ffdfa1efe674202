"""How audio becomes positions: Whisper's sample rate, window and frame sizes, and the count of
embeddings a stretch of audio becomes, in one place.

Every module that sizes a prompt, a window or a chunk asks here: the runtime's towers, the
conversation that reserves positions before the audio is encoded, the published-model readers, the
exporter and the training recipe. The numbers are Whisper's (16 kHz, 30 s windows, 3000 mel frames,
1500 encoder frames, 320 samples per encoder frame); ``positions`` is the one rule for how many
embeddings ``n`` samples give with stack factor ``k``: ``ceil(n / (320 k))`` per 30 s window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only for the annotations: the bundle format imports these numbers too
    import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one encoder window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one window
N_ENCODER_FRAMES = N_FRAMES // 2  # 1500: Whisper's second conv halves the frame rate
SAMPLES_PER_ENCODER_FRAME = HOP_LENGTH * 2  # 320
# A transcript's length bound (audio/transcribe.max_tokens): fast English speech is ~3.5 words, ~4.5 Whisper
# tokens a second; plus a few per window for short clips and punctuation.
TRANSCRIPT_TOKENS_PER_SECOND = 5.0
TRANSCRIPT_EXTRA_TOKENS = 10
LLM_TOKENS_PER_TRANSCRIPT_TOKEN = 2  # an LLM's tokenizer splits a transcript into at most this many per Whisper token


def split_windows(samples: np.ndarray) -> list[np.ndarray]:
    """Cut audio into consecutive 30 s windows; the last one holds the remainder."""
    if samples.size == 0:
        return []
    return [samples[i : i + N_SAMPLES] for i in range(0, samples.size, N_SAMPLES)]


def samples_per_embedding(stack_factor: int) -> int:
    """16 kHz samples behind one embedding of k stacked encoder frames: 320 k."""
    return SAMPLES_PER_ENCODER_FRAME * stack_factor


def audio_token_count(n_samples: int, stack_factor: int, per_window: int | None = None) -> int:
    """Embeddings that cover n_samples of real audio in one window: ceil(n / (320 k)), at most ``per_window``
    (1500 // k; a published projector that pads the last stack makes ceil(1500 / k))."""
    cap = N_ENCODER_FRAMES // stack_factor if per_window is None else per_window
    return min(cap, max(1, math.ceil(n_samples / samples_per_embedding(stack_factor))))


def positions(n_samples: int, stack_factor: int, per_window: int | None = None, trim: bool = True) -> int:
    """Embeddings a clip of ``n_samples`` becomes (boundary rows and markers not counted): each 30 s window's
    ``audio_token_count``, or all ``per_window`` of every window for a model that keeps them (``trim=False``:
    llasm-v1, Voxtral). The chunked input mode gives as many (``chunked_positions``), so a prompt is sized
    with this before anyone knows how the clip will be encoded."""
    full, rest = divmod(n_samples, N_SAMPLES)
    if not trim:
        return per_window * (full + (rest > 0))
    tail = audio_token_count(rest, stack_factor, per_window) if rest else 0
    return full * audio_token_count(N_SAMPLES, stack_factor, per_window) + tail


def unpadded_frames(n_samples: int, stack_factor: int) -> int:
    """Mel frames that cover the real audio of a window, whole stacks only (for unpadded encoding)."""
    return 2 * stack_factor * audio_token_count(n_samples, stack_factor)


@dataclass(frozen=True)
class ChunkSpan:
    """One step of chunked (streaming) encoding, in samples of the whole utterance.

    The encoder sees ``[start, end)``: the chunk ``[begin, end)`` behind up to ``context`` seconds of
    the audio before it. Its first ``skip`` embeddings (the context's) are dropped and ``keep``
    remain. A chunk depends only on audio up to its own end, so a stream encoded as it arrives and
    the whole clip encoded at once give the same embeddings.
    """

    start: int
    begin: int
    end: int
    skip: int
    keep: int
    n_frames: int  # mel frames the encoder reads: whole stacks over the window, zeros fill the last


def chunk_spans(n_samples: int, chunk_seconds: float, context_seconds: float, stack_factor: int,
                final: bool = True) -> list[ChunkSpan]:
    """The chunks that cover ``n_samples``; with ``final=False`` only the chunks already complete."""
    unit = samples_per_embedding(stack_factor)
    chunk, context = round(chunk_seconds * SAMPLE_RATE), round(context_seconds * SAMPLE_RATE)
    if chunk <= 0 or chunk % unit or context < 0 or context % unit or chunk + context > N_SAMPLES:
        raise ValueError(f"chunk ({chunk_seconds} s) and context ({context_seconds} s) must be whole multiples of "
                         f"{unit / SAMPLE_RATE} s, the chunk positive, together at most {CHUNK_SECONDS} s")
    spans = []
    for begin in range(0, n_samples, chunk):
        end = begin + chunk
        if end > n_samples:
            if not final:
                break
            end = n_samples
        start = max(0, begin - context)
        keep = -(-(end - begin) // unit)
        skip = (begin - start) // unit
        spans.append(ChunkSpan(start, begin, end, skip, keep, 2 * stack_factor * (skip + keep)))
    return spans


def chunked_positions(n_samples: int, chunk_seconds: float, context_seconds: float, stack_factor: int) -> int:
    """Embeddings a clip of ``n_samples`` becomes in the chunked input mode (all chunks, the last included):
    always as many as its unpadded windows give (chunks and 30 s windows are whole embeddings), which the
    runtime relies on to size a prompt before it knows how the clip will be encoded."""
    return sum(s.keep for s in chunk_spans(n_samples, chunk_seconds, context_seconds, stack_factor))


def transcript_tokens(n_samples: int) -> int:
    """The most Whisper tokens the transcript of one window of ``n_samples`` may have (the decoder on
    unpadded frames may not stop by itself)."""
    return TRANSCRIPT_EXTRA_TOKENS + math.ceil(TRANSCRIPT_TOKENS_PER_SECOND * n_samples / SAMPLE_RATE)


def transcript_positions(n_samples: int) -> int:
    """The most rows a clip of ``n_samples`` becomes in a transcript tower (towers/transcript.py): every
    window's transcript bound, in the LLM's tokens. Known before the clip is heard; the rows are fewer."""
    full, rest = divmod(n_samples, N_SAMPLES)
    tokens = full * transcript_tokens(N_SAMPLES) + (transcript_tokens(rest) if rest else 0)
    return LLM_TOKENS_PER_TRANSCRIPT_TOKEN * max(1, tokens)
