"""bench/gpu_run.py --cpu-dry-run: the GPU machine's one command, taken step by step on the CPU with the
smallest sizes, as its own process (as a user or CI would run it). It must exit 0 and leave a JSON whose
steps all ran and whose numbers are real measurements, and the Markdown table beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "install", "build", "import_order", "info", "tiny_bundle", "ask", "latency_realtime", "latency_whole",
         "serve"]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="bench/latency.py speaks with espeak-ng")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("gpu-run")
    out = tmp / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_run.py"), "--cpu-dry-run", "--out", str(out), "--work",
         str(tmp / "work"), "--carry", str(tmp / "no-carry"), "--examples", "1", "--serve-clients", "1",
         "--serve-seconds", "1", "--deadline", "600"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=720,
    )
    assert (out / "gpu_run.json").is_file(), proc.stderr[-4000:]
    return json.loads((out / "gpu_run.json").read_text()), (out / "gpu_run.md").read_text(), proc


def test_exits_zero_with_every_step_ok(dry_run):
    result, _, proc = dry_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["mode"] == "cpu-dry-run"
    assert [s["name"] for s in result["steps"]] == STEPS
    bad = {s["name"]: (s["status"], s["note"]) for s in result["steps"] if s["status"] != "ok"}
    assert not bad, bad
    assert all(s["seconds"] >= 0 for s in result["steps"])
    assert result["wall_s"] < result["deadline_s"]


def test_build_step_reuses_the_installed_llama_cpp(dry_run):
    result, _, _ = dry_run
    build = next(s for s in result["steps"] if s["name"] == "build")
    assert "reusing the installed llama-cpp-python" in build["note"]
    assert "-DGGML_CUDA=on" in build["note"]  # what it would compile on a GPU
    assert result["build"]["after"]["version"]


def test_asks_answer_on_every_tower_backend(dry_run):
    result, _, _ = dry_run
    rows = result["ask"]
    assert {(r["model"], r["backend"]) for r in rows} == {("demo", "onnx"), ("demo", "torch"), ("tiny (random)", "ggml")}
    for r in rows:
        assert r["rc"] == 0, r
        assert r["first_token_ms"] > 0 and r["encode_ms"] > 0, r
        assert r["first_token_ms"] >= r["encode_ms"], r
        assert r["llm_device"] == "CPU", r  # --gpu-layers -1 with no GPU: llama.cpp's log says where the layers went
    demo = [r for r in rows if r["model"] == "demo"]
    assert all(r["answer"] and r["answer"].strip() for r in demo), demo
    ggml = next(r for r in rows if r["backend"] == "ggml")
    assert ggml["tower_device"] == "CPU"  # mtmd's own log ("CLIP using CPU backend")


def test_latency_bench_numbers(dry_run):
    result, _, _ = dry_run
    realtime, whole = result["latency"]["realtime"], result["latency"]["whole"]
    assert realtime["config"]["gpu_layers"] == -1 and realtime["config"]["realtime"]
    systems = {r["system"]: r for r in realtime["latency"]}
    assert {"llasm stream onnx", "llasm hands-free onnx", "llasm whole-clip onnx"} <= set(systems)
    for r in realtime["latency"] + whole["latency"]:
        assert r["total_ms"] > 0 and r["first_token_ms"] > 0, r
        assert r["utterance_s"] > 1, r
    assert [r["system"] for r in whole["latency"]] == ["llasm onnx"]
    for lat in (realtime, whole):
        assert lat["decode"] and all(d["tokens_per_s"] > 0 for d in lat["decode"])


def test_serve_bench_served_requests(dry_run):
    result, _, _ = dry_run
    cells = {(c["system"], c["clients"]): c for c in result["serve"]["cells"]}
    for system in ("llasm speech", "llasm typed"):
        c = cells[(system, 1)]
        assert c["requests"] > 0 and c["errors"] == 0, c
        assert c["rps"] > 0 and c["ttft_p50_ms"] > 0, c
    assert result["serve"]["gpu_layers"] == -1


def test_import_order_check_ran_both_orders(dry_run):
    result, _, _ = dry_run
    rows = {r["order"]: r for r in result["import_order"]}
    assert set(rows) == {"llama_cpp then torch", "torch then llama_cpp"}
    for r in rows.values():  # on the CPU both orders work; the GPU run records what CUDA does
        assert r["rc"] == 0 and not r["crashed"] and not r["free_invalid_pointer"], r
        assert r["torch_device"] == "cpu" and r["answer"] is not None, r


def test_markdown_holds_the_tables(dry_run):
    result, md, _ = dry_run
    assert md.startswith("# llasm GPU run — cpu-dry-run")
    for s in result["steps"]:
        assert f"| {s['name']} | {s['status']} |" in md
    for heading in ("## `llasm ask --gpu-layers -1`", "## End of speech → first answer token, streamed",
                    "## End of speech → first answer token, whole clips", "## `llasm serve` under load",
                    "## `import llama_cpp` and `import torch`"):
        assert heading in md
    assert "| llasm stream onnx |" in md and "| llasm typed | 1 |" in md
