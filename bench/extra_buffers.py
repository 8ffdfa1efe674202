"""What ggml's extra CPU buffer types (AMX tiles, repacked Q4_0/Q8_0 weights) are worth here.

llasm turns them off where a probe process crashes with them (see llasm_cli/llm/cpu_probe.py).
This measures what that costs where they work: prompt processing and single-token decode
speed of the same GGUF with the extra buffers on and off, each run in its own process (a
crash is reported, not fatal), medians of several runs, side by side.

    python bench/extra_buffers.py                       # a random ~90 MB Q8_0/Q4_0 llama
    python bench/extra_buffers.py --gguf model.gguf --threads 8 --runs 5
    python bench/extra_buffers.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def measure(model: str, extra: bool, threads: int, n_prompt: int, n_decode: int) -> dict:
    """One process's numbers: prompt tokens/s and decode tokens/s (runs in a child)."""
    import llama_cpp

    from llasm_cli.llm.cpu_probe import open_bare

    opened = open_bare(model, extra, n_ctx=n_prompt + n_decode + 8, n_batch=n_prompt, threads=threads)
    if opened is None:
        raise RuntimeError(f"llama.cpp could not load {model}")
    m, ctx = opened
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(m))
    batch = llama_cpp.llama_batch_init(n_prompt, 0, 1)

    def decode(tokens: list[int], start: int) -> None:
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    prompt = [3 + i % (n_vocab - 3) for i in range(n_prompt)]
    decode(prompt[:8], 0)  # warm-up: graph allocation
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    t0 = time.perf_counter()
    decode(prompt, 0)
    t1 = time.perf_counter()
    for i in range(n_decode):
        decode([3 + (7 * i) % (n_vocab - 3)], n_prompt + i)
    t2 = time.perf_counter()
    return {"prompt_tok_s": n_prompt / (t1 - t0), "decode_tok_s": n_decode / (t2 - t1)}


def run_child(model: str, extra: bool, threads: int, n_prompt: int, n_decode: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model, "--extra", str(int(extra)), "--threads", str(threads),
           "--prompt", str(n_prompt), "--decode", str(n_decode)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        why = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        try:
            import signal

            why = signal.Signals(-done.returncode).name if done.returncode < 0 else why
        except ValueError:
            pass
        return {"error": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="GGUF to measure (default: a random llama with Q8_0/Q4_0 weights)")
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--extra", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, bool(a.extra), a.threads, a.prompt, a.decode)))
        return

    from llasm_cli.llm.cpu_probe import machine_key, write_random_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = a.gguf or str(write_random_llama(Path(tmp) / "random.gguf", 1024, 2816, 8, 16, 4096))
        results: dict[str, dict] = {}
        for extra in (True, False):
            runs = [run_child(model, extra, a.threads, a.prompt, a.decode) for _ in range(a.runs)]
            ok = [r for r in runs if "error" not in r]
            key = "on" if extra else "off"
            if not ok:
                results[key] = {"error": runs[0]["error"]}
                continue
            results[key] = {k: statistics.median(r[k] for r in ok) for k in ("prompt_tok_s", "decode_tok_s")}
    out = {"machine": machine_key().split(" ", 1)[1], "threads": a.threads, "model": a.gguf or "random 1024x8 Q8_0/Q4_0",
           "extra_buffers": results}
    on, off = results["on"], results["off"]
    if "error" not in on and "error" not in off:
        out["ratio_on_over_off"] = {k: round(on[k] / off[k], 3) for k in on}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"machine: {out['machine']}, {a.threads} threads, model: {out['model']}, median of {a.runs}")
    print(f"{'extra buffers':14} {'prompt tok/s':>13} {'decode tok/s':>13}")
    for key in ("on", "off"):
        r = results[key]
        if "error" in r:
            print(f"{key:14} {'crashed: ' + r['error']:>27}")
        else:
            print(f"{key:14} {r['prompt_tok_s']:13.1f} {r['decode_tok_s']:13.1f}")
    if "ratio_on_over_off" in out:
        ratio = out["ratio_on_over_off"]
        print(f"{'on / off':14} {ratio['prompt_tok_s']:13.2f} {ratio['decode_tok_s']:13.2f}")


if __name__ == "__main__":
    main()
