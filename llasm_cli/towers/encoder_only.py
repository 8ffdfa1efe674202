"""mtmd runs the Whisper encoder alone; the audio projector runs here, in numpy.

Why: for two published families the vendored mtmd counts fewer embeddings than its graph makes,
and ``clip.cpp`` aborts the process ("expected output 187 tokens, got 188"):

- Ultravox with a stack factor that does not divide 1500 (8, what fixie-ai trains): the count aligns
  the 3000 mel frames to k and halves (3000 / 8 / 2 = 187), the graph stacks the 1500 encoder frames
  with zero padding (ceil(1500 / 8) = 188);
- Voxtral: the count and the graph both average frame pairs first (1500 -> 750) and then stack 4:
  187 counted, 188 made. (Hugging Face's Voxtral does not average: it stacks 4 of the 1500 frames,
  375 embeddings per 30 s, and that is what runs here.)

No input length changes this (mtmd always cuts 3000-frame windows), so the mmproj is rewritten once
into an encoder-only file that mtmd runs without a mismatch: projector type ``glma`` with stack factor
1 (count 1500 + 2 = graph 1500 + 2), the Whisper ``post_ln`` moved into glma's pre-norm (the same
LayerNorm), and an identity feed-forward: ``W1 = [I; -I]``, ``W2 = [I, -I]`` with GELU between them,
exact because ``gelu(x) - gelu(-x) = x``. Its output is the 1500 Whisper frames (between glma's two
boundary rows, which are dropped); the family's projector then runs on them with the weights of the
original file.

The encoder-only file is written into llasm's cache (about the size of the mmproj) the first time a
model is used, and reused while the source file is unchanged.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import gguf
import numpy as np

from llasm_cli.audio.geometry import N_ENCODER_FRAMES
from llasm_cli.errors import ModelFileError
from llasm_cli.files import write_gguf
from llasm_cli.formats.gguf_keys import READER_PREFIX, VISION_PREFIX, projector_type, tensor_name

K, T = gguf.Keys, gguf.MODEL_TENSOR
ULTRAVOX, VOXTRAL = gguf.VisionProjectorType.ULTRAVOX, gguf.VisionProjectorType.VOXTRAL
GLMA = gguf.VisionProjectorType.GLMA
RMS_EPS = 1e-6  # mtmd's and Ultravox's RMSNorm epsilon
VOXTRAL_STACK = 4  # Hugging Face Voxtral: intermediate_size // hidden_size
FORMAT_VERSION = 1  # of the encoder-only file; part of its cache key


POST_LN = (tensor_name(T.A_POST_NORM), tensor_name(T.A_POST_NORM, part="bias"))
PROJECTOR_PREFIX = "mm."  # every projector tensor (mm.a.mlp.1.weight, mm.a.norm_pre.weight, ...)


def needs_split(fields: dict) -> bool:
    """Whether mtmd's own graph for this mmproj aborts (see the module's docstring)."""
    proj = projector_type(fields)
    k = fields.get(K.ClipAudio.Projector.STACK_FACTOR, 0)
    return proj == VOXTRAL or (proj == ULTRAVOX and isinstance(k, int) and k > 0 and N_ENCODER_FRAMES % k != 0)


# --- the projectors --------------------------------------------------------------------------


def _rms_norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, and float32 needs no more."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU with erf, as mtmd's gelu_erf and Hugging Face's "gelu"."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def stack_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """(T, d) -> (ceil(T / k), k d): k consecutive frames side by side, zeros after the last one."""
    n = -(-frames.shape[0] // k)
    padded = np.zeros((n * k, frames.shape[1]), dtype=np.float32)
    padded[: frames.shape[0]] = frames
    return padded.reshape(n, k * frames.shape[1])


class Projector:
    """The family's projector on Whisper frames: (1500, d) -> (rows, n_embd)."""

    def __init__(self, proj: str, k: int, weights: dict[str, np.ndarray]) -> None:
        self.proj, self.k, self.w = proj, k, weights

    def __call__(self, frames: np.ndarray) -> np.ndarray:  # (T, d)
        w = self.w
        if self.proj == ULTRAVOX:
            # StackAudioFrames -> RMSNorm -> Linear -> SwiGLU (silu on the second half) -> RMSNorm -> Linear
            x = _rms_norm(stack_frames(frames, self.k), w[tensor_name(T.A_MM_NORM_PRE)])  # (T/k, k d)
            h = x @ w[tensor_name(T.A_MMPROJ, 1)].T  # (T/k, H)
            half = h.shape[1] // 2
            h = h[:, :half] * _silu(h[:, half:])
            return _rms_norm(h, w[tensor_name(T.A_MM_NORM_MID)]) @ w[tensor_name(T.A_MMPROJ, 2)].T
        # Voxtral: 4 frames stacked -> Linear -> GELU -> Linear (no biases)
        x = stack_frames(frames, self.k)  # (T/4, 4 d)
        return _gelu(x @ w[tensor_name(T.A_MMPROJ, 1)].T) @ w[tensor_name(T.A_MMPROJ, 2)].T

    def rows(self, n_frames: int = N_ENCODER_FRAMES) -> int:
        return -(-n_frames // self.k)


def load_projector(path: Path, fields: dict) -> Projector:
    """The projector's weights from an mmproj GGUF, dequantized to float32."""
    proj = projector_type(fields)
    k = VOXTRAL_STACK if proj == VOXTRAL else int(fields[K.ClipAudio.Projector.STACK_FACTOR])
    reader = gguf.GGUFReader(path)
    weights = {}
    for t in reader.tensors:
        if t.name.startswith(PROJECTOR_PREFIX):
            data = gguf.quants.dequantize(t.data, t.tensor_type)
            weights[t.name] = np.ascontiguousarray(data.reshape(tuple(int(d) for d in reversed(t.shape))),
                                                   dtype=np.float32)
    return Projector(proj, k, weights)


# --- the encoder-only mmproj ----------------------------------------------------------------


def encoder_only_path(src: Path, cache: Path) -> Path:
    """Where the encoder-only copy of ``src`` lives in the cache (keyed by the file and its state)."""
    st = src.stat()
    key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{FORMAT_VERSION}"
    return cache / f"encoder-{hashlib.sha256(key.encode()).hexdigest()[:20]}.gguf"


def write_encoder_only(src: Path, out: Path) -> None:
    """Rewrite an audio mmproj as projector type glma with an identity projector (module docstring)."""

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    skip = {K.General.ARCHITECTURE, K.General.ALIGNMENT, K.Clip.PROJECTOR_TYPE, K.ClipAudio.PROJECTOR_TYPE,
            K.ClipAudio.Projector.STACK_FACTOR, K.ClipAudio.PROJECTION_DIM, K.Clip.HAS_VISION_ENCODER}
    for field in reader.fields.values():
        if field.name in skip or field.name.startswith(READER_PREFIX):
            continue
        _copy_field(writer, field)
    writer.add_clip_projector_type(GLMA)
    writer.add_audio_stack_factor(1)
    d = None
    post = {}
    for t in reader.tensors:
        if t.name.startswith(PROJECTOR_PREFIX):
            continue
        if t.name in POST_LN:
            post[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            continue
        if t.name == tensor_name(T.A_ENC_EMBD_POS):
            d = int(t.shape[0])
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # bytes as they are
    if d is None or set(post) != set(POST_LN):
        raise ModelFileError(f"{src.name}: the Whisper encoder's position embeddings or post_ln are missing")
    writer.add_audio_projection_dim(d)
    eye = np.eye(d, dtype=np.float32)
    writer.add_tensor(tensor_name(T.A_MM_NORM_PRE), post[POST_LN[0]])
    writer.add_tensor(tensor_name(T.A_MM_NORM_PRE, part="bias"), post[POST_LN[1]])
    writer.add_tensor(tensor_name(T.A_MMPROJ, 1), np.concatenate([eye, -eye]))  # (2d, d): x -> [x, -x]
    writer.add_tensor(tensor_name(T.A_MMPROJ, 1, "bias"), np.zeros(2 * d, dtype=np.float32))
    writer.add_tensor(tensor_name(T.A_MMPROJ, 2), np.concatenate([eye, -eye], axis=1))  # (d, 2d): gelu(x) - gelu(-x) = x
    writer.add_tensor(tensor_name(T.A_MMPROJ, 2, "bias"), np.zeros(d, dtype=np.float32))
    for boundary in (T.V_TOK_BOI, T.V_TOK_EOI):  # glma's two boundary rows ("v.boi", no suffix); dropped
        writer.add_tensor(gguf.TENSOR_NAMES[boundary], np.zeros(d, dtype=np.float32))
    write_gguf(writer, out)  # mtmd must never see a half-written file


# --- the audio-only mmproj (Qwen2.5-Omni) -----------------------------------------------------

AUDIO_PREFIXES = ("a.", "mm.a.")  # the Whisper encoder (a.blk.*, a.conv1d.*, ...) and the audio projector (mm.a.fc)


def audio_only_path(src: Path, cache: Path) -> Path:
    """Where the audio-only copy of ``src`` lives in the cache (keyed like ``encoder_only_path``)."""
    return cache / encoder_only_path(src, cache).name.replace("encoder-", "audio-", 1)


def write_audio_only(src: Path, out: Path) -> None:
    """Copy a vision + audio mmproj (Qwen2.5-Omni's, projector type ``qwen2.5o``) without its vision part.

    mtmd loads every encoder a file holds; llasm checks and runs the audio one only, so mtmd gets a copy
    holding the audio encoder and projector tensors byte for byte, every key but the vision ones
    (``clip.vision.*``), and ``clip.has_vision_encoder`` false. mtmd's audio context reads the same
    keys and tensors from it as from the original (qwen2.5o's audio part runs as ``qwen2a``)."""

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    skip = {K.General.ARCHITECTURE, K.General.ALIGNMENT, K.Clip.HAS_VISION_ENCODER}
    for field in reader.fields.values():
        if field.name in skip or field.name.startswith((READER_PREFIX, VISION_PREFIX)):
            continue
        _copy_field(writer, field)
    writer.add_bool(K.Clip.HAS_VISION_ENCODER, False)
    for t in reader.tensors:
        if t.name.startswith(AUDIO_PREFIXES):
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # bytes as they are
    write_gguf(writer, out)  # mtmd must never see a half-written file


def _copy_field(writer: gguf.GGUFWriter, field) -> None:
    """One key-value pair as it is in the source file."""
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        etype = field.types[1] if len(field.types) > 1 else gguf.GGUFValueType.INT32
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=etype)
    else:
        writer.add_key_value(field.name, field.contents(), vtype)
