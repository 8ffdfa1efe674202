"""The systems the latency bench times, each returning phase timings in seconds: llasm's turns (whole clip,
streamed, hands-free) and the Whisper -> LLM cascades, loaded per LLM and interleaved.

(Over 400 lines: every system and how each is loaded, side by side, so they stay comparable.)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import assets
from bench.latency_common import log, now
from llasm_cli.audio.geometry import N_ENCODER_FRAMES, SAMPLE_RATE, SAMPLES_PER_ENCODER_FRAME
from llasm_cli.formats.bundle import llm_file as llm_file_name

GPU_LAYERS = 0  # --gpu-layers: LLM layers on the GPU for llasm and the cascades' LLM alike
BACKENDS: tuple[str, ...] = ()  # --backends: the llasm tower backends to time (empty: all the bundle has)


# --------------------------------------------------------------------------------------------
# systems: each returns phase timings in seconds (+ what it produced)


@dataclass
class Timing:
    encode: float
    prefill: float
    first: float
    info: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.encode + self.prefill + self.first


class Llasm:
    """llasm's runtime as `llasm ask` runs it (a one-turn Conversation), on a chosen audio tower."""

    def __init__(self, assistant, tower, sampling, block_s: float = 0.04) -> None:
        self.a, self.tower, self.sampling, self.block = assistant, tower, sampling, max(1, round(block_s * SAMPLE_RATE))

    def __call__(self, audio: np.ndarray) -> Timing:
        conv = self.conversation()
        conv.add_user(audio)
        return self.first_token(conv)

    def conversation(self):
        """A new one-turn conversation. Only the static prefix (system prompt, scaffolding) of the last
        run stays in the cache, like the cascade's: the bench repeats one clip, and a new question
        never shares its audio."""
        from llasm_cli.conversation import Conversation
        from llasm_cli.llm.kv import common_prefix

        conv = Conversation(self.a, tower=self.tower)
        static = self.a.prompt(conv.messages(), add_generation_prompt=False)
        self.a.engine.truncate(common_prefix(self.a.engine.fed, static))
        return conv

    def paced(self, audio: np.ndarray):
        """``audio`` in blocks, each handed over once its last sample has been "spoken" (from
        ``self.started`` on)."""
        self.started = now()
        for i in range(0, audio.size, self.block):
            block = audio[i : i + self.block]
            self.spoken_at = self.started + (i + block.size) / SAMPLE_RATE  # when a microphone would have it
            wait = self.spoken_at - now()
            if wait > 0:
                time.sleep(wait)
            yield block

    def first_token(self, conv, lag: float | None = None) -> Timing:
        """Time the first answer token of ``conv``'s turn; ``lag``: time already spent behind the end
        of speech (a streamed turn), counted as encoding."""
        stream = conv.respond(self.sampling, max_tokens=1)
        next(stream, None)  # the first token: its time is recorded when it is sampled, before it is decoded
        stream.close()
        st = conv.stats
        first = (st.first_token_ms - st.encode_ms - st.prefill_ms) / 1e3
        info = {"audio_tokens": int(conv.turns[0].message.clips[0].shape[0]),
                "prompt_tokens": st.prompt_tokens + self.a.engine.reused, "reused_tokens": self.a.engine.reused}
        if lag is not None:
            info.update(lag_ms=1e3 * lag, early_s=st.early_audio_seconds, early_positions=st.early_positions,
                        whole_at_pause=st.whole_at_pause)
        return Timing((lag or 0.0) + st.encode_ms / 1e3, st.prefill_ms / 1e3, first, info)


class LlasmStreaming(Llasm):
    """llasm's streamed turn: the clip fed in blocks at real-time pace, the latency counted from the
    moment its last sample was delivered (the end of speech) to the first sampled answer token."""

    def __call__(self, audio: np.ndarray) -> Timing:
        conv = self.conversation()
        turn = conv.begin_audio()  # the user starts speaking: the template text before the audio goes in
        for block in self.paced(audio):
            turn.feed(block)
        lag = max(0.0, now() - (self.started + audio.size / SAMPLE_RATE))  # work still queued behind the audio clock
        turn.finish()
        return self.first_token(conv, lag)


class LlasmHandsFree(Llasm):
    """llasm's hands-free turn as ``llasm chat`` takes it: the clip and 1 s of silence played at the
    audio clock's pace through the voice-activity endpointer, streamed into the model while it is
    heard and prefilled at the pause (whole when the chunks say it fits, ``turn_taking.WHOLE_SHARE``); the
    latency counted from the moment the audio that let the endpointer confirm the end (SpeechEnd, the trailing
    silence) was spoken: when a hands-free cascade would get the clip."""

    def __call__(self, audio: np.ndarray) -> Timing:
        from llasm_cli.audio.endpoint import Endpointer
        from llasm_cli.turn_taking import HandsFree

        conv = self.conversation()
        hands_free = HandsFree(conv, Endpointer())  # the chat's own loop: what it feeds, when it speculates
        for block in self.paced(np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)])):
            done = hands_free.push(block)
            if done is not None:  # the endpointer confirmed the end during this block
                turn, _ = done
                # from the moment the block was spoken: work that fell behind the audio clock (a speculation
                # longer than the silence it waited in) is time the user waits too
                lag = now() - self.spoken_at
                if turn.error is not None:
                    raise turn.error
                turn.stream.finish()
                return self.first_token(conv, lag)
        raise RuntimeError("the endpointer heard no end of speech in the clip and 1 s of silence after it")


class CascadeLLM:
    """llama-cpp-python's Llama on the same GGUF, same threads/batch/context, flash attention on
    (llasm's Engine leaves it on auto, which llama.cpp resolves to on for these CPU models)."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp


        self.llm = assets.load_llama(
            model_path=str(path), n_ctx=n_ctx, n_gpu_layers=GPU_LAYERS, n_batch=512, n_ubatch=512, n_threads=threads,
            n_threads_batch=threads, flash_attn=True, seed=0, verbose=False,
        )
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(self.llm.model)))

    def tokens(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=self.add_bos, special=True)


def _common(a: list[int], b, limit: int) -> int:
    n = 0
    while n < limit and n < len(b) and a[n] == b[n]:
        n += 1
    return n


class Cascade:
    """ASR -> transcript in the same chat prompt -> llama.cpp prefill -> first sampled token.

    Like llasm's Engine.sync (and llama-cpp-python's Llama.generate), the KV of the prompt
    prefix that does not change between questions (system prompt, chat scaffolding) is kept; only
    that static part, so a transcript that happens to start like the previous one gains nothing.
    """

    def __init__(self, name: str, transcribe: Callable[[np.ndarray], str], llm: CascadeLLM, prompt_of: Callable[[str], str], sampling) -> None:
        self.name, self.transcribe, self.llm, self.prompt_of, self.s = name, transcribe, llm, prompt_of, sampling
        marked = prompt_of("@@TRANSCRIPT@@")
        self.static = llm.tokens(marked[: marked.index("@@TRANSCRIPT@@")])

    def __call__(self, audio: np.ndarray) -> Timing:
        llm = self.llm.llm
        t0 = now()
        text = self.transcribe(audio)
        t1 = now()
        toks = self.llm.tokens(self.prompt_of(text))
        limit = min(_common(toks, self.static, len(self.static)), len(toks) - 1)
        keep = _common(toks, llm.input_ids[: llm.n_tokens].tolist(), limit)
        llm.n_tokens = keep  # Llama.eval drops the KV from n_tokens on
        llm.eval(toks[keep:])
        t2 = now()
        s = self.s
        tok = llm.sample(temp=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=0.0)
        llm.detokenize([tok])
        t3 = now()
        return Timing(t1 - t0, t2 - t1, t3 - t2, {"transcript": text.strip(), "prompt_tokens": len(toks), "reused_tokens": keep})


def faster_whisper_asr(ct2_dir: Path, threads: int) -> Callable[[np.ndarray], str]:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(ct2_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(
            audio, beam_size=1, vad_filter=False, language="en", without_timestamps=True,
        )
        return "".join(s.text for s in segments)  # the generator does the work

    return run


AUDIO_CTX_MARGIN = 64  # encoder positions (20 ms each) beyond the clip when whisper.cpp's audio_ctx is trimmed


def whisper_cpp_asr(ggml_path: Path, threads: int, trim_ctx: bool = False) -> Callable[[np.ndarray], str]:
    """whisper.cpp greedy; ``trim_ctx``: the encoder runs only the positions that cover the clip
    (``audio_ctx``, whisper.cpp's own lever for short audio) instead of the whole 30 s window."""
    from pywhispercpp.model import Model

    model = Model(
        str(ggml_path), n_threads=threads, language="en", no_timestamps=True, print_progress=False,
        print_realtime=False, print_timestamps=False, redirect_whispercpp_logs_to=None,
    )

    def run(audio: np.ndarray) -> str:
        ctx = min(N_ENCODER_FRAMES, -(-audio.size // SAMPLES_PER_ENCODER_FRAME) + AUDIO_CTX_MARGIN) if trim_ctx else 0  # 0: the whole window
        return " ".join(s.text for s in model.transcribe(audio, audio_ctx=ctx))

    return run


# --------------------------------------------------------------------------------------------
# one LLM: load everything, then interleave


@dataclass
class ModelRun:
    name: str
    bundle: Path
    systems: dict = field(default_factory=dict)
    startup: dict = field(default_factory=dict)
    cold: dict = field(default_factory=dict)
    turns: dict = field(default_factory=lambda: defaultdict(list))  # (utt index, system) -> [Timing]


def open_towers(run: ModelRun, b, a, backends, threads: int):
    """(backend, tower) for each of ``backends`` the bundle has and this installation runs; the
    others are skipped with a note. Opening times go to the run's start-up table."""
    from llasm_cli.errors import LlasmError
    from llasm_cli.towers import open_tower

    for backend in backends:
        if BACKENDS and backend not in BACKENDS:
            continue
        t = now()
        try:
            tower = open_tower(b, backend, a.engine, None, threads)
        except LlasmError as exc:  # not in the bundle, or not installed here
            log(f"no {backend} tower: {exc}")
            continue
        run.startup[f"{backend}_tower_open_s"] = now() - t
        yield backend, tower


def load_systems(name: str, bundle: Path, threads: int, want_whisper_cpp: bool, bf16: bool = True,
                 cascades: bool = True) -> tuple[ModelRun, dict]:
    """Every tower backend the bundle has (a missing one is skipped with a note) and the cascades."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.bundle import Bundle, load_bundle
    from llasm_cli.towers import open_tower

    run = ModelRun(name, bundle)
    b = load_bundle(bundle)
    t = now()
    first = "ggml" if b.manifest.tower_files else ("onnx" if b.manifest.onnx_tower else "torch")
    a = Assistant(b, backend=first, n_threads=threads, n_gpu_layers=GPU_LAYERS)
    run.startup["assistant_init_s"] = now() - t  # validate_llm alone: see the RSS table's "validate_llm only"
    sampling = a.default_sampling()
    towers = [a.tower]
    if not BACKENDS or first in BACKENDS:  # the assistant's own tower; --backends may leave it out
        run.systems[f"llasm {first}"] = Llasm(a, a.tower, sampling)
    others = [k for k in ("ggml", "torch", "onnx") if k != first]  # onnx: the default install's own fast path
    for backend, tower in open_towers(run, b, a, others, threads):
        towers.append(tower)
        run.systems[f"llasm {backend}"] = Llasm(a, tower, sampling)
    bu = b
    if "llasm torch" in run.systems and "unpadded" not in b.manifest.encoder_input:
        # The bench's own bundles have random adaptors for padded audio: the manifest flag is set in
        # memory to time the runtime's unpadded fast path too (the weights are random anyway).
        bu = Bundle(b.root, dataclasses.replace(b.manifest, encoder_input=["padded", "unpadded"]))
        towers.append(open_tower(bu, "torch", a.engine, None, threads))
        run.systems["llasm torch-unpadded"] = Llasm(a, towers[-1], sampling)
    if bf16 and "llasm torch" in run.systems:
        # TorchTower's default is float32; bfloat16 is its constructor's other choice (AVX512-BF16 / AMX CPUs
        # and GPUs run it natively): what the runtime would gain by picking it where the device has it.
        from llasm_cli.towers.torch import TorchTower

        run.systems["llasm torch bf16"] = Llasm(a, TorchTower(b, threads, dtype="bfloat16"), sampling)
        if "llasm torch-unpadded" in run.systems:
            run.systems["llasm torch-unpadded bf16"] = Llasm(a, TorchTower(bu, threads, dtype="bfloat16"), sampling)
    llm, prompt_of = add_cascades(run, a, b.llm_path(), threads, want_whisper_cpp, sampling, trim_ctx=True,
                                  cascades=cascades)
    return run, {"assistant": a, "llm": llm, "prompt_of": prompt_of, "towers": towers}


def add_cascades(run: ModelRun, a, llm_path: Path, threads: int, want_whisper_cpp: bool, sampling,
                 trim_ctx: bool = False, cascades: bool = True) -> tuple[CascadeLLM, Callable[[str], str]]:
    """The cascades on the assistant's GGUF and chat prompt; whisper.cpp also with audio_ctx trimmed.
    ``cascades=False``: only the raw llama-cpp-python LLM (the decode table's reference)."""
    prompt_of = typed_prompt(a)
    t = now()
    llm = CascadeLLM(llm_path, threads, a.engine.n_ctx)
    run.startup["llama_cpp_python_init_s"] = now() - t
    if not cascades:
        return llm, prompt_of
    t = now()
    fw = faster_whisper_asr(assets.whisper_base_ct2(), threads)
    run.startup["faster_whisper_init_s"] = now() - t
    run.systems["cascade faster-whisper"] = Cascade("faster-whisper", fw, llm, prompt_of, sampling)
    if want_whisper_cpp:
        t = now()
        wc = whisper_cpp_asr(assets.whisper_cpp_base(), threads)
        run.startup["whisper_cpp_init_s"] = now() - t
        run.systems["cascade whisper.cpp"] = Cascade("whisper.cpp", wc, llm, prompt_of, sampling)
        if trim_ctx:
            wt = whisper_cpp_asr(assets.whisper_cpp_base(), threads, trim_ctx=True)
            run.systems["cascade whisper.cpp audio_ctx"] = Cascade("whisper.cpp audio_ctx", wt, llm, prompt_of, sampling)
    return llm, prompt_of


# --------------------------------------------------------------------------------------------
# --realtime: a model trained on chunked audio, streamed while the clip plays

CHUNKED = dict(stack_factor=10, chunk_seconds=1.0, context_seconds=2.0)  # the default model's chunking


def chunked_bundle(log=assets._quiet) -> Path:
    """Gemma 3 270M (real, Q4_K_M) + whisper-base with a random adaptor for chunked audio and learned
    boundary rows, written by export's write_tower_and_manifest (mmproj-free: ONNX + torch towers)."""
    target = assets.bench_root() / f"bundle-gemma-270m-chunked-{assets.RECIPE}"
    if target.is_dir():
        return target
    gguf_path = assets.gemma_gguf(log)

    def build(tmp: Path) -> None:
        import torch
        from llasm_export.bundle import write_tower_and_manifest
        from llasm_finetune.init import fresh_tower

        from llasm_cli.model import CheckpointMeta

        llm_file = llm_file_name("q4_k_m")
        try:
            os.link(gguf_path, tmp / llm_file)
        except OSError:
            shutil.copyfile(gguf_path, tmp / llm_file)
        tower = fresh_tower(assets.whisper_base_hf(log), 640, seed=1, encoder_input=["chunked"], boundary="embeddings",
                            **CHUNKED).eval()
        with torch.no_grad():
            tower.adaptor.boundary.normal_(0.0, 0.02)
        meta = CheckpointMeta(adaptor=tower.cfg, audio_start=assets.GEMMA_AUDIO_TOKENS[0],
                              audio_end=assets.GEMMA_AUDIO_TOKENS[1])
        write_tower_and_manifest(tmp, "gemma-270m-chunked", tower, meta, {"q4_k_m": llm_file},
                                 progress=lambda step: log(f"gemma-270m-chunked: {step}"))

    return assets._atomic_dir(target, build)


def load_realtime_systems(bundle: Path, threads: int, want_whisper_cpp: bool, block_s: float,
                          cascades: bool = True) -> tuple[ModelRun, dict]:
    """llasm streaming (each backend that encodes chunks here) and whole-clip on the chunked bundle,
    and the cascades on its GGUF."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.bundle import load_bundle

    b = load_bundle(bundle)
    run = ModelRun(b.manifest.name, bundle)
    t = now()
    hears = b.manifest.adaptor == "transcript"  # the default model: Whisper's words, heard at the pause
    first = "whisper" if hears else "onnx" if b.manifest.onnx_tower else "torch"
    a = Assistant(b, backend=first, n_threads=threads, n_gpu_layers=GPU_LAYERS)
    run.startup["assistant_init_s"] = now() - t
    sampling = a.default_sampling()
    towers = []
    for backend, tower in open_towers(run, b, a, ("whisper",) if hears else ("onnx", "torch"), threads):
        towers.append(tower)
        run.systems[f"llasm stream {backend}"] = LlasmStreaming(a, tower, sampling, block_s)
        run.systems[f"llasm hands-free {backend}"] = LlasmHandsFree(a, tower, sampling, block_s)
        run.systems[f"llasm whole-clip {backend}"] = Llasm(a, tower, sampling)
    llm, prompt_of = add_cascades(run, a, b.llm_path(), threads, want_whisper_cpp, sampling, trim_ctx=True,
                                  cascades=cascades)
    return run, {"assistant": a, "llm": llm, "prompt_of": prompt_of, "towers": towers}


def typed_prompt(a) -> Callable[[str], str]:
    """The very chat prompt llasm builds for a question, as text: the transcript instead of audio."""
    from llasm_cli.prompt import render

    eos = _eos_text(a.engine)

    def prompt_of(text: str) -> str:
        return render(a.template, a.messages(None, text, None, None), bos_token="", eos_token=eos)

    return prompt_of


def _eos_text(engine) -> str:
    """EOS as the runtime spells it in templates (newer Engines have ``eos_text``)."""
    return engine.eos_text if hasattr(engine, "eos_text") else engine.detokenize([engine.eos])


