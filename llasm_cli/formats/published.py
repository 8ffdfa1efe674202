"""Published speech LLMs as they are: an LLM GGUF and an audio mmproj GGUF, run like a bundle.

ggml-org and others publish speech models for llama.cpp's mtmd as two files: the LLM (any
quantization) and ``mmproj-*.gguf`` (Whisper encoder + projector). A folder holding them (a
snapshot in the Hugging Face cache, or any folder) opens here as a ``PublishedPair``: a Bundle
whose manifest is synthesised from the GGUF headers, so the Assistant, conversations and every
llasm command run it like one of llasm's own bundles. What the manifest cannot hold comes from the
model's family (the projector type in the mmproj), as mtmd has it:

| family | projector | audio span in the prompt | embeddings per 30 s window |
|---|---|---|---|
| Ultravox | ``ultravox``, stack factor k | the embeddings alone | ``ceil(1500 / k)``, trimmed to the real audio |
| Qwen2-Audio | ``qwen2a`` | ``<|audio_bos|>`` embeddings ``<|audio_eos|>`` | 750, trimmed to the real audio |
| Qwen2.5-Omni | ``qwen2.5o`` (mtmd runs its audio part as ``qwen2a``) | ``<|audio_bos|>`` embeddings ``<|audio_eos|>`` | 750, trimmed to the real audio |
| Voxtral | ``voxtral`` (4 frames stacked) | ``[BEGIN_AUDIO]`` embeddings | 375, every one (Voxtral pads to 30 s) |

The chat template is the LLM GGUF's own (``tokenizer.chat_template``); the family's is used only
when the file has none. Qwen2.5-Omni's LLM (arch ``qwen2vl``) rotates with M-RoPE: the engine gives
its audio rows the positions mtmd gives them (engine.mrope_positions); its mmproj also holds the
vision encoder, which the ggml backend leaves out (towers/encoder_only.write_audio_only). Markers
are template text: tokenized with control tokens parsed, exactly as mtmd adds them.

``--model`` takes a folder or an LLM GGUF path (its mmproj beside it), a name from
``llasm models`` or ``hf:owner/repo``: the latter two resolve to the cached download (``llasm pull``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from llasm_cli.audio.geometry import N_ENCODER_FRAMES
from llasm_cli.errors import BundleError, LlasmError, ModelFileError
from llasm_cli.formats.built_in import built_in_bundle
from llasm_cli.formats.bundle import MANIFEST_FILE, PREFERRED_VARIANTS, Bundle, Manifest, load_bundle
from llasm_cli.formats.gguf_check import MMPROJ_ARCH, GGUFInfo, read_gguf, validate_audio_mmproj
from llasm_cli.formats.gguf_keys import embedding_length, projector_type

K = gguf.Keys
P = gguf.VisionProjectorType
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Family:
    """What mtmd knows about a family of published speech models (tools/mtmd/mtmd.cpp, clip.cpp)."""

    name: str
    projectors: tuple[str, ...]  # clip.projector_type values
    audio_start: str  # template text before the embeddings ("" for none)
    audio_end: str  # ... and after them
    trim: bool  # keep only the embeddings that cover real audio (else every one of each 30 s window)
    system_prompt: str
    template: str  # used only when the LLM GGUF carries no chat template

    def frames_per_embedding(self, fields: dict) -> int:
        """Whisper encoder frames behind one embedding."""
        proj = projector_type(fields)
        if proj in (P.QWEN2A, P.QWEN25O):
            return 2  # average pooling of frame pairs
        if proj == P.VOXTRAL:
            return 4  # four frames stacked (Hugging Face's Voxtral: 375 per 30 s)
        return int(fields[K.ClipAudio.Projector.STACK_FACTOR])


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# The system prompt of Qwen's own Qwen2.5-Omni demos and model card (the model was tuned with it)
OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")
FAMILIES = (
    Family("ultravox", (P.ULTRAVOX,), "", "", trim=True, system_prompt="", template=LLAMA3),
    Family("qwen2-audio", (P.QWEN2A,), "<|audio_bos|>", "<|audio_eos|>", trim=True,
           system_prompt="You are a helpful assistant.", template=CHATML),
    Family("qwen2.5-omni", (P.QWEN25O,), "<|audio_bos|>", "<|audio_eos|>", trim=True,
           system_prompt=OMNI_SYSTEM, template=CHATML),
    Family("voxtral", (P.VOXTRAL,), "[BEGIN_AUDIO]", "", trim=False, system_prompt="", template=MISTRAL),
)
PUBLISHED = "published"  # the variant name of a file whose quantization the header does not say


def family_of(fields: dict, where: str) -> Family:
    proj = projector_type(fields)
    for fam in FAMILIES:
        if proj in fam.projectors:
            return fam
    raise ModelFileError(f"{where}: audio projector {proj!r} is not one llasm runs "
                         f"({', '.join(p for f in FAMILIES for p in f.projectors)})")


class PublishedPair(Bundle):
    """An LLM GGUF and an audio mmproj GGUF as published, opened like a bundle."""

    def __init__(self, root: Path, llm_files: dict[str, Path], tower_files: dict[str, Path]) -> None:
        self.root = Path(root)  # set again by Bundle.__init__ below; the file pickers name it in errors
        self.llm_paths, self.tower_paths = llm_files, tower_files
        llm = read_gguf(self.llm_path())
        mmproj = read_gguf(self.tower_path())
        self.family = family_of(mmproj.fields, mmproj.path.name)
        self.mmproj_fields = mmproj.fields
        arch = llm.fields.get(K.General.ARCHITECTURE)
        if not isinstance(arch, str) or arch == MMPROJ_ARCH:
            raise ModelFileError(f"{llm.path.name} is not an LLM GGUF")
        n_embd = llm.fields.get(embedding_length(arch))
        if not isinstance(n_embd, int) or n_embd < 1:
            raise ModelFileError(f"{llm.path.name}: key {embedding_length(arch)!r} is missing")
        self.frames = self.family.frames_per_embedding(mmproj.fields)
        if not 1 <= self.frames <= N_ENCODER_FRAMES:
            raise ModelFileError(f"{mmproj.path.name}: stack factor {self.frames} is out of range")
        name = llm.fields.get(K.General.NAME) if isinstance(llm.fields.get(K.General.NAME), str) else llm.path.stem
        manifest = Manifest(
            name=name, adaptor="stack-swiglu", llm_dim=n_embd, n_mels=int(mmproj.fields.get(K.ClipAudio.NUM_MEL_BINS, 128)),
            tokens_per_window=self.rows_per_window, stack_factor=self.frames,
            audio_start=self.family.audio_start, audio_end=self.family.audio_end,
            system_prompt=self.family.system_prompt,
            llm_files={v: p.name for v, p in llm_files.items()}, tower_files={v: p.name for v, p in tower_files.items()},
            torch_tower=None, encoder_input=["padded"],
        )
        super().__init__(Path(root), manifest)

    # --- files ------------------------------------------------------------------------------

    def llm_path(self, variant: str | None = None) -> Path:
        return _pick(self.llm_paths, variant, "LLM", self.root)

    def tower_path(self, variant: str | None = None) -> Path:
        return _pick(self.tower_paths, variant, "mmproj", self.root)

    def variants(self) -> list[str]:
        return list(self.llm_paths)

    def boundary_rows(self):
        return None

    def torch_tower_path(self) -> Path:
        raise BundleError(f"{self.root} is a published GGUF pair: it runs on the ggml backend only")

    def onnx_tower_path(self) -> Path:
        raise BundleError(f"{self.root} is a published GGUF pair: it runs on the ggml backend only")

    def validate_tower(self, variant: str | None, llm_dim: int) -> GGUFInfo:
        return validate_audio_mmproj(self.tower_path(variant), llm_dim)

    # --- the audio span -----------------------------------------------------------------------

    @property
    def rows_per_window(self) -> int:
        """Embeddings the projector makes from one 30 s window."""
        return -(-N_ENCODER_FRAMES // self.frames)

    @property
    def trim(self) -> bool:
        """The family's rule: Voxtral keeps every embedding of a window, the others only those of real audio."""
        return self.family.trim

    def embeddings_per_window(self, n_samples: int) -> int:
        """Embeddings kept for a window holding ``n_samples`` (at most 30 s) of real audio."""
        return self.audio_positions(n_samples)

    def marker_ids(self, engine) -> tuple[list[int], list[int]]:
        """The family's text before and after the embeddings, as the LLM tokenizes it (control tokens parsed)."""
        return (engine.tokenize(self.family.audio_start, True) if self.family.audio_start else [],
                engine.tokenize(self.family.audio_end, True) if self.family.audio_end else [])


def _pick(files: dict[str, Path], variant: str | None, what: str, root: Path) -> Path:
    if variant is None:
        variant = next((v for v in PREFERRED_VARIANTS if v in files), next(iter(files)))
    if variant not in files:
        raise BundleError(f"{root} has no {what} variant {variant!r}; it has {sorted(files)}")
    path = files[variant]
    if not path.is_file():
        raise BundleError(f"{root} is incomplete: {path.name} is missing")
    return path


def variant_name(info: GGUFInfo) -> str:
    """``q4_k_m``, ``f16``, ... from the header's general.file_type (the published file's own label)."""
    ftype = info.fields.get(K.General.FILE_TYPE)
    try:
        label = gguf.LlamaFileType(ftype).name
    except ValueError:
        return PUBLISHED
    return label.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def find_pair(folder: Path) -> PublishedPair | None:
    """The LLM and mmproj GGUFs in ``folder`` (one of each per quantization), or None if it holds none."""
    llms: dict[str, Path] = {}
    towers: dict[str, Path] = {}
    ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    if not ggufs:
        return None
    for path in ggufs:
        info = read_gguf(path)
        kind = towers if info.fields.get(K.General.ARCHITECTURE) == MMPROJ_ARCH else llms
        variant = variant_name(info)
        if variant in kind:
            raise BundleError(f"{folder} holds two {variant} files of one kind ({kind[variant].name}, {path.name}): "
                              "move one away or give the LLM GGUF's path")
        kind[variant] = path
    if not llms or not towers:
        missing = "audio mmproj (mmproj-*.gguf)" if llms else "LLM GGUF"
        raise BundleError(f"{folder} holds GGUF files but no {missing}; a published speech model needs both")
    return PublishedPair(folder, llms, towers)


def open_pair(llm: str | Path, mmproj: str | Path) -> PublishedPair:
    """Two paths: an LLM GGUF and its audio mmproj, wherever they are."""
    llm, mmproj = Path(llm), Path(mmproj)
    for p in (llm, mmproj):
        if not p.is_file():
            raise BundleError(f"not found: {p}")
    return PublishedPair(llm.parent, {variant_name(read_gguf(llm)): llm}, {variant_name(read_gguf(mmproj)): mmproj})


def open_model(path: str | Path) -> Bundle:
    """A llasm bundle, a folder holding a published pair, or an LLM GGUF with its mmproj beside it."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        info = read_gguf(path)
        if info.fields.get(K.General.ARCHITECTURE) == MMPROJ_ARCH:
            raise BundleError(f"{path} is an audio mmproj; give the LLM GGUF (or the folder holding both)")
        towers = [p for p in sorted(path.parent.glob("*.gguf"))
                  if p != path and read_gguf(p).fields.get(K.General.ARCHITECTURE) == MMPROJ_ARCH]
        if len(towers) != 1:
            raise BundleError(f"{path.parent} must hold exactly one audio mmproj beside {path.name} "
                              f"(found {len(towers)})")
        return open_pair(path, towers[0])
    if path.is_dir() and not (path / MANIFEST_FILE).exists():
        pair = find_pair(path)
        if pair is not None:
            return pair
    return load_bundle(path)


def resolve_model(spec: str) -> Path:
    """What ``--model`` names: a path, ``hf:owner/repo``, or a name from ``llasm models``, the last two
    as their snapshot in the Hugging Face cache (``llasm pull`` puts them there)."""
    from llasm_cli.hub.pull import REPO_ID, cached_snapshot, resolve

    is_repo = spec.startswith(HF_PREFIX)
    name = spec[len(HF_PREFIX):] if is_repo else spec
    if not is_repo and Path(spec).exists():
        return Path(spec)
    built_in = None if is_repo else built_in_bundle(spec)
    if built_in is not None:
        return built_in
    from llasm_cli.hub.registry import known

    if not is_repo and known(name) is None:
        return Path(spec)  # a path that does not exist: the loader says so
    if is_repo and not REPO_ID.match(name):
        raise LlasmError(f"{spec!r} is not a Hugging Face repository: write hf:owner/name")
    target = resolve(name)
    found = cached_snapshot(target)
    if found is None:
        raise LlasmError(f"{target.repo} is not downloaded: run `llasm pull {name}` first")
    return found
