"""Speech LLMs people already have: short names for their Hugging Face repositories.

Each entry says which files ``llasm pull`` fetches and what llasm can do with them today. The GGUF
pairs (an LLM and an audio mmproj, for llama.cpp's mtmd) of Ultravox, Voxtral and Qwen2.5-Omni run as
they are (``llasm ask -m ultravox-1b``; published.py); the others are fetched into the standard Hugging
Face cache for runtime support that comes later.

``files`` is a list of choices: each choice is a tuple of glob patterns in order of preference,
and the first pattern that matches any file of the repository is fetched (all of its matches).

The original LLaSM (LinkSoul/LLaSM-Cllama2, PyTorch weights) runs once ``llasm export`` has converted it
and its Whisper (whisper-large-v2, fetched beside it) into a bundle (export/llasm_v1.py).
"""

from __future__ import annotations

from dataclasses import dataclass

RUNS = "runs"
DOWNLOAD_ONLY = "download only: support is coming"
CONVERTS = "runs after conversion: llasm export FOLDER BUNDLE (Whisper encoder-decoder tower on the torch backend)"
COMPANION = "companion download: llasm export reads it when converting llasm-cllama2"


@dataclass(frozen=True)
class KnownModel:
    name: str  # what `llasm pull NAME` takes
    repo: str  # Hugging Face repository, owner/name
    files: tuple[tuple[str, ...], ...]  # choices of glob patterns, see the module's docstring
    description: str  # one line
    size: str  # approximate download, as people read it ("2.2 GB")
    status: str  # RUNS, or why it does not run yet


MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="ultravox-1b",
        repo="ggml-org/ultravox-v0_5-llama-3_2-1b-GGUF",
        files=(("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*f16.gguf", "mmproj-*.gguf")),
        description="Ultravox 0.5 on Llama 3.2 1B (Whisper encoder + projector), laptop size; GGUF for llama.cpp's mtmd",
        size="2.2 GB",
        status=RUNS,
    ),
    KnownModel(
        name="ultravox-8b",
        repo="ggml-org/ultravox-v0_5-llama-3_1-8b-GGUF",
        files=(("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*f16.gguf", "mmproj-*.gguf")),
        description="Ultravox 0.5 on Llama 3.1 8B: better answers, needs about 8 GB of memory; GGUF for llama.cpp's mtmd",
        size="6.3 GB",
        status=RUNS,
    ),
    KnownModel(
        name="voxtral-3b",
        repo="ggml-org/Voxtral-Mini-3B-2507-GGUF",
        files=(("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*Q8_0.gguf", "mmproj-*f16.gguf", "mmproj-*.gguf")),
        description="Mistral's Voxtral Mini 3B: speech understanding and transcription; GGUF for llama.cpp's mtmd",
        size="3.2 GB",
        status=RUNS,
    ),
    KnownModel(
        name="qwen2.5-omni-3b",
        repo="ggml-org/Qwen2.5-Omni-3B-GGUF",
        files=(("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*Q8_0.gguf", "mmproj-*f16.gguf", "mmproj-*.gguf")),
        description="Qwen2.5-Omni 3B, its audio path (M-RoPE LLM; the vision encoder in its mmproj is left out); text answers only",
        size="3.6 GB",
        status=RUNS,
    ),
    KnownModel(
        name="llasm-cllama2",
        repo="LinkSoul/LLaSM-Cllama2",
        files=(("*",),),
        description="The original LLaSM (Chinese-Llama-2-7B + adaptor), PyTorch weights; needs whisper-large-v2",
        size="14 GB",
        status=CONVERTS,
    ),
    KnownModel(
        name="whisper-large-v2",
        repo="openai/whisper-large-v2",
        files=(("*.json",), ("*.txt",), ("model.safetensors", "pytorch_model.bin")),
        description="Whisper large-v2, the speech encoder llasm-cllama2 was trained with (companion download)",
        size="6.2 GB",
        status=COMPANION,
    ),
)

_BY_NAME = {m.name: m for m in MODELS}


def known(name: str) -> KnownModel | None:
    """The registered model called ``name`` (case-insensitive), else None."""
    return _BY_NAME.get(name.lower())


def by_repo(repo: str) -> KnownModel | None:
    """The registered model whose repository is ``repo`` (case-insensitive), else None."""
    return next((m for m in MODELS if m.repo.lower() == repo.lower()), None)
