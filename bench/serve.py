"""`llasm serve` against llama-cpp-python's own OpenAI-compatible server, on the same LLM.

    python bench/serve.py                       # 1, 4 and 16 clients, 8 s per cell
    python bench/serve.py --clients 1,4 --seconds 4 --threads 2
    python bench/serve.py --gpu-layers -1 --save serve.json   # LLM on the GPU for both; the table also as JSON

Both servers run the built-in model's LLM (``load_bundle(demo_bundle_path()).llm_path()``),
the demo bundle's GGUF or whatever llasm runs with no --model,
the same file for both -- with the same threads, and both are asked the same four questions (the
recordings in examples/) by N concurrent streaming clients (the official openai client, temperature
0, at most 16 answer tokens) for a fixed time per cell:

- **llasm speech**: `llasm serve` hears the questions as audio (base64 WAV). Every request carries
  a clip of its own (the recording with a different ±1 LSB dither), so no request finds its
  embeddings in the server's clip cache: each one is decoded and encoded by the audio tower;
- **llasm typed**: `llasm serve` reads the typed transcripts (the LLM alone, as below);
- **llama_cpp.server typed**: `python -m llama_cpp.server` reads the typed transcripts.

Typed, both servers read the same prompt: the GGUF's ChatML template, and the system prompt the
template adds when a request has none is the one the bundle's manifest gives llasm.

`llasm serve` runs with --parallel 16 (every client admitted; their decodes are batched);
llama_cpp.server serves one request at a time (interrupt_requests off, so a new request waits
instead of cutting the one in flight short). Reported per cell: completed requests per second,
time to first token (request sent -> first content chunk) p50 and p95, and "same": the share of
answers equal to that system's own answer with one client. Batching changes no prompt, but
llama.cpp rounds a position differently in a batch of many tokens than in a small one, and that can
tip a near tie between two tokens the other way, so "same" may fall below 100% with several
clients (for speech also because each request's clip is dithered differently: a model whose answer
hangs on a near tie may answer a dithered copy otherwise). Ratios compare llasm with
llama_cpp.server in the same run.

llama_cpp.server needs `pip install 'llama-cpp-python[server]'` (the bench extra); without it the
table says so. On CPUs where ggml's extra buffer types crash (see llasm_cli/llm/cpu_probe.py), it is
started with the same verdict llasm uses, else it would die on its first decode.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXAMPLES = ROOT / "examples" / "demo"
QUESTIONS = [  # (recording, typed transcript)
    ("what_is_the_capital_of_japan.wav", "What is the capital of Japan?"),
    ("what_is_the_largest_ocean_on_earth.wav", "What is the largest ocean on Earth?"),
    ("how_do_i_fix_a_flat_tire.wav", "How do I fix a flat tire?"),
    ("write_a_haiku_about_friendship.wav", "Write a haiku about friendship."),
]
CLIP_VARIANTS = 400  # distinct dithered copies per question (more than any cell sends)
MAX_TOKENS = 16
LLASM_PARALLEL = 16
CHILD_FLAG = "--child-llama-cpp-server"


@dataclass
class Cell:
    requests: int = 0
    errors: int = 0
    same: int = 0
    ttft: list[float] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        xs = sorted(self.ttft)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1e3


# --- requests -------------------------------------------------------------------------------


def dithered_clips(n: int) -> list[list[str]]:
    """For each question, ``n`` base64 WAVs: the recording with a different ±1 LSB dither each."""
    import numpy as np
    import soundfile as sf

    out = []
    for i, (name, _) in enumerate(QUESTIONS):
        pcm, rate = sf.read(EXAMPLES / name, dtype="int16")
        rng = np.random.default_rng(i)
        variants = []
        for _ in range(n):
            x = np.clip(pcm.astype(np.int32) + rng.integers(-1, 2, size=pcm.shape), -32768, 32767).astype(np.int16)
            buf = io.BytesIO()
            sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
            variants.append(base64.b64encode(buf.getvalue()).decode())
        out.append(variants)
    return out


class Asker:
    """Messages for request ``i`` of question ``q`` in one mode."""

    def __init__(self, mode: str, clips: list[list[str]] | None = None) -> None:
        self.mode, self.clips = mode, clips
        self._next = [0] * len(QUESTIONS)
        self._lock = threading.Lock()

    def messages(self, q: int) -> list[dict]:
        if self.mode == "typed":
            return [{"role": "user", "content": QUESTIONS[q][1]}]
        with self._lock:
            k = self._next[q]
            self._next[q] += 1
        data = self.clips[q][k % len(self.clips[q])]
        return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}]


MODEL = "llasm"  # the request's model name: neither server checks it (set to the bundle's name in main)


def one(client, messages) -> tuple[float, str]:
    """(seconds to the first content chunk, the answer) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    text = []
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, seed=0, max_tokens=MAX_TOKENS, stream=True,
        extra_body={"repeat_penalty": 1.0},  # llama_cpp.server's default is 1.1; llasm has none (and ignores it)
    )
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            first = first if first is not None else time.perf_counter() - t0
            text.append(piece)
    return (first if first is not None else time.perf_counter() - t0), "".join(text).strip()


def run_cell(url: str, asker: Asker, clients: int, seconds: float, solo: list[str]) -> Cell:
    import openai

    cell = Cell()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=300)
        i = k
        while time.perf_counter() < stop:
            q = i % len(QUESTIONS)
            try:
                ttft, answer = one(c, asker.messages(q))
            except Exception:
                with lock:
                    cell.errors += 1
                time.sleep(0.1)
                continue
            with lock:
                cell.requests += 1
                cell.ttft.append(ttft)
                cell.same += answer == solo[q]
            i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cell.seconds = time.perf_counter() - t0
    return cell


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"did not answer within {timeout:.0f} s")


def start_llasm(threads: int, gpu_layers: int = 0) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "LLASM_THREADS": str(threads)}
    env.pop("LLASM_MODEL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llasm_cli", "serve", "--port", "0", "--parallel", str(LLASM_PARALLEL),
         "--queue", "256", "--ctx", "1024", "--gpu-layers", str(gpu_layers)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    for line in proc.stderr:
        m = re.search(r"at (http://\S+?)/v1", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            wait_ready(m.group(1), proc)
            return proc, m.group(1)
    raise RuntimeError(f"llasm serve did not start (exit {proc.wait()})")


def start_llama_cpp_server(gguf: Path, threads: int, gpu_layers: int = 0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--interrupt_requests", "false", "--verbose", "false", "--n_gpu_layers", str(gpu_layers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except RuntimeError as exc:
        proc.kill()
        tail = (proc.stderr.read() or "").strip().splitlines()[-1:] if proc.poll() is not None else []
        raise RuntimeError(f"{exc}{': ' + tail[0] if tail else ''}") from None
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, url


def child_llama_cpp_server(argv: list[str]) -> None:
    """python -m llama_cpp.server, with ggml's extra buffer types set by llasm's CPU probe verdict."""
    from llama_cpp.server.__main__ import main

    from bench.assets import llasm_verdict_defaults

    sys.argv = ["llama_cpp.server", *argv]
    with llasm_verdict_defaults():
        main()


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- the table ------------------------------------------------------------------------------


def fmt_cell(c: Cell | None) -> str:
    if c is None:
        return f"{'-':>7} {'-':>7} {'-':>7} {'-':>5}"
    return f"{c.rps:7.2f} {c.pct(0.5):7.0f} {c.pct(0.95):7.0f} {100 * c.same / max(1, c.requests):4.0f}%"


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b and a == a and b == b else f"{'-':>7}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        child_llama_cpp_server(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="client counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured time per cell")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for each server (default: llasm's)")
    ap.add_argument("--gpu-layers", type=int, default=0, help="LLM layers on the GPU for both servers (-1: all)")
    ap.add_argument("--save", type=Path, default=None, help="also write the table's numbers as JSON to this file")
    args = ap.parse_args()
    from llasm_cli.formats.built_in import demo_bundle_path
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.llm import native

    global MODEL
    default = demo_bundle_path()
    if default is None:
        sys.exit("no built-in model in llasm_cli/models/demo")
    bundle = load_bundle(default)
    MODEL = bundle.manifest.name
    gguf = bundle.llm_path()  # the built-in model's LLM: what `llasm serve` (no --model) runs too
    threads = args.threads or native.default_threads()
    counts = [int(x) for x in args.clients.split(",")]
    print(f"preparing {CLIP_VARIANTS} dithered clips per question...", file=sys.stderr)
    clips = dithered_clips(CLIP_VARIANTS)

    systems = {"llasm speech": Asker("speech", clips), "llasm typed": Asker("typed"),
               "llama_cpp.server typed": Asker("typed")}
    results: dict[str, dict[int, Cell]] = {name: {} for name in systems}
    notes: list[str] = []
    procs = []
    try:
        print("starting llasm serve...", file=sys.stderr)
        proc, llasm_url = start_llasm(threads, args.gpu_layers)
        procs.append(proc)
        urls = {"llasm speech": llasm_url, "llasm typed": llasm_url}
        print("starting python -m llama_cpp.server...", file=sys.stderr)
        try:
            import llama_cpp.server.app  # noqa: F401 - its extra dependencies present?

            proc, urls["llama_cpp.server typed"] = start_llama_cpp_server(gguf, threads, args.gpu_layers)
            procs.append(proc)
        except (ImportError, RuntimeError) as exc:
            notes.append(f"llama_cpp.server could not run here ({exc}); pip install 'llama-cpp-python[server]'")
        import openai

        for name, asker in systems.items():
            if name not in urls:
                continue
            c = openai.OpenAI(base_url=urls[name] + "/v1", api_key="bench", max_retries=0, timeout=300)
            solo = [one(c, asker.messages(q))[1] for q in range(len(QUESTIONS))]  # warm-up and reference answers
            solo = [one(c, asker.messages(q))[1] for q in range(len(QUESTIONS))]
            print(f"{name}: answers alone {solo}", file=sys.stderr)
            for n in counts:
                print(f"  {name}: {n} client(s), {args.seconds:g} s", file=sys.stderr)
                results[name][n] = run_cell(urls[name], asker, n, args.seconds, solo)
    finally:
        for p in procs:
            stop(p)

    import platform

    print(f"\nllasm serve vs python -m llama_cpp.server: {gguf.relative_to(ROOT) if gguf.is_relative_to(ROOT) else gguf}, "
          f"{threads} threads each, {args.seconds:g} s per cell, streaming, temperature 0, max {MAX_TOKENS} tokens "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print("req/s: completed requests per second; p50/p95: time to first token in ms; same: answers equal to "
          "the system's answer with one client\n")
    head = " ".join(f"{name:^31}" for name in systems)
    print(f"{'':7} | {head} | {'speech / llama_cpp':^17} | {'typed / llama_cpp':^17}")
    sub = " ".join(f"{'req/s':>7} {'p50':>7} {'p95':>7} {'same':>5}" for _ in systems)
    print(f"{'clients':7} | {sub} | {'req/s':>7} {'p50':>8} | {'req/s':>7} {'p50':>8}")
    for n in counts:
        cells = [results[name].get(n) for name in systems]
        sp, ty, lc = cells
        r = [ratio(sp.rps, lc.rps) if sp and lc else "-", ratio(sp.pct(0.5), lc.pct(0.5)) if sp and lc else "-",
             ratio(ty.rps, lc.rps) if ty and lc else "-", ratio(ty.pct(0.5), lc.pct(0.5)) if ty and lc else "-"]
        print(f"{n:7d} | {' '.join(fmt_cell(c) for c in cells)} | {r[0]:>7} {r[1]:>8} | {r[2]:>7} {r[3]:>8}")
    errors = {name: sum(c.errors for c in results[name].values()) for name in systems}
    if any(errors.values()):
        notes.append("failed requests: " + ", ".join(f"{k} {v}" for k, v in errors.items() if v))
    for note in notes:
        print(f"note: {note}")
    if args.save:
        import json

        cells = [{"system": name, "clients": n, "requests": c.requests, "errors": c.errors, "seconds": round(c.seconds, 2),
                  "rps": round(c.rps, 3), "ttft_p50_ms": round(c.pct(0.5), 1) if c.ttft else None,
                  "ttft_p95_ms": round(c.pct(0.95), 1) if c.ttft else None,
                  "same": round(c.same / c.requests, 3) if c.requests else None}
                 for name in systems for n, c in results[name].items()]
        args.save.write_text(json.dumps({"gguf": str(gguf), "threads": threads, "gpu_layers": args.gpu_layers,
                                         "seconds": args.seconds, "max_tokens": MAX_TOKENS, "cells": cells,
                                         "notes": notes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
