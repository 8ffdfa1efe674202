"""Training data: dialogues with audio -> token ids, labels and frozen audio features.

A sample is a list of (role, content, audio paths) messages; content holds ``<|audio|>`` where
each clip's embeddings go. Tokenization cuts the rendered chat template exactly where the
runtime does (``llasm_cli.prompt``), so what the model learns is what ``llasm`` feeds it. Loss
falls on the assistant answers and their EOS only.

The audio encoder is frozen in both stages, so its output ("features": Whisper encoder
frames, or decoder states for llasm-v1) is computed once per clip and kept in memory or, with
a cache folder, on disk.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import audio_token_count, chunked_positions, split_windows, unpadded_frames
from llasm_cli.audio.mel import log_mel_spectrogram
from llasm_cli.files import atomic_path
from llasm_cli.model import AudioTower
from llasm_cli.prompt import AUDIO, Message, dialogue_pieces, tokenized

log = logging.getLogger("llasm.data")
IGNORE = -100


@dataclass
class Sample:
    """One training dialogue. ``audio`` lists the clip files in placeholder order."""

    id: str
    messages: list[tuple[str, str | list]]  # (role, text), or (role, parts: text and AUDIO) for a turn with speech
    audio: list[str] = field(default_factory=list)


def asr_sample(id: str, audio: str, text: str, instruction: str) -> Sample:
    """Stage 1: the typed instruction + the clip, answered by its transcript."""
    return Sample(id, [("user", [instruction, "\n", AUDIO]), ("assistant", text)], [audio])


@dataclass
class Encoded:
    """Token ids with audio spans cut out: ``ids`` / ``labels`` hold -1 / IGNORE at audio slots."""

    ids: list[int]
    labels: list[int]
    clips: list[tuple[int, str]]  # (position of the first audio slot, audio path)


def encode_sample(
    sample: Sample, tokenizer, template: str, audio_start: int, audio_end: int, counts: dict[str, int],
    system: str | None = None,
) -> Encoded:
    """Token ids and labels of a sample; ``counts`` maps each clip to its number of embeddings."""
    # every text is literal: typed "<|audio|>" or "</s>" in the data stays text, as at run time
    turns = [(r, c if isinstance(c, list) else [c]) for r, c in sample.messages]
    messages = [Message.of(r, parts) for r, parts in ([("system", [system])] if system else []) + turns]
    eos_text = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    pieces = dialogue_pieces(template, messages, eos_text, add_generation_prompt=False)
    tokenize = hf_tokenize(tokenizer)
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE]
    clips: list[tuple[int, str]] = []
    after_answer = False
    for p in tokenized(pieces, tokenize):  # template text and literal content tokenized as the runtime does
        if p.kind == "audio":
            path = sample.audio[p.index]
            ids.append(audio_start)
            clips.append((len(ids), path))
            ids += [-1] * counts[path]
            ids.append(audio_end)
            labels += [IGNORE] * (counts[path] + 2)
        elif p.kind == "eos":
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id if after_answer else IGNORE)
        else:  # tokens, answer: only an answer's ids are learned
            ids += p.ids
            labels += p.ids if p.kind == "answer" else [IGNORE] * len(p.ids)
        after_answer = p.kind == "answer"
    return Encoded(ids, labels, clips)


def hf_tokenize(tokenizer):
    """(text, parse control tokens) -> ids for a Hugging Face tokenizer, like the runtime's llama.cpp one."""

    def tokenize(text: str, special: bool) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=not special).input_ids

    return tokenize


FEATURE_DTYPES = ("float32", "bfloat16")


class FeatureStore:
    """Frozen tower features per clip, computed once (in memory, and on disk with ``cache_dir``).

    ``mode`` is the encoder input the adaptor is trained on: ``padded`` (30 s windows, as llama.cpp's
    mtmd runs them), ``unpadded`` (each window's real audio only) or ``chunked`` (the whole clip chunk
    by chunk behind the model config's left context, exactly what the runtime encodes while the user
    speaks; one feature array per clip)."""

    def __init__(self, tower: AudioTower, mode: str = "padded", cache_dir: str | Path | None = None,
                 dtype: str = "float32") -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, not {dtype!r}")
        self.tower = tower
        self.mode = mode
        self.dtype = dtype
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._bf16: AudioTower | None = None
        self.mem: dict[str, list[np.ndarray]] = {}
        self.lengths: dict[str, int] = {}
        state = sorted((k, tuple(v.shape)) for k, v in tower.encoder.state_dict().items())
        key = (state, mode, tower.cfg.type, tower.cfg.stack_factor) + ((dtype,) if dtype != "float32" else ())
        if mode == "chunked":
            key += (tower.cfg.chunk_seconds, tower.cfg.context_seconds)
        self.tag = hashlib.sha1(repr(key).encode()).hexdigest()[:12]

    def count(self, path: str) -> int:
        """Embeddings the adaptor makes from this clip (all windows)."""
        return sum(self._counts(path))

    def _counts(self, path: str) -> list[int]:
        if path not in self.lengths:
            self.lengths[path] = load_audio(path).size
        n = self.lengths[path]
        if self.mode == "chunked":
            cfg = self.tower.cfg
            return [chunked_positions(n, cfg.chunk_seconds, cfg.context_seconds, cfg.stack_factor)]
        windows = [min(480000, n - i) for i in range(0, n, 480000)]
        if self.tower.cfg.type == "llasm-v1":
            return [self.tower.cfg.n_queries] * len(windows)
        return [audio_token_count(w, self.tower.cfg.stack_factor) for w in windows]

    def get(self, path: str) -> list[np.ndarray]:
        """Features of each window, trimmed to the frames the kept embeddings use."""
        if path in self.mem:
            return self.mem[path]
        cached = self._cache_file(path)
        if cached is not None and cached.is_file():
            with np.load(cached) as z:
                feats = [z[f"w{i}"] for i in range(len(z.files))]
        else:
            feats = self._compute(path)
            if cached is not None:
                with atomic_path(cached) as tmp:  # a unique temporary: workers may cache the same clip at once
                    np.savez(tmp, **{f"w{i}": f for i, f in enumerate(feats)})
        self.mem[path] = feats
        return feats

    def _cache_file(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        st = Path(path).stat()
        key = hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.tag}".encode()).hexdigest()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir / f"{key}.npz"

    @torch.no_grad()
    def _compute(self, path: str) -> list[np.ndarray]:
        samples = load_audio(path)
        self.lengths[path] = samples.size
        dev = next(self.tower.parameters()).device
        cfg, out = self.tower.cfg, []
        if self.mode == "chunked":
            with self._autocast(dev):
                feats = self._encoder().chunked_features(samples).float().cpu().numpy()
            return [feats.astype(np.float16)]
        for window, count in zip(split_windows(samples), self._counts(path)):
            mel = log_mel_spectrogram(window, self.tower.n_mels)
            if self.mode == "unpadded":
                mel = mel[:, : unpadded_frames(window.size, cfg.stack_factor)]
            with self._autocast(dev):
                feats = self._encoder().features(torch.from_numpy(mel)[None].to(dev))[0].float().cpu().numpy()
            keep = feats if cfg.type == "llasm-v1" else feats[: count * cfg.stack_factor]
            out.append(keep.astype(np.float16))
        return out

    def _encoder(self) -> AudioTower:
        """The tower, or under bfloat16 a copy whose matmul weights are bfloat16 already: autocast would
        cast them on every call, which is half the cost of a short unpadded clip. Same numbers either way."""
        if self.dtype == "float32":
            return self.tower
        if self._bf16 is None:
            self._bf16 = copy.deepcopy(self.tower)
            for m in self._bf16.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
                    m.to(torch.bfloat16)
        return self._bf16

    def _autocast(self, dev: torch.device):
        """bfloat16 halves the frozen encoder's cost where the hardware has it (AVX512-BF16, AMX, GPUs);
        the features stay within a few percent of float32, which the adaptor shrugs off."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=torch.bfloat16)


class DialogueDataset(torch.utils.data.Dataset):
    """Encoded samples + their clips' features (one feature store per encoder input mode).

    ``shares`` (one per store, default all 1.0) trains a mode on only that share of the samples,
    picked by clip path so every stage and run agrees: the padded encode costs several times the
    unpadded one, so more voices fit a time budget when only some clips are also seen padded."""

    def __init__(self, samples: list[Sample], tokenizer, template: str, audio_ids: tuple[int, int],
                 stores: list[FeatureStore], system: str | None = None, max_len: int = 2048,
                 shares: list[float] | None = None) -> None:
        self.samples, self.stores = [], stores
        self.encoded: list[Encoded] = []
        for s in samples:
            try:
                counts = {p: stores[0].count(p) for p in s.audio}
                if any(st.count(p) != counts[p] for st in stores[1:] for p in s.audio):  # > 30 s: windows vs chunks
                    raise ValueError("its encoder input modes give its audio different numbers of embeddings")
                enc = encode_sample(s, tokenizer, template, *audio_ids, counts, system=system)
            except Exception as exc:  # a corrupt clip must not end a long run
                log.warning("skipping sample %s: %s", s.id, exc)
                continue
            if len(enc.ids) > max_len:
                log.warning("skipping sample %s: %d tokens > max_len %d", s.id, len(enc.ids), max_len)
                continue
            self.samples.append(s)
            self.encoded.append(enc)
        shares = shares or [1.0] * len(stores)
        if len(shares) != len(stores):
            raise ValueError(f"{len(shares)} shares for {len(stores)} encoder input modes")
        # (store, sample) pairs: each sample once per mode that takes it
        self.items = [(k, i) for k, share in enumerate(shares) for i, s in enumerate(self.samples)
                      if share >= 1 or _bucket(s) < share]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        k, j = self.items[i]
        enc = self.encoded[j]
        feats = [(pos, np.concatenate(self.stores[k].get(path))) for pos, path in enc.clips]
        return {"ids": enc.ids, "labels": enc.labels, "feats": feats}

    def answer_tokens(self, i: int) -> int:
        """Loss-bearing tokens of item i (the loss is normalised by them)."""
        return sum(t != IGNORE for t in self.encoded[self.items[i][1]].labels)

    def clips(self) -> list[tuple[FeatureStore, str]]:
        """Every (store, clip) the items use, each once."""
        need = {(k, p) for k, j in self.items for p in self.samples[j].audio}
        return [(self.stores[k], p) for k, p in sorted(need)]

    def precompute(self, progress=None) -> None:
        """Compute every clip's features up front (the encoder is frozen)."""
        for store, path in self.clips():
            store.get(path)
            if progress:
                progress()


def _bucket(sample: Sample) -> float:
    """A stable number in [0, 1) from the sample's clips (the same clip lands in the same bucket)."""
    key = "|".join(str(p) for p in sample.audio) or sample.id
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest item; audio slots hold pad ids until the model splices them."""
    width = max(len(it["ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    feats = []
    for b, it in enumerate(items):
        n = len(it["ids"])
        ids[b, :n] = torch.tensor([t if t >= 0 else pad_id for t in it["ids"]])
        labels[b, :n] = torch.tensor(it["labels"])
        mask[b, :n] = 1
        feats += [(b, pos, torch.from_numpy(np.asarray(f, dtype=np.float32))) for pos, f in it["feats"]]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "feats": feats}


def split_eval(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A held-out split, the same for every run with the same seed."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(samples) * fraction))
    held = set(order[:n_eval])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]
