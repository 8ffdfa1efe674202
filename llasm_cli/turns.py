"""What one turn of a conversation is: its message (with the raw audio kept for /save) and its timings.

Shared by the conversation (conversation.py) and the turn streamed while it is spoken (spoken_turn.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llasm_cli.prompt import Message


@dataclass
class TurnStats:
    """Timings of one answer, in milliseconds unless named otherwise."""

    audio_seconds: float = 0.0
    backend: str | None = None  # the audio tower backend that encoded this turn's audio (onnx, torch, ggml)
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # end of input -> first answer token (encode + prefill + 1st sample)
    prompt_tokens: int = 0  # positions prefilled for this turn (what the cache already held is not counted)
    answer_tokens: int = 0
    decode_tokens_per_s: float | None = None  # None: no token was decoded after the first (nothing to time)
    decode_ms_per_token: float | None = None  # the same rate as time per token: decode + sampling
    # a streamed turn (begin_audio): work done while the user still spoke; the fields above are then
    # what remained after the end of speech, and first_token_ms is counted from the end of speech
    streamed: bool = False
    early_audio_seconds: float = 0.0  # audio whose embeddings were in the cache before the end of speech
    early_positions: int = 0  # positions prefilled before the end of speech (template text + audio)
    early_ms: float = 0.0  # encode + prefill time spent while the user spoke
    whole_at_pause: bool = False  # a streamed turn encoded whole, unpadded, at the pause before its end

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Turn:
    """A message with the raw audio kept for /save (embeddings live in ``message.clips``)."""

    message: Message
    audio: np.ndarray | None = None
