"""ggml's extra CPU buffer types are used only where a child process showed they work."""

from __future__ import annotations

import json
import os
import sys

import pytest

from llasm_cli.llm import cpu_probe, native
from tests.helpers import run_llasm

DIE_BY_SIGILL = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]


def test_probe_model_runs_without_extra_buffers(tmp_path):
    """The probe's own model is sound: the child answers when the extra buffers are safe, and
    this process (which runs with the machine's verdict) decodes it to finite logits."""
    import numpy as np

    from llasm_cli.llm.engine import Engine

    model = cpu_probe.write_probe_model(tmp_path / "probe.gguf")
    with Engine(model, n_ctx=64) as engine:
        logits = engine.eval([[1, 5, 6, 7]])
    assert logits.shape == (cpu_probe.N_VOCAB,) and np.isfinite(logits).all()


def test_a_child_that_dies_by_a_signal_means_no_extra_buffers():
    verdict = cpu_probe.run_probe(DIE_BY_SIGILL)
    assert verdict.extra_buffers is False and verdict.probed
    assert "SIGILL" in verdict.reason


def test_a_hanging_or_failing_child_means_no_extra_buffers():
    hang = cpu_probe.run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert not hang.extra_buffers and "did not finish" in hang.reason
    fail = cpu_probe.run_probe([sys.executable, "-c", "import sys; sys.exit('no luck')"])
    assert not fail.extra_buffers and "exit 1" in fail.reason and "no luck" in fail.reason
    ok = cpu_probe.run_probe([sys.executable, "-c", f"print({cpu_probe.OK_LINE!r})"])
    assert ok.extra_buffers


def test_verdict_is_cached_per_machine_and_forced_by_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cpu_probe.ENV_FORCE, raising=False)
    first = cpu_probe.extra_buffers_verdict()
    assert first.probed
    cached = json.loads((tmp_path / cpu_probe.VERDICT_FILE).read_text())
    assert list(cached) == [cpu_probe.machine_key()]
    assert cached[cpu_probe.machine_key()]["extra_buffers"] == first.extra_buffers
    again = cpu_probe.extra_buffers_verdict()
    assert not again.probed and again.extra_buffers == first.extra_buffers
    monkeypatch.setenv(cpu_probe.ENV_FORCE, "0")
    assert cpu_probe.extra_buffers_verdict().extra_buffers is False


def test_cli_falls_back_with_one_line_when_the_probe_dies(tmp_path, swiglu, question_wav):
    """A fresh cache and a probe child that kills itself with SIGILL: `llasm ask` still answers,
    after one line on stderr that says why, and the next run is quiet."""
    env = os.environ | {"LLASM_CACHE_DIR": str(tmp_path), cpu_probe.ENV_FAULT: "SIGILL"}
    env.pop(cpu_probe.ENV_FORCE, None)
    args = ("ask", str(question_wav), "-m", str(swiglu[1]), "--max-tokens", "4", "--json")
    res = run_llasm(*args, env=env)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "off" in lines[0] and "SIGILL" in lines[0], res.stderr
    assert json.loads(res.stdout)["answer"] is not None
    verdict = json.loads((tmp_path / cpu_probe.VERDICT_FILE).read_text())
    assert [v["extra_buffers"] for v in verdict.values()] == [False]
    quiet = run_llasm(*args, env=env)
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
    loud = run_llasm("--verbose", *args, env=env)
    assert "extra CPU buffer types (AMX, repacked weights) off" in loud.stderr


def test_native_log_is_quiet_unless_verbose(swiglu, question_wav):
    quiet = run_llasm("ask", str(question_wav), "-m", str(swiglu[1]), "--max-tokens", "2")
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
    loud = run_llasm("--verbose", "ask", str(question_wav), "-m", str(swiglu[1]), "--max-tokens", "2")
    assert loud.returncode == 0 and "llama_model_loader" in loud.stderr


def test_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLASM_THREADS", "3")
    assert native.default_threads() == 3
    monkeypatch.setenv("LLASM_THREADS", "lots")
    assert 1 <= native.default_threads() <= 8


@pytest.mark.parametrize("forced", ["1", "0"])
def test_model_params_follow_the_verdict(monkeypatch, forced):
    monkeypatch.setenv(cpu_probe.ENV_FORCE, forced)
    monkeypatch.setattr(native, "_extra_buffers", None)
    assert native.model_params().use_extra_bufts is (forced == "1")
