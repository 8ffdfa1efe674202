"""Latency against the Whisper -> LLM cascade, measured side by side in one run.

(Every system timed in one script, so they share audio, threads and models; over 400 lines for that.)

    python bench/latency.py [--quick] [--json] [--reps N] [--threads N] [--models gemma-270m,llama-1b]
    python bench/latency.py --realtime [--block-ms 40] [--reps 3] [--json]
    python bench/latency.py --rss-only [--bundle PATH] [--json]

For espeak-ng questions of about 2, 5, 10 and 25 s of speech it measures, per LLM:

- end of speech -> first answer token, split into encode (ASR for a cascade), prefill and first
  token, for llasm (ggml tower, torch tower, and the torch tower's unpadded fast path) and for two
  cascades that transcribe the same audio with the same Whisper base weights and then prefill the
  transcript in the same chat prompt on the same GGUF: faster-whisper (CTranslate2 int8) and
  whisper.cpp (pywhispercpp, weights converted by export/whisper_cpp.py);
- decode tokens/s of llasm's Engine.generate against llama.cpp's own loop and llama-cpp-python's
  Llama.generate, same GGUF, prompt, token count (EOS ignored) and threads;
- peak RSS of an ``llasm ask`` process against the bundle files it loads, and of its parts alone
  (imports, VAD, LLM with the context ``ask`` sizes, a 4096-position Engine, the ONNX tower);
- runtime overheads: start-up, first (cold) call, template rendering, prompt split, sampling.

``--realtime`` times what a user waits for in a conversation: each clip is played to llasm's
streamed turn (``Conversation.begin_audio``) in blocks of ``--block-ms`` at the pace of the audio
clock (the bench sleeps until each block has been "spoken"), so chunks are encoded and prefilled
while the speech goes on, and the latency runs from the moment the last sample was delivered to
the first answer token. It needs a model trained on chunked audio: until the real one ships, a
bundle of Gemma 3 270M + whisper-base with a random adaptor for 1 s chunks behind 2 s of context
(stack factor 10, learned boundary rows) is built once, exactly as export writes bundles. Beside it
run the same bundle's whole-clip turn and the cascades on the same audio and GGUF; a cascade's ASR
takes the whole clip, so it can start no earlier than the end of speech and is timed as always
(whisper.cpp also with ``audio_ctx`` trimmed to the clip). A hands-free row plays the clip and 1 s
of silence through the chat's voice-activity endpointer, as ``llasm chat`` takes a turn (prefilled
at the pause, whole when there is time), and counts from the endpointer's end of speech, the moment
a hands-free cascade would get the clip. The JSON's "summary" maps each utterance length (the
target, s) to llasm streaming's (push-to-talk's) latency ratio against the faster cascade.

The machine is shared and noisy, so every system runs once per repetition in a rotating order,
the same audio back to back, and the tables report medians and median per-repetition ratios.
See bench/README.md for the columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if "--omp-passive" in sys.argv:  # must be in the environment before any OpenMP runtime loads
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import assets  # noqa: E402
from bench.assets import DECODE_QUESTION, SENTENCES  # noqa: E402
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.files import atomic_write_text  # noqa: E402

now = time.perf_counter

TARGETS = (2.0, 5.0, 10.0, 25.0)
ESPEAK_SPEED = 160
SETTLE_S = 0.05  # pause between measured calls: lets the previous system's worker threads go idle
RSS_TARGET = 1.3  # issue #13: peak RSS of `llasm ask` at most this times the bundle files it loads


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


# --------------------------------------------------------------------------------------------
# utterances


@dataclass
class Utterance:
    target_s: float
    text: str
    audio: np.ndarray = field(repr=False)
    speech_s: float  # first to last voiced 10 ms frame

    @property
    def label(self) -> str:
        return f"{self.speech_s:.1f}s"


GPU_LAYERS = 0  # --gpu-layers: LLM layers on the GPU for llasm and the cascades' LLM alike
BACKENDS: tuple[str, ...] = ()  # --backends: the llasm tower backends to time (empty: all the bundle has)


def _espeak(text: str, path: Path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    subprocess.run(["espeak-ng", "-v", "en", "-s", str(ESPEAK_SPEED), "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


def speech_bounds(x: np.ndarray, frame: int = SAMPLE_RATE // 100, floor_db: float = -40.0) -> tuple[int, int]:
    """Sample range from the first to the last 10 ms frame within ``floor_db`` of the loudest."""
    n = x.size // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    voiced = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    return int(voiced[0] * frame), int((voiced[-1] + 1) * frame)


def make_utterances(targets: tuple[float, ...], workdir: Path, keep: Path | None = None) -> list[Utterance]:
    """For each target, the run of consecutive sentences whose speech length comes closest.
    ``keep``: a folder where the clips are saved (``u<target>.wav`` + ``.txt``) and read back on the
    next run, so a machine without espeak-ng can time the same speech."""
    if keep is not None and all((keep / f"u{t:g}.wav").is_file() for t in targets):
        out = []
        for t in targets:
            clip = load_audio(keep / f"u{t:g}.wav")
            a, b = speech_bounds(clip)
            out.append(Utterance(t, (keep / f"u{t:g}.txt").read_text(), clip, (b - a) / SAMPLE_RATE))
        return out
    single = []
    for i, s in enumerate(SENTENCES):
        a, b = speech_bounds(_espeak(s, workdir / f"s{i}.wav"))
        single.append((b - a) / SAMPLE_RATE)
    out = []
    for target in targets:
        best = min(
            ((i, j) for i in range(len(SENTENCES)) for j in range(i + 1, len(SENTENCES) + 1)),
            key=lambda ij: (abs(sum(single[ij[0] : ij[1]]) + 0.35 * (ij[1] - ij[0] - 1) - target), ij),
        )
        text = " ".join(SENTENCES[best[0] : best[1]])
        audio = _espeak(text, workdir / f"u{target:g}.wav")
        a, b = speech_bounds(audio)
        margin = SAMPLE_RATE // 10  # 100 ms around the speech, as an endpointer's pre-roll/hang-over
        clip = np.ascontiguousarray(audio[max(0, a - margin) : b + margin], dtype=np.float32)
        out.append(Utterance(target, text, clip, (b - a) / SAMPLE_RATE))
    if keep is not None:
        import soundfile as sf

        keep.mkdir(parents=True, exist_ok=True)
        for u in out:
            sf.write(keep / f"u{u.target_s:g}.wav", u.audio, SAMPLE_RATE)
            (keep / f"u{u.target_s:g}.txt").write_text(u.text)
    return out


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
            wait = self.started + (i + block.size) / SAMPLE_RATE - now()
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
    latency counted from the endpointer's SpeechEnd (the trailing silence confirmed), the moment a
    hands-free cascade would get the clip."""

    def __call__(self, audio: np.ndarray) -> Timing:
        from llasm_cli.audio.endpoint import Endpointer
        from llasm_cli.turn_taking import HandsFree

        conv = self.conversation()
        hands_free = HandsFree(conv, Endpointer())  # the chat's own loop: what it feeds, when it speculates
        for block in self.paced(np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)])):
            t_block = now()
            done = hands_free.push(block)
            if done is not None:  # the endpointer confirmed the end during this block
                turn, _ = done
                lag = now() - t_block
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
        ctx = min(1500, -(-audio.size // 320) + AUDIO_CTX_MARGIN) if trim_ctx else 0  # 0: the whole window
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

        llm_file = "llm.q4_k_m.gguf"
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
    a = Assistant(b, backend="onnx" if b.manifest.onnx_tower else "torch", n_threads=threads, n_gpu_layers=GPU_LAYERS)
    run.startup["assistant_init_s"] = now() - t
    sampling = a.default_sampling()
    towers = []
    for backend, tower in open_towers(run, b, a, ("onnx", "torch"), threads):
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


def measure_latency(run: ModelRun, utts: list[Utterance], reps: int) -> None:
    names = list(run.systems)
    log(f"{run.name}: first (cold) call of each system")
    for name in names:
        t = now()
        run.systems[name](utts[0].audio)
        run.cold[name] = now() - t
        time.sleep(SETTLE_S)
    for rep in range(reps):
        log(f"{run.name}: repetition {rep + 1}/{reps}")
        for ui, u in enumerate(utts):
            k = (rep + ui) % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                run.turns[(ui, name)].append(run.systems[name](u.audio))
                time.sleep(SETTLE_S)


def latency_rows(run: ModelRun, utts: list[Utterance]) -> list[dict]:
    rows = []
    cascades = [n for n in run.systems if n.startswith("cascade")]
    for ui, u in enumerate(utts):
        medians = {n: med(t.total for t in run.turns[(ui, n)]) for n in run.systems}
        faster = min(cascades, key=lambda n: medians[n]) if cascades else None  # --no-cascades: absolute times only
        for n in run.systems:
            turns = run.turns[(ui, n)]
            paired = [t.total / c.total for t, c in zip(turns, run.turns[(ui, faster)], strict=True)] if faster else []
            info = turns[0].info
            rows.append({
                "model": run.name, "utterance_s": round(u.speech_s, 2), "target_s": u.target_s, "system": n,
                "encode_ms": round(1e3 * med(t.encode for t in turns), 1),
                "prefill_ms": round(1e3 * med(t.prefill for t in turns), 1),
                "first_token_ms": round(1e3 * med(t.first for t in turns), 2),
                "total_ms": round(1e3 * medians[n], 1),
                "vs_faster_cascade": round(med(paired), 3) if paired else None, "faster_cascade": faster,
                "prompt_tokens": info.get("prompt_tokens"), "audio_tokens": info.get("audio_tokens"),
                "reused_tokens": med(t.info.get("reused_tokens", 0) for t in turns),
                "transcript": info.get("transcript"), "reps": len(turns),
                # streamed turns: audio and positions in the cache before the end of speech, lag behind the audio clock
                "early_s": info.get("early_s"), "early_positions": info.get("early_positions"),
                "lag_ms": round(med(t.info["lag_ms"] for t in turns), 1) if "lag_ms" in info else None,
                "whole_at_pause": info.get("whole_at_pause"),  # hands-free: encoded whole at the pause
            })
    return rows


def summary(rows: list[dict]) -> dict:
    """Utterance target length (s) -> the fastest llasm system's latency ratio against the faster
    cascade (a streaming one where any ran); the first LLM's rows."""
    if not rows:
        return {}
    model = rows[0]["model"]
    mine = [r for r in rows if r["model"] == model and r["system"].startswith("llasm")]
    if any(r["system"].startswith("llasm stream") for r in mine):
        mine = [r for r in mine if r["system"].startswith("llasm stream")]
    out = {}
    for target in dict.fromkeys(r["target_s"] for r in mine):
        best = min((r for r in mine if r["target_s"] == target), key=lambda r: r["total_ms"])
        if best["vs_faster_cascade"] is not None:
            out[f"{target:g}"] = best["vs_faster_cascade"]
    return out


# --------------------------------------------------------------------------------------------
# decode rate


class RawLlama:
    """llama.cpp through its C API only (llama-cpp-python's bindings): context, greedy or
    top-k/top-p/temperature sampler chain, one llama_decode per token — the floor for a decode loop."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp as L

        from llasm_cli.llm import native

        native.init()
        self.L = L
        self.model = L.llama_model_load_from_file(str(path).encode(), native.model_params())
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, 512, 512
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)

    def rate(self, tokens: list[int], n: int, sampling) -> float:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        prompt = (L.llama_token * len(tokens))(*tokens)
        if L.llama_decode(self.ctx, L.llama_batch_get_one(prompt, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed on the prompt")
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(sampling.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(sampling.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(sampling.temperature))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(sampling.seed))
        one = (L.llama_token * 1)()
        stamps = []
        try:
            for _ in range(n):
                one[0] = L.llama_sampler_sample(chain, self.ctx, -1)
                stamps.append(now())
                if L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1)) != 0:
                    raise RuntimeError("llama_decode failed")
        finally:
            L.llama_sampler_free(chain)
        return (n - 1) / (stamps[-1] - stamps[0])

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def measure_decode(run: ModelRun, ctx: dict, n_tokens: int, reps: int, threads: int) -> list[dict]:
    from llasm_cli.llm.engine import Sampler, Sampling

    a, llm = ctx["assistant"], ctx["llm"]
    prompt = ctx["prompt_of"](DECODE_QUESTION)
    tokens = llm.tokens(prompt)
    raw = RawLlama(a.bundle.llm_path(), threads, a.engine.n_ctx)
    greedy = Sampling(temperature=0.0, ignore_eos=True)
    sampled = a.default_sampling(top_k=40, top_p=0.95, ignore_eos=True)

    def llasm(s):
        def go() -> float:
            segs = a.prompt(a.messages(None, DECODE_QUESTION, None, None))
            a.engine.reset()
            logits = a.engine.eval(segs)
            stamps = [now() for _ in a.engine.generate(logits, Sampler(s), n_tokens)]
            return (len(stamps) - 1) / (stamps[-1] - stamps[0])
        return go

    def high_level(s):
        def go() -> float:
            stamps = []
            for _ in llm.llm.generate(tokens, temp=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=0.0, reset=True):
                stamps.append(now())
                if len(stamps) == n_tokens:
                    break
            return (n_tokens - 1) / (stamps[-1] - stamps[0])
        return go

    variants = {
        ("greedy", "llasm Engine.generate"): llasm(greedy),
        ("greedy", "llama.cpp C loop"): lambda: raw.rate(tokens, n_tokens, greedy),
        ("greedy", "llama-cpp-python Llama.generate"): high_level(greedy),
        ("sampled", "llasm Engine.generate"): llasm(sampled),
        ("sampled", "llama.cpp C loop"): lambda: raw.rate(tokens, n_tokens, sampled),
    }
    rates = defaultdict(list)
    keys = list(variants)
    for k in keys:  # one untimed pass each
        variants[k]()
    for rep in range(reps):
        r = rep % len(keys)
        for k in keys[r:] + keys[:r]:
            rates[k].append(variants[k]())
            time.sleep(SETTLE_S)
    raw.close()
    rows = []
    for (mode, who), rs in rates.items():
        base = rates[(mode, "llama.cpp C loop")]
        rows.append({
            "model": run.name, "sampling": mode, "runtime": who, "tokens": n_tokens,
            "tokens_per_s": round(med(rs), 1),
            "vs_llama_cpp": round(med([x / y for x, y in zip(rs, base, strict=True)]), 3), "reps": len(rs),
        })
    return rows


# --------------------------------------------------------------------------------------------
# peak RSS of an `llasm ask` process


# Run in a small helper process: Linux carries the peak RSS of the process that forks (or
# vforks) the child into the child's ru_maxrss across exec, so spawning `llasm ask` straight from
# this multi-GiB bench process would report the bench's own size.
_RSS_HELPER = """
import json, os, subprocess, sys
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    p = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
    _, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}))
"""


def peak_rss(cmd: list[str]) -> tuple[int, int, str, str, float]:
    """(exit code, peak RSS in bytes, stdout, stderr, wall s) of ``cmd`` run as a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        t = now()
        helper = subprocess.run([sys.executable, "-c", _RSS_HELPER, str(out), str(err), *cmd],
                                capture_output=True, text=True, cwd=ROOT, check=True)
        wall = now() - t
        res = json.loads(helper.stdout.strip().splitlines()[-1])
        return res["rc"], res["maxrss_kib"] * 1024, out.read_text(errors="replace"), err.read_text(errors="replace"), wall


def _bundle_files(bundle: Path, backend: str) -> list[Path]:
    """What `llasm ask --backend` loads from the bundle: the LLM, the tower (an ONNX tower's weights
    file beside it, if any), the boundary rows and the manifest."""
    from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle

    b = load_bundle(bundle)
    if backend == "onnx":
        files = [b.llm_path(), *b.onnx_tower_files()]
    else:
        files = assets.bundle_files(bundle, backend)
    if b.manifest.boundary_file:
        files.append(b.root / b.manifest.boundary_file)
    return files + [b.root / MANIFEST_FILE]


def bundle_backends(bundle: Path) -> tuple[str, ...]:
    """The tower backends a bundle carries files for (onnx first: what `pip install .` runs)."""
    from llasm_cli.formats.bundle import load_bundle

    m = load_bundle(bundle).manifest
    return tuple(name for name, has in (("onnx", m.onnx_tower), ("ggml", m.tower_files), ("torch", m.torch_tower)) if has)


def measure_rss(name: str, bundle: Path, wav: Path, threads: int, backends: tuple[str, ...] = ("ggml", "torch")) -> list[dict]:
    rows = []
    for backend in backends:
        cmd = [sys.executable, "-m", "llasm_cli", "ask", str(wav), "--model", str(bundle), "--backend", backend,
               "--max-tokens", "16", "--threads", str(threads), "--json"]
        rc, peak, stdout, stderr, wall = peak_rss(cmd)
        if rc != 0:
            log(f"llasm ask --backend {backend} failed ({rc}): {stderr.strip()[-300:]}")
            continue
        files = _bundle_files(bundle, backend)
        size = sum(p.stat().st_size for p in files)
        timings = json.loads(stdout.strip().splitlines()[-1]).get("timings", {})
        rows.append({
            "model": name, "backend": backend, "peak_rss_mb": round(peak / 2**20, 1),
            "bundle_files_mb": round(size / 2**20, 1), "rss_over_files": round(peak / size, 2),
            "process_wall_s": round(wall, 2), "first_token_ms_in_process": timings.get("first_token_ms"),
            "files": [str(p.relative_to(bundle)) if p.is_relative_to(bundle) else str(p) for p in files],  # an LLM may come from a package
        })
    # what the peak is made of: each piece alone in a fresh process (each includes the interpreter and
    # its own imports; "imports only" is that floor)
    llm = _bundle_files(bundle, backends[0])[0]
    audio = f"from llasm_cli.audio.decode import load_audio; from pathlib import Path; audio = load_audio(Path({str(wav)!r}))"
    parts = {
        "imports only": "import llasm_cli.cli, llasm_cli.assistant, llasm_cli.conversation, llama_cpp, numpy",
        "VAD (require_speech) only": f"{audio}; from llasm_cli.audio.endpoint import require_speech; require_speech(audio, 'clip')",
        "validate_llm only": f"from llasm_cli.formats.gguf_check import validate_llm; from pathlib import Path; validate_llm(Path({str(llm)!r}))",
        # the LLM half of `llasm ask`: GGUF check, llama.cpp model and a context sized to the question
        "LLM, context sized as ask": f"{audio}; from llasm_cli.assistant import Assistant; "
        f"from llasm_cli.conversation import question_context; "
        f"Assistant({str(bundle)!r}, n_threads={threads}, n_ctx=question_context(audio, max_tokens=16))",
        "Engine, 4096 positions": f"from llasm_cli.llm.engine import Engine; Engine({str(llm)!r}, n_ctx=4096, n_threads={threads}).warmup()",
    }
    for how, one_shot in (("ask", True), ("chat", False)) if "onnx" in backends else ():
        parts[f"onnx tower only (open + encode, as {how})"] = (
            f"{audio}; from llasm_cli.formats.bundle import load_bundle; from llasm_cli.towers.onnx import OnnxTower; "
            f"OnnxTower(load_bundle(Path({str(bundle)!r})), {threads}, one_shot={one_shot}).encode(audio)")
    for what, code in parts.items():
        rc, peak, _, stderr, wall = peak_rss([sys.executable, "-c", code])
        if rc == 0:
            rows.append({"model": name, "backend": what, "peak_rss_mb": round(peak / 2**20, 1), "process_wall_s": round(wall, 2)})
        else:
            log(f"RSS part {what!r} failed ({rc}): {stderr.strip()[-300:]}")
    return rows


# --------------------------------------------------------------------------------------------
# where the runtime spends time outside the model


def measure_overheads(run: ModelRun, ctx: dict, utts: list[Utterance], reps: int) -> dict:
    from llasm_cli.llm.engine import Sampler, Sampling
    from llasm_cli.prompt import render

    a = ctx["assistant"]
    out: dict = {"model": run.name}
    msgs = a.messages(None, utts[-1].text, None, None)
    eos = _eos_text(a.engine)
    ts = []
    for _ in range(max(20, reps)):
        t = now()
        render(a.template, msgs, bos_token="", eos_token=eos)
        ts.append(now() - t)
    out["template_render_ms"] = round(1e3 * med(ts), 2)

    # the same tokens in one llama_decode vs in three (llasm splits text | audio | text)
    toks = ctx["llm"].tokens(ctx["prompt_of"](utts[-1].text))
    third = len(toks) // 3
    one, three = [], []
    for _ in range(max(5, reps)):
        for segs, acc in (([toks], one), ([toks[:third], toks[third : 2 * third], toks[2 * third :]], three)):
            a.engine.reset()
            t = now()
            a.engine.eval(segs)
            acc.append(now() - t)
            time.sleep(SETTLE_S)
    out["prefill_tokens"] = len(toks)
    out["prefill_one_call_ms"] = round(1e3 * med(one), 1)
    out["prefill_three_calls_ms"] = round(1e3 * med(three), 1)

    a.engine.reset()
    logits = a.engine.eval([toks])
    for label, s in (("sample_greedy_ms", Sampling(temperature=0.0)), ("sample_default_ms", a.default_sampling())):
        sampler = Sampler(s)
        ts = []
        for _ in range(30):
            t = now()
            sampler(logits)
            ts.append(now() - t)
        out[label] = round(1e3 * med(ts), 3)
    ts = []
    for _ in range(30):
        t = now()
        a.engine.logits()
        ts.append(now() - t)
    out["logits_copy_ms"] = round(1e3 * med(ts), 3)
    out["n_vocab"] = a.engine.n_vocab
    out["startup_s"] = {k: round(v, 2) for k, v in run.startup.items()}
    steady = {n: med(t.total for t in run.turns[(0, n)]) for n in run.systems}
    out["first_call_ms"] = {n: round(1e3 * run.cold[n], 1) for n in run.systems}
    out["steady_call_ms"] = {n: round(1e3 * steady[n], 1) for n in run.systems}
    return out


# --------------------------------------------------------------------------------------------
# output


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    cfg = result["config"]
    con.print(f"[bold]llasm latency bench[/] — {cfg['cpu']}, {cfg['threads']} threads, {cfg['reps']} repetitions "
              f"(medians; ratios are medians of per-repetition ratios){' — quick' if cfg['quick'] else ''}; "
              f"load average {cfg['load_average_at_start'][0]:.1f} → {cfg['load_average_at_end'][0]:.1f}; "
              f"OMP_WAIT_POLICY={cfg['omp_wait_policy'] or 'unset'}")
    if result["utterances"]:
        t = Table(title="utterances (espeak-ng, English questions)")
        for c in ("target", "speech", "text"):
            t.add_column(c)
        for u in result["utterances"]:
            t.add_row(f"{u['target_s']:g} s", f"{u['speech_s']:.2f} s", u["text"][:90] + ("…" if len(u["text"]) > 90 else ""))
        con.print(t)

    if not result["latency"]:  # --rss-only, --decode-only
        _decode_table(con, result)
        _rss_table(con, result)
        return

    t = Table(title="end of speech → first answer token (ms, median)")
    for c, j in (("LLM", "left"), ("speech", "right"), ("system", "left"), ("encode / ASR", "right"), ("prefill", "right"),
                 ("1st token", "right"), ("total", "right"), ("× faster cascade", "right"), ("prompt tok", "right"),
                 ("kept", "right"), ("in cache before end of speech", "right")):
        t.add_column(c, justify=j)
    last = None
    for r in result["latency"]:
        key = (r["model"], r["utterance_s"])
        if last is not None and key != last:
            t.add_section()
        last = key
        ratio = r["vs_faster_cascade"]
        style = "" if ratio is None else "green" if ratio < 0.95 else ("red" if ratio > 1.05 else "")
        shown = "—" if ratio is None else f"[{style}]{ratio:.2f}[/]" if style else f"{ratio:.2f}"
        t.add_row(r["model"], f"{r['utterance_s']:.1f} s", r["system"], f"{r['encode_ms']:.0f}", f"{r['prefill_ms']:.0f}",
                  f"{r['first_token_ms']:.1f}", f"{r['total_ms']:.0f}", shown,
                  str(r["prompt_tokens"]), f"{r['reused_tokens']:.0f}", _early(r))
    con.print(t)
    if result.get("summary"):
        con.print("llasm against the faster cascade, by utterance length: "
                  + ", ".join(f"{k} s → {v:.2f}×" for k, v in result["summary"].items()))

    t = Table(title="cascade transcripts (first repetition)")
    for c in ("LLM", "speech", "ASR", "transcript"):
        t.add_column(c)
    for r in result["latency"]:
        if r["transcript"] is not None and r["model"] == result["latency"][0]["model"]:
            t.add_row(r["model"], f"{r['utterance_s']:.1f} s", r["system"].removeprefix("cascade "), r["transcript"][:100])
    con.print(t)

    _decode_table(con, result)
    _rss_table(con, result)

    for o in result["overheads"]:
        t = Table(title=f"runtime overheads — {o['model']}")
        t.add_column("what")
        t.add_column("value", justify="right")
        for k, v in o["startup_s"].items():
            t.add_row(f"start-up: {k}", f"{v:.2f} s")
        for n, v in o["first_call_ms"].items():
            t.add_row(f"first call vs steady: {n}", f"{v:.0f} ms vs {o['steady_call_ms'][n]:.0f} ms")
        t.add_row("chat template render (per prompt)", f"{o['template_render_ms']:.2f} ms")
        t.add_row(f"prefill {o['prefill_tokens']} tokens: 1 llama_decode vs 3", f"{o['prefill_one_call_ms']:.1f} vs {o['prefill_three_calls_ms']:.1f} ms")
        t.add_row(f"llasm Sampler per token, greedy / temperature (n_vocab {o['n_vocab']})", f"{o['sample_greedy_ms']:.2f} / {o['sample_default_ms']:.2f} ms")
        t.add_row("Engine.logits() copy per token", f"{o['logits_copy_ms']:.3f} ms")
        con.print(t)


def _decode_table(con, result: dict) -> None:
    if not result["decode"]:
        return
    from rich.table import Table

    t = Table(title="decode rate, same GGUF, prompt, threads and token count (EOS ignored)")
    for c in ("LLM", "sampling", "runtime", "tokens", "tokens/s", "× llama.cpp C loop"):
        t.add_column(c)
    for r in result["decode"]:
        t.add_row(r["model"], r["sampling"], r["runtime"], str(r["tokens"]), f"{r['tokens_per_s']:.1f}", f"{r['vs_llama_cpp']:.2f}")
    con.print(t)


def _rss_table(con, result: dict) -> None:
    if not result["rss"]:
        return
    from rich.table import Table

    t = Table(title=f"peak RSS of `llasm ask` (16 answer tokens) vs the bundle files it loads (target ≤ {RSS_TARGET}×); "
              "parts alone below")
    for c in ("LLM", "backend", "peak RSS MiB", "files MiB", "RSS / files", "process wall s"):
        t.add_column(c, justify="right" if c != "LLM" and c != "backend" else "left")
    for r in result["rss"]:
        files = r.get("bundle_files_mb")
        t.add_row(r["model"], r["backend"], f"{r['peak_rss_mb']:.0f}", f"{files:.0f}" if files else "",
                  f"{r['rss_over_files']:.2f}" if files else "", f"{r['process_wall_s']:.1f}")
    con.print(t)


def _early(r: dict) -> str:
    if r.get("early_s") is None:
        return ""
    lag = f", {r['lag_ms']:.0f} ms behind" if r.get("lag_ms") else ""
    whole = ", whole at the pause" if r.get("whole_at_pause") else ""
    return f"{r['early_s']:.1f} s audio, {r['early_positions']} pos{lag}{whole}"


def report(result: dict, args, started: float) -> int:
    """Wall time and load on the result, then the JSON (saved and/or printed) or the tables."""
    result["config"]["wall_s"] = round(now() - started, 1)
    result["config"]["load_average_at_end"] = list(os.getloadavg())
    if args.save:
        atomic_write_text(args.save, json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_tables(result)
        print(f"(wall {result['config']['wall_s']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, Gemma 270M only, 64 decode tokens (< ~5 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per system and utterance (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every system (default: all cores)")
    parser.add_argument("--models", default=None, help="comma list of gemma-270m, llama-1b (default: both; quick: gemma-270m)")
    parser.add_argument("--lengths", default=",".join(f"{t:g}" for t in TARGETS), help="target speech lengths in s")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens per decode-rate run (default 128, quick 64)")
    parser.add_argument("--no-whisper-cpp", action="store_true", help="skip the whisper.cpp cascade")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--rss-only", action="store_true",
                        help="only the peak-RSS table (the 5 s utterance), for --bundle (each tower backend it carries) "
                        "or the --models bundles")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decode-rate table, for --bundle or the --models bundles: llasm's loop against "
                        "llama.cpp's C loop and llama-cpp-python's generate on the same GGUF")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 torch-tower rows")
    parser.add_argument("--realtime", action="store_true",
                        help="stream each clip to llasm at the audio clock's pace (chunked model; latency from the end "
                        "of speech) beside the cascades; default 3 repetitions")
    parser.add_argument("--block-ms", type=float, default=40.0, help="--realtime: audio delivered per block (20-100 ms)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="--realtime: a chunked bundle to stream (e.g. llasm_cli/models/demo); default: the "
                        "Gemma 3 270M bundle built for the bench")
    parser.add_argument("--gpu-layers", type=int, default=0,
                        help="LLM layers offloaded to the GPU (-1: all), for llasm and the cascades' LLM alike; the "
                        "towers use the GPU their library finds (mtmd: CUDA/Metal builds of llama.cpp; torch: CUDA)")
    parser.add_argument("--backends", default=None,
                        help="comma list of llasm tower backends to time (onnx, torch, ggml; default: each the bundle has)")
    parser.add_argument("--no-cascades", action="store_true",
                        help="llasm's systems only (absolute times; e.g. on a machine without the cascades' models)")
    parser.add_argument("--speech", type=Path, default=None,
                        help="keep the spoken utterances in this folder and reuse them (a machine without espeak-ng "
                        "times the same clips)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="run everything with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning "
                        "at barriers: far steadier on a machine whose cores other processes use)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick or args.realtime else 5)
    if reps < 3:
        parser.error("--reps: at least 3 (the tables report medians)")
    if args.realtime and not 20 <= args.block_ms <= 100:
        parser.error("--block-ms must be from 20 to 100")
    models = (args.models or ("gemma-270m" if args.quick or args.realtime else "gemma-270m,llama-1b")).split(",")
    unknown = set(models) - set(assets.BUNDLES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(assets.BUNDLES)}")
    global GPU_LAYERS, BACKENDS
    GPU_LAYERS = args.gpu_layers
    BACKENDS = tuple(args.backends.split(",")) if args.backends else ()
    if set(BACKENDS) - {"onnx", "torch", "ggml"}:
        parser.error(f"--backends lists onnx, torch and/or ggml, not {args.backends!r}")
    if args.rss_only:
        return rss_only(args, models)
    if args.decode_only:
        return decode_only(args, models, reps, args.decode_tokens or (64 if args.quick else 128))
    if args.realtime and models != ["gemma-270m"]:
        parser.error("--realtime runs the chunked Gemma 3 270M bundle only (leave --models out)")
    n_decode = args.decode_tokens or (64 if args.quick else 128)
    want_wcpp = not (args.no_whisper_cpp or args.no_cascades)
    if want_wcpp:
        try:
            import pywhispercpp  # noqa: F401
        except ImportError:
            log("pywhispercpp is not installed (pip install pywhispercpp): skipping the whisper.cpp cascade")
            want_wcpp = False

    started = now()
    result = _new_result(args, models, quick=args.quick, reps=reps, decode_tokens=n_decode, realtime=args.realtime,
                         block_ms=args.block_ms if args.realtime else None, cascades=not args.no_cascades)

    if args.realtime:
        from llasm_cli.formats.bundle import load_bundle

        path = args.bundle.resolve() if args.bundle else chunked_bundle(log)
        bundles = {load_bundle(path).manifest.name: path}
    else:  # --bundle: one whose LLM GGUF comes with an mmproj tower and a torch tower
        bundles = _bundles(args, models)  # build (once) before timing anything
    if want_wcpp:
        assets.whisper_cpp_base(log)
    with tempfile.TemporaryDirectory(prefix="llasm-bench-") as tmp:
        utts = make_utterances(tuple(float(x) for x in args.lengths.split(",")), Path(tmp), args.speech)
        result["utterances"] = [{"target_s": u.target_s, "speech_s": round(u.speech_s, 2), "text": u.text} for u in utts]
        import soundfile as sf

        wav = Path(tmp) / "rss.wav"
        sf.write(wav, utts[min(1, len(utts) - 1)].audio, SAMPLE_RATE)
        for m in bundles:
            log(f"{m}: loading")
            if args.realtime:
                run, ctx = load_realtime_systems(bundles[m], args.threads, want_wcpp, args.block_ms / 1e3,
                                                 cascades=not args.no_cascades)
            else:
                run, ctx = load_systems(m, bundles[m], args.threads, want_wcpp, bf16=not args.no_bf16 and _cpu_bf16(),
                                        cascades=not args.no_cascades)
            measure_latency(run, utts, reps)
            result["latency"] += latency_rows(run, utts)
            log(f"{m}: decode rate")
            result["decode"] += measure_decode(run, ctx, n_decode, reps, args.threads)
            log(f"{m}: overheads")
            result["overheads"].append(measure_overheads(run, ctx, utts, reps))
            for tower in ctx["towers"]:
                tower.close()
            ctx["assistant"].close()
            del run, ctx
            if not args.no_rss:
                log(f"{m}: peak RSS of llasm ask")
                result["rss"] += measure_rss(m, bundles[m], wav, args.threads,
                                             ("onnx", "torch") if args.realtime else ("ggml", "torch"))
    result["summary"] = summary(result["latency"])
    return report(result, args, started)


def _bundles(args, models: list[str]) -> dict[str, Path]:
    """--bundle, or the bench's own bundles for --models (built once)."""
    from llasm_cli.formats.bundle import load_bundle

    if args.bundle is not None:
        path = args.bundle.resolve()
        return {load_bundle(path).manifest.name: path}
    return {m: assets.BUNDLES[m](log) for m in models}


def _new_result(args, models: list[str], **config) -> dict:
    """An empty result whose config says where and how it is measured (every bench mode's tables)."""
    return {"config": {"load_average_at_start": list(os.getloadavg()), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                       "threads": args.threads, "models": models, "gpu_layers": args.gpu_layers,
                       "gpu": _gpu_name(),
                       "cpu": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
                       "python": platform.python_version(), "versions": _versions(), **config},
            "utterances": [], "latency": [], "decode": [], "rss": [], "overheads": []}


def decode_only(args, models: list[str], reps: int, n_decode: int) -> int:
    """--decode-only: the decode-rate rows alone (no audio, no cascade ASR), on an idle-enough machine
    in a minute or two per model."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.bundle import load_bundle

    bundles = _bundles(args, models)
    result = _new_result(args, list(bundles), quick=args.quick, reps=reps, decode_tokens=n_decode, decode_only=True)
    started = now()
    for name, path in bundles.items():
        log(f"{name}: decode rate")
        b = load_bundle(path)
        a = Assistant(b, backend="onnx" if b.manifest.onnx_tower else "auto", n_threads=args.threads,
                      n_gpu_layers=GPU_LAYERS)
        llm = CascadeLLM(b.llm_path(), args.threads, a.engine.n_ctx)
        result["decode"] += measure_decode(ModelRun(name, path), {"assistant": a, "llm": llm, "prompt_of": typed_prompt(a)},
                                           n_decode, reps, args.threads)
        a.close()
    return report(result, args, started)


def rss_only(args, models: list[str]) -> int:
    """--rss-only: `llasm ask` on the 5 s utterance, per tower backend, and its parts alone."""
    bundles = _bundles(args, models)
    result = _new_result(args, list(bundles), quick=False, reps=1, rss_only=True)
    started = now()
    with tempfile.TemporaryDirectory(prefix="llasm-bench-") as tmp:
        import soundfile as sf

        (u,) = make_utterances((5.0,), Path(tmp), args.speech)
        result["utterances"] = [{"target_s": u.target_s, "speech_s": round(u.speech_s, 2), "text": u.text}]
        wav = Path(tmp) / "rss.wav"
        sf.write(wav, u.audio, SAMPLE_RATE)
        for name, path in bundles.items():
            log(f"{name}: peak RSS of llasm ask")
            result["rss"] += measure_rss(name, path, wav, args.threads, bundle_backends(path))
    return report(result, args, started)


def _gpu_name() -> str | None:
    """The CUDA card, as nvidia-smi names it (None on a machine without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_bf16() -> bool:
    """bfloat16 torch rows only where the CPU computes bf16 natively (else they only measure emulation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for d in ("llama-cpp-python", "faster-whisper", "ctranslate2", "pywhispercpp", "torch", "transformers"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
