"""The ggml backend: llama.cpp's mtmd runs the audio mmproj GGUF.

A llasm bundle's tower is projector type ``ultravox``. A published pair (published.py) brings its
family's projector: ``qwen2a`` and ``ultravox`` with a stack factor dividing 1500 run in mtmd as they
are, ``qwen2.5o`` (Qwen2.5-Omni) from an audio-only copy of its vision + audio mmproj; ``voxtral``
and ``ultravox`` with another stack factor (8, Ultravox's own) would abort the process inside mtmd,
so mtmd runs their Whisper encoder alone and the projector runs in numpy (encoder_only.py).
"""

from __future__ import annotations

import ctypes

import gguf
import numpy as np
from llama_cpp import mtmd_cpp

from llasm_cli.audio.mel import MIN_SAMPLES
from llasm_cli.errors import BackendUnavailableError, ModelFileError
from llasm_cli.formats.bundle import Bundle
from llasm_cli.formats.gguf_check import validate_tower
from llasm_cli.formats.published import PublishedPair
from llasm_cli.llm import native
from llasm_cli.towers.base import TowerBackend
from llasm_cli.towers.encoder_only import (
    audio_only_path,
    encoder_only_path,
    load_projector,
    needs_split,
    write_audio_only,
    write_encoder_only,
)


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
        self.pair = bundle if isinstance(bundle, PublishedPair) else None
        path = bundle.tower_path(variant)
        # mtmd aborts the process on a malformed file
        info = self.pair.validate_tower(variant, engine.n_embd) if self.pair else validate_tower(path, engine.n_embd)
        mtmd_cpp.mtmd_log_set(native._log_callback, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = True
        params.print_timings = False
        params.warmup = False
        params.n_threads = n_threads or native.default_threads()
        self.projector = None  # the numpy projector after an encoder-only mtmd model (split mode)
        if self.pair is not None and needs_split(info.fields):
            from llasm_cli.files import cache_dir

            encoder = encoder_only_path(path, cache_dir() / "encoders")
            if not encoder.is_file():
                write_encoder_only(path, encoder)
            self.projector = load_projector(path, info.fields)
            self.ctx = mtmd_cpp.mtmd_init_from_file(str(encoder).encode(), None, params)
        else:
            if self.pair is not None and info.fields.get(gguf.Keys.Clip.HAS_VISION_ENCODER) is True:
                path = self._audio_only(path, engine.n_embd)  # Qwen2.5-Omni: mtmd never sees the vision part
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
        self.trim = bundle.trim  # a published family's own rule (Voxtral keeps every embedding)
        self.width = int(info.fields[gguf.Keys.ClipAudio.EMBEDDING_LENGTH]) if self.projector else self.n_embd

    @staticmethod
    def _audio_only(path, llm_dim: int):
        """The audio-only copy of a vision + audio mmproj in llasm's cache, written the first time and checked."""
        from llasm_cli.files import cache_dir
        from llasm_cli.formats.gguf_check import validate_audio_mmproj

        audio = audio_only_path(path, cache_dir() / "encoders")
        if not audio.is_file():
            write_audio_only(path, audio)
        validate_audio_mmproj(audio, llm_dim)
        return audio

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
            self._tokenize(chunks, bitmap)
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                    continue  # a family's marker text (the prompt adds it itself)
                n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd_cpp.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    raise ModelFileError(f"mtmd failed to encode the audio: {native.last_log()}")
                ptr = mtmd_cpp.mtmd_get_output_embd(self.ctx)
                out = np.ctypeslib.as_array(ptr, shape=(n_tokens * self.width,)).copy().reshape(n_tokens, self.width)
                if self.projector is not None:  # glma's boundary rows around the 1500 Whisper frames
                    return np.ascontiguousarray(self.projector(out[1:-1]), dtype=np.float32)
                return out  # first audio chunk = this window
            raise ModelFileError("mtmd produced no audio chunk for the window")
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)

    def _tokenize(self, chunks, bitmap) -> None:
        if self.projector is not None:  # no LLM vocabulary here: the bitmap alone, no marker text
            part = mtmd_cpp.mtmd_input_part()
            part.text = None
            part.bitmap = bitmap
            parts = (ctypes.POINTER(mtmd_cpp.mtmd_input_part) * 1)(ctypes.pointer(part))
            rc = mtmd_cpp.mtmd_tokenize_from_parts(self.ctx, chunks, parts, 1, False)
        else:
            text = mtmd_cpp.mtmd_input_text()
            text.text = self.marker
            text.text_len = len(self.marker)
            text.add_special = False
            text.parse_special = False
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
        if rc != 0:
            raise ModelFileError(f"mtmd could not preprocess the audio: {native.last_log()}")

    def close(self) -> None:
        if getattr(self, "ctx", None):
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None
