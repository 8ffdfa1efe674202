"""What one turn of a conversation is: its message (with the raw audio kept for /save) and its timings.

Shared by the conversation (conversation.py) and the turn streamed while it is spoken (spoken_turn.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from llasm_cli.errors import ContextOverflowError
from llasm_cli.prompt import Message

if TYPE_CHECKING:
    from llasm_cli.assistant import Assistant


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
    heard: str | None = None  # Whisper's transcript of the turn's audio, where the model hears through one

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Turn:
    """A message with the raw audio kept for /save (embeddings live in ``message.clips``)."""

    message: Message
    audio: np.ndarray | None = None


def fit_prompt(bot: Assistant, turns: list[Turn], system: str, reserve: int, notices: list[str], extra: int = 0) -> list:
    """A conversation's prompt segments, the oldest exchanges dropped from ``turns`` (and said in ``notices``)
    until it fits the context with ``reserve`` positions for the answer and ``extra`` more (audio a streamed
    turn will still add); a single turn that cannot fit is refused."""
    n_ctx = bot.engine.n_ctx

    def render() -> list:
        return bot.prompt(bot.context_messages([t.message for t in turns], system))

    segs = render()
    dropped = 0
    while sum(len(s) for s in segs) + extra + reserve > n_ctx:
        if len(turns) <= 1:
            raise ContextOverflowError(
                f"this turn needs {sum(len(s) for s in segs) + extra} positions (+{reserve} for the answer) "
                f"but the context holds {n_ctx}; use a shorter recording or a larger --ctx"
            )
        # drop the oldest user turn and the answer that followed it
        cut = next((i for i in range(1, len(turns)) if turns[i].message.role == "user"), len(turns) - 1)
        del turns[:cut]
        dropped += cut
        segs = render()
    if dropped:
        notices.append(f"context full: dropped the {dropped} oldest message(s)")
    return segs
