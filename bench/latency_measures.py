"""The latency bench's measurements: end of speech -> first token, decode rate, peak RSS, overheads."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench import assets
from bench.assets import DECODE_QUESTION
from bench.latency_common import ROOT, SETTLE_S, log, med, now
from bench.latency_speech import Utterance
from bench.latency_systems import ModelRun, _eos_text


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
    elif backend == "whisper":  # the transcript tower's CTranslate2 Whisper, wherever it lies
        from llasm_cli.towers.transcript import ears_folder

        files = [b.llm_path(), ears_folder(b) / "model.bin"]
    else:
        files = assets.bundle_files(bundle, backend)
    if b.manifest.boundary_file:
        files.append(b.root / b.manifest.boundary_file)
    return files + [b.root / MANIFEST_FILE]


def bundle_backends(bundle: Path) -> tuple[str, ...]:
    """The tower backends a bundle carries files for (onnx first: what `pip install .` runs)."""
    from llasm_cli.formats.bundle import load_bundle

    m = load_bundle(bundle).manifest
    if m.adaptor == "transcript":
        return ("whisper",)
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
        f"from llasm_cli.assistant import question_context; "
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


