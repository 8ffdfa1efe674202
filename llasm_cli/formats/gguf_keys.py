"""GGUF names: the keys llasm reads or writes beyond gguf-py's ``gguf.Keys``, and tensor names.

Every other key is ``gguf.Keys.*`` (an architecture's: ``gguf.Keys.LLM.*.format(arch=...)``) and every
tensor a ``gguf.MODEL_TENSOR`` (``tensor_name``): what the exporter writes with gguf-py's writer, the
checks and the runtime read under the same names. The keys here are mtmd's own
(tools/mtmd/clip-impl.h), which this gguf-py has no constant for.
"""

from __future__ import annotations

import gguf

K = gguf.Keys

# mtmd keys gguf-py has no constant for (tools/mtmd/clip-impl.h)
HAS_GEN_AUDIO_ENCODER = "clip.has_gen_audio_encoder"
AUDIO_HEAD_COUNT_KV = "clip.audio.attention.head_count_kv"
AUDIO_HEAD_DIM = "clip.audio.attention.head_dim"
VISION_PREFIX = "clip.vision."  # every key of an mmproj's vision encoder
READER_PREFIX = "GGUF."  # gguf.GGUFReader's own fields (GGUF.version, GGUF.tensor_count, ...): not keys in the file


def embedding_length(arch: str) -> str:
    """The LLM width key of an architecture: ``llama.embedding_length``."""
    return K.LLM.EMBEDDING_LENGTH.format(arch=arch)


def projector_type(fields: dict) -> str | None:
    """An mmproj's audio projector type: ``clip.audio.projector_type`` (a vision + audio file), else
    ``clip.projector_type``."""
    return fields.get(K.ClipAudio.PROJECTOR_TYPE) or fields.get(K.Clip.PROJECTOR_TYPE)


def tensor_name(kind: gguf.MODEL_TENSOR, bid: int | None = None, part: str = "weight") -> str:
    """A tensor's name in the file: (T.ATTN_Q, 3) -> "blk.3.attn_q.weight"; ``part`` "bias" for its bias."""
    return f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{part}"
