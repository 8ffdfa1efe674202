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

# ruff: noqa: E402 (the OpenMP setting must come before numpy and llama.cpp load)
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

if "--omp-passive" in sys.argv:  # must be in the environment before any OpenMP runtime loads
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import assets, latency_systems
from bench.latency_common import RSS_TARGET, TARGETS, log, now
from bench.latency_measures import (
    bundle_backends,
    latency_rows,
    measure_decode,
    measure_latency,
    measure_overheads,
    measure_rss,
    summary,
)
from bench.latency_speech import make_utterances
from bench.latency_systems import (
    CascadeLLM,
    ModelRun,
    chunked_bundle,
    load_realtime_systems,
    load_systems,
    typed_prompt,
)
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.files import atomic_write_text

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
    latency_systems.GPU_LAYERS = args.gpu_layers
    latency_systems.BACKENDS = tuple(args.backends.split(",")) if args.backends else ()
    if set(latency_systems.BACKENDS) - {"onnx", "torch", "ggml"}:
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
                                             bundle_backends(bundles[m]) if args.realtime else ("ggml", "torch"))
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
                      n_gpu_layers=latency_systems.GPU_LAYERS)
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
