"""The PyTorch reference path: the same prompt through the finetune model, for parity tests."""

from __future__ import annotations

import numpy as np
import torch
from llasm_finetune.checkpoint import load_checkpoint

from llasm_cli.audio.geometry import split_windows
from llasm_cli.audio.mel import log_mel_spectrogram


class TorchReference:
    """Checkpoint loaded in PyTorch (fp32): embeddings, logits and greedy decoding."""

    def __init__(self, ckpt) -> None:
        self.model, self.tokenizer, self.meta = load_checkpoint(ckpt)

    @torch.inference_mode()
    def audio_embeddings(self, samples: np.ndarray, count) -> np.ndarray:
        """Tower output for every window, trimmed by ``count(n_samples)`` like the runtime."""
        windows = split_windows(samples)
        mel = torch.from_numpy(np.stack([log_mel_spectrogram(w, self.model.tower.n_mels) for w in windows]))
        out = self.model.tower(mel).numpy()
        return np.concatenate([o[: count(w.size)] for o, w in zip(out, windows)], axis=0)

    @torch.inference_mode()
    def embeds(self, segments: list) -> torch.Tensor:
        """Input embeddings of segments: token rows from the LLM's table, audio rows as given."""
        table = self.model.llm.get_input_embeddings()
        parts = [
            torch.from_numpy(np.asarray(s, dtype=np.float32)) if isinstance(s, np.ndarray) and s.ndim == 2
            else table(torch.tensor(list(s), dtype=torch.long))
            for s in segments if len(s)
        ]
        return torch.cat(parts, dim=0)

    @torch.inference_mode()
    def last_logits(self, segments: list) -> np.ndarray:
        x = self.embeds(segments)[None]
        return self.model.llm(inputs_embeds=x).logits[0, -1].numpy()

    @torch.inference_mode()
    def greedy(self, segments: list, max_tokens: int, eos: int) -> list[int]:
        out: list[int] = []
        for _ in range(max_tokens):  # full recompute each step: slow, simple, no cache API
            tok = int(self.last_logits([*segments, out]).argmax())
            if tok == eos:
                break
            out.append(tok)
        return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the parity metric of the issue."""
    return float(np.abs(a - b).max() / np.abs(b).max())
