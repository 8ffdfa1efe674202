"""The ggml backend: llama.cpp's mtmd runs the mmproj GGUF (projector type ``ultravox``)."""

from __future__ import annotations

import ctypes

import numpy as np
from llama_cpp import mtmd_cpp

from .. import native
from ..audio import MIN_SAMPLES
from ..bundle import Bundle
from ..errors import BackendUnavailableError, ModelFileError
from ..gguf_check import validate_tower
from . import TowerBackend


class GgmlTower(TowerBackend):
    name = "ggml"

    def __init__(self, bundle: Bundle, engine, variant: str | None = None, n_threads: int | None = None) -> None:
        super().__init__()
        native.init()
        m = bundle.manifest
        if "padded" not in m.encoder_input:
            raise BackendUnavailableError(
                "this model's adaptor was trained on unpadded audio only, which llama.cpp's mtmd cannot feed "
                "(it always pads to 30 s): use --backend onnx or torch"
            )
        path = bundle.tower_path(variant)
        validate_tower(path, engine.n_embd)  # mtmd aborts the process on a malformed file
        mtmd_cpp.mtmd_log_set(native._log_callback, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = True
        params.print_timings = False
        params.warmup = False
        params.n_threads = n_threads or native.default_threads()
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), engine.model, params)
        if not self.ctx:
            raise ModelFileError(f"mtmd could not load the audio tower {path}: {native.last_log()}")
        if not mtmd_cpp.mtmd_support_audio(self.ctx):
            raise ModelFileError(f"{path.name} holds no audio encoder")
        self.marker = mtmd_cpp.mtmd_default_marker()
        self.n_embd = engine.n_embd
        self.adaptor = m.adaptor
        self.stack_factor = m.stack_factor
        self.tokens_per_window = m.tokens_per_window

    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        return [self._encode_one(w) for w in windows]

    def _encode_one(self, window: np.ndarray) -> np.ndarray:
        """One window through mtmd: bitmap -> audio chunk -> encode -> output embeddings."""
        samples = np.ascontiguousarray(window, dtype=np.float32)
        if samples.size < MIN_SAMPLES:  # mtmd asserts on a 1-sample window (e.g. 30 s + 1 sample of audio)
            samples = np.pad(samples, (0, MIN_SAMPLES - samples.size))
        bitmap = mtmd_cpp.mtmd_bitmap_init_from_audio(
            samples.size, samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            text = mtmd_cpp.mtmd_input_text()
            text.text = self.marker
            text.text_len = len(self.marker)
            text.add_special = False
            text.parse_special = False
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise ModelFileError(f"mtmd could not preprocess the audio: {native.last_log()}")
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                    continue
                n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd_cpp.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    raise ModelFileError(f"mtmd failed to encode the audio: {native.last_log()}")
                ptr = mtmd_cpp.mtmd_get_output_embd(self.ctx)
                out = np.ctypeslib.as_array(ptr, shape=(n_tokens * self.n_embd,)).copy()
                return out.reshape(n_tokens, self.n_embd)  # first audio chunk = this window
            raise ModelFileError("mtmd produced no audio chunk for the window")
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None
