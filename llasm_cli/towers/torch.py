"""The torch backend: the PyTorch model of llasm_cli/model.py runs the tower (any adaptor, CUDA/MPS/CPU)."""

from __future__ import annotations

import numpy as np

from llasm_cli.audio.geometry import unpadded_frames
from llasm_cli.audio.mel import log_mel_spectrogram
from llasm_cli.errors import BackendUnavailableError
from llasm_cli.formats.bundle import Bundle
from llasm_cli.formats.gguf_check import check_widths
from llasm_cli.towers.base import TowerBackend


def pick_dtype(torch, device: str, exact: bool) -> str:
    """bfloat16 where the hardware computes it natively (about 2x faster on CPU), else float32."""
    if exact:
        return "float32"
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu":
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return "float32"
        return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    return "float32"


def pick_device(torch) -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class TorchTower(TowerBackend):
    name = "torch"

    def __init__(
        self, bundle: Bundle, n_threads: int | None = None, device: str | None = None, dtype: str | None = None,
        exact: bool = False,
    ) -> None:
        super().__init__()
        try:
            import torch

            from llasm_cli.model import load_tower
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs PyTorch and transformers ({exc.name} is missing): "
                "pip install 'llasm[train]', or use --backend auto (the model's other towers: onnx, ggml)"
            ) from None
        self.torch = torch
        if n_threads:
            torch.set_num_threads(n_threads)
        self.device = device or pick_device(torch)
        self.dtype = getattr(torch, dtype or pick_dtype(torch, self.device, exact))
        self.module = load_tower(bundle.torch_tower_path()).to(self.device, self.dtype)
        m = bundle.manifest
        check_widths(self.module.cfg.llm_dim, m.llm_dim, bundle.torch_tower_path().name)
        self.n_embd = self.module.cfg.llm_dim
        self.adaptor = m.adaptor
        self.stack_factor = m.stack_factor
        self.tokens_per_window = m.tokens_per_window
        self.trim = bundle.trim
        self.n_mels = self.module.n_mels
        # encode only the real audio when the adaptor was trained that way: far less work
        self.unpadded = m.adaptor == "stack-swiglu" and "unpadded" in m.encoder_input
        self.chunked = m.adaptor == "stack-swiglu" and "chunked" in m.encoder_input
        self.chunk_seconds, self.context_seconds = m.chunk_seconds, m.context_seconds

    def embed_mel(self, mel: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self._run(mel[None])[0]

    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        mels = [log_mel_spectrogram(w, self.n_mels) for w in windows]
        with torch.inference_mode():
            if self.unpadded:
                return [self._run(m[None, :, : unpadded_frames(w.size, self.stack_factor)])[0] for m, w in zip(mels, windows)]
            return list(self._run(np.stack(mels)))  # (W, tokens_per_window, n_embd)

    def _run(self, mel: np.ndarray) -> np.ndarray:
        x = self.torch.from_numpy(np.ascontiguousarray(mel)).to(self.device, self.dtype)
        return self.module(x).float().cpu().numpy()
