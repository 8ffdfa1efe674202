"""Whisper's transcript of a clip with ONNX Runtime and numpy alone (no PyTorch, transformers or tokenizers).

The folder is llasm_export.whisper_onnx's: ``encoder.onnx`` (log-mel -> encoder frames, any even frame
count up to 3000), ``cross_kv.onnx`` (frames -> every decoder layer's cross-attention K/V, once per clip),
``decoder.onnx`` (one greedy step over a self-attention KV cache), ``whisper_onnx.json`` (token ids,
suppression lists, the prompt's ids) and ``tokenizer.json`` (the byte-level BPE vocabulary).

One encoder pass can feed both the decoder and an adaptor (the hybrid layout of issue #31): ``encode``,
``cross_kv`` and ``decode`` are separate calls, and ``transcribe`` chains them for a whole clip.

Input modes (``MODES``): ``padded`` is Whisper's own 30 s window (what it was trained on); ``unpadded``
feeds only the frames that hold the audio (the positional embedding sliced, as llasm's unpadded tower
does); ``zeros`` is unpadded with ``TRAILING_ZEROS_S`` of silence appended. On unpadded frames Whisper's
decoder often does not stop (DESIGN.md, 2026-12-07), so every decode is bounded by the audio's duration
(``max_tokens``) and cut where the output starts repeating itself (``repeat_cut``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from llasm_cli.audio.geometry import N_SAMPLES, SAMPLE_RATE, split_windows, transcript_tokens
from llasm_cli.audio.mel import log_mel_spectrogram, unpadded_mel
from llasm_cli.errors import InvalidValueError, ModelFileError
from llasm_cli.onnx_runtime import first_line, import_ort, quiet_session_options

CONFIG_FILE = "whisper_onnx.json"  # the names llasm_export.whisper_onnx writes
GRAPHS = ("encoder.onnx", "cross_kv.onnx", "decoder.onnx")
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
MODES = ("padded", "unpadded", "zeros")
TRAILING_ZEROS_S = 1.0  # the ``zeros`` mode's silence after the audio
REPEAT_NGRAM = 6  # the output stops where its last REPEAT_NGRAM tokens already occurred earlier in it


# --- byte-level BPE: ids -> text ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character its vocabulary writes it as.

    The printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7f-0xa0, 0xad) become
    U+0100 onwards in byte order, so that a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def read_vocabulary(path: Path) -> tuple[list[bytes], set[int]]:
    """Each id's bytes (from ``tokenizer.json``'s BPE vocabulary) and the ids of its added (special) tokens."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = data["model"]["vocab"]
        added = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path} is not a Hugging Face tokenizer.json with a BPE vocabulary: {exc}") from None
    size = max([*vocab.values(), *added.keys()]) + 1
    table, to_byte = [b""] * size, unicode_to_bytes()
    for token, i in vocab.items():
        if i not in added:
            try:
                table[i] = bytes(to_byte[c] for c in token)
            except KeyError as exc:
                raise ModelFileError(f"{path}: token {token!r} holds {exc} outside the byte-level alphabet") from None
    return table, set(added)


def ids_to_text(vocab: list[bytes], ids: list[int]) -> str:
    """Token ids -> text (ids outside ``vocab`` dropped; bytes split between tokens joined before decoding)."""
    raw = b"".join(vocab[i] for i in ids if 0 <= i < len(vocab))
    return raw.decode("utf-8", errors="replace").strip()


# --- features -----------------------------------------------------------------------------------------


def clip_mel(samples: np.ndarray, mode: str, n_mels: int = 80) -> np.ndarray:
    """The encoder's input for one window of at most 30 s: (1, n_mels, T), T even.

    ``padded``: Whisper's 3000 frames. ``unpadded``: the frames that cover the audio, 2 ceil(n / 320)
    (audio.mel.unpadded_mel with stack factor 1: the frames computed without the 30 s of zeros). ``zeros``: unpadded over the audio followed by TRAILING_ZEROS_S of silence.
    """
    if mode not in MODES:
        raise InvalidValueError(f"input mode must be one of {MODES}, not {mode!r}")
    if samples.size > N_SAMPLES:
        raise InvalidValueError(f"a window holds at most {N_SAMPLES} samples, got {samples.size}")
    if mode == "padded":
        return log_mel_spectrogram(samples, n_mels)[None]
    if mode == "zeros":
        samples = np.concatenate([samples, np.zeros(round(TRAILING_ZEROS_S * SAMPLE_RATE), np.float32)])[:N_SAMPLES]
    return unpadded_mel(samples, n_mels, 1)[None]  # one encoder frame per stack: every frame the audio covers


# --- decoding rules -----------------------------------------------------------------------------------


def max_tokens(seconds: float) -> int:
    """The longest transcript a clip of ``seconds`` may have (the decoder on unpadded frames may not stop)."""
    return transcript_tokens(round(seconds * SAMPLE_RATE))


def repeat_cut(ids: list[int], ngram: int = REPEAT_NGRAM) -> int | None:
    """Where to cut a greedy output that has begun to repeat itself, or None while it has not.

    Two rules, checked after each token: the tail is a tandem repeat (the last n tokens equal the n before
    them, for n >= 2; a single token three times) -> keep one copy; or the last ``ngram`` tokens already
    occurred earlier in the output -> drop them (the decoder has started the sentence again).
    """
    size = len(ids)
    if size >= 3 and ids[-1] == ids[-2] == ids[-3]:
        return size - 2
    for n in range(2, size // 2 + 1):
        if ids[-n:] == ids[-2 * n : -n]:
            return size - n
    if size > ngram:
        tail = ids[-ngram:]
        for j in range(size - ngram):
            if ids[j : j + ngram] == tail:
                return size - ngram
    return None


# --- the loaded model -----------------------------------------------------------------------------------


@dataclass
class Transcript:
    text: str
    ids: list[int]  # the generated text tokens (no special tokens)
    stop: str  # "eot" (Whisper ended it), "repeat" (cut at a repeat), "length" (the duration's bound)
    ms: dict[str, float] = field(default_factory=dict)  # mel, encoder, cross_kv, decode


class WhisperOnnx:
    """The three sessions, the vocabulary and the token ids of one exported Whisper folder."""

    def __init__(self, folder: str | Path, n_threads: int = 2) -> None:
        folder = Path(folder)
        ort = import_ort()
        try:
            cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{folder / CONFIG_FILE}: {first_line(exc)} (write it with llasm_export.whisper_onnx)") from None
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"{folder / CONFIG_FILE} has format version {cfg.get('format_version')}, "
                                 f"this llasm reads {FORMAT_VERSION}: export the folder again")
        self.cfg = cfg
        so = quiet_session_options(ort, n_threads)
        sessions = []
        for name in GRAPHS:
            try:
                sessions.append(ort.InferenceSession(str(folder / name), so, providers=["CPUExecutionProvider"]))
            except Exception as exc:  # ONNX Runtime raises its own classes for a missing or broken file
                raise ModelFileError(f"{folder / name}: {first_line(exc)}") from None
        self.encoder, self.cross, self.decoder = sessions
        self.vocab, specials = read_vocabulary(folder / TOKENIZER_FILE)
        self.eot = cfg["eot"]
        vocab_size = cfg["vocab_size"]
        never = np.zeros(vocab_size, bool)
        never[self.eot + 1 :] = True  # special tokens and timestamps: the transcript is text only
        never[[i for i in cfg["suppress"] if 0 <= i < vocab_size]] = True
        never[[i for i in specials if 0 <= i < vocab_size and i != self.eot]] = True
        self.never = never
        self.never_first = never.copy()
        self.never_first[[i for i in cfg["begin_suppress"] if 0 <= i < vocab_size]] = True
        dh = cfg["d_model"] // cfg["decoder_heads"]
        self.empty_cache = np.zeros((cfg["decoder_layers"], cfg["decoder_heads"], 0, dh), np.float32)

    def start_ids(self, prompt: bool) -> list[int]:
        """``[<|startofprev|> prompt] <|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|>``."""
        cfg = self.cfg
        ids = [cfg["sot_prev"], *cfg["prompt_ids"]] if prompt and cfg["prompt_ids"] else []
        ids.append(cfg["sot"])
        if cfg["multilingual"]:
            ids += [cfg["english"], cfg["transcribe"]]
        return ids + [cfg["no_timestamps"]]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(1, n_mels, T) log-mel -> (1, T / 2, d) encoder frames."""
        return self.encoder.run(None, {"mel": np.ascontiguousarray(mel, np.float32)})[0]

    def cross_kv(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, S, d) frames -> each decoder layer's cross-attention keys and values, (L, H, S, dh) each."""
        k, v = self.cross.run(None, {"hidden": hidden})
        return k, v

    def decode(self, cross: tuple[np.ndarray, np.ndarray], limit: int, prompt: bool = False,
               ngram: int = REPEAT_NGRAM) -> tuple[list[int], str]:
        """Greedy text tokens (and why they stopped) over one clip's cross K/V, at most ``limit`` of them."""
        start = self.start_ids(prompt)
        limit = max(0, min(limit, self.cfg["max_target_positions"] - len(start)))
        feed = {"input_ids": np.array([start], np.int64), "past_k": self.empty_cache, "past_v": self.empty_cache,
                "cross_k": cross[0], "cross_v": cross[1]}
        ids: list[int] = []
        while len(ids) < limit:
            logits, feed["past_k"], feed["past_v"] = self.decoder.run(None, feed)
            logits = logits[0]
            logits[self.never_first if not ids else self.never] = -np.inf
            token = int(logits.argmax())
            if token == self.eot:
                return ids, "eot"
            ids.append(token)
            cut = repeat_cut(ids, ngram)
            if cut is not None:
                return ids[:cut], "repeat"
            feed["input_ids"] = np.array([[token]], np.int64)
        return ids, "length"

    def text(self, ids: list[int]) -> str:
        """Token ids -> text (special tokens dropped; bytes split between tokens joined before decoding)."""
        return ids_to_text(self.vocab, ids)

    def transcribe(self, samples: np.ndarray, mode: str = "unpadded", prompt: bool = False) -> Transcript:
        """The transcript of 16 kHz mono float32 ``samples``, one 30 s window after another."""
        texts, ids, stops = [], [], []
        ms = dict.fromkeys(("mel", "encoder", "cross_kv", "decode"), 0.0)
        for window in split_windows(np.asarray(samples, np.float32)):
            t0 = time.perf_counter()
            mel = clip_mel(window, mode, self.cfg["n_mels"])
            t1 = time.perf_counter()
            hidden = self.encode(mel)
            t2 = time.perf_counter()
            cross = self.cross_kv(hidden)
            t3 = time.perf_counter()
            got, stop = self.decode(cross, max_tokens(window.size / SAMPLE_RATE), prompt)
            t4 = time.perf_counter()
            for key, dt in zip(ms, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                ms[key] += 1000 * dt
            texts.append(self.text(got))
            ids += got
            stops.append(stop)
        stop = next((s for s in stops if s != "eot"), "eot")
        return Transcript(" ".join(t for t in texts if t), ids, stop, ms)
