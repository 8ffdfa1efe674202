"""Plain helpers the test modules share; fixtures stay in conftest.py, where pytest finds them.

The CLI as a subprocess and in a pseudo-terminal, real speech from espeak-ng, where a signal's speech
is, the endpointer's turns, and a chunked copy of a tiny bundle.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest

from llasm_cli.audio.endpoint import Event, SpeechEnd, SpeechStart
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle

CHUNK, CONTEXT = 0.5, 1.0  # seconds; whole multiples of the tiny tower's 0.1 s per embedding

# --- the CLI -------------------------------------------------------------------------------------


def run_llasm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llasm_cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def assert_clean_error(res: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Exit code as documented (not a signal), exactly one line on stderr, no traceback."""
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def spawn(bundle, *args: str, env=None, timeout: float = 60) -> pexpect.spawn:
    """``llasm chat`` on ``bundle`` in a pseudo-terminal (greedy, with --stats)."""
    cmd = [sys.executable, "-m", "llasm_cli", "chat", "-m", str(bundle), "--stats", "--temperature", "0", *args]
    # codec_errors: Ctrl-C can land between the bytes of one character
    return pexpect.spawn(
        cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace", timeout=timeout, dimensions=(50, 160), env=env
    )


def finish(child: pexpect.spawn) -> None:
    child.expect("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def screen(log: Path, chars: int = 4000) -> str:
    """The end of what a chat printed (a pexpect log): colours dropped, each run of meter refreshes as its last
    line. What a timed-out test shows, so that a failure in CI says what the chat did."""
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", Path(log).read_text(errors="replace"))
    lines: list[str] = []
    for line in (line.strip() for line in re.split(r"[\r\n]+", text)):
        if not line:
            continue
        if lines and line[:1] == lines[-1][:1] == "●":
            lines[-1] = line
        else:
            lines.append(line)
    return "\n".join(lines)[-chars:]


# --- speech --------------------------------------------------------------------------------------


def espeak(text: str, path: Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> Path:
    """Speak ``text`` into a wav file with espeak-ng (real speech, 22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng (.ci/run does this)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True, capture_output=True,
    )
    return path


def speech_of_length(base: np.ndarray, seconds: float) -> np.ndarray:
    """Real speech tiled (with short gaps) to exactly ``seconds`` at 16 kHz."""
    gap = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)
    unit = np.concatenate([base, gap])
    n = int(round(seconds * SAMPLE_RATE))
    return np.resize(unit, n).astype(np.float32)


def speech_bounds(x: np.ndarray, rate: int = SAMPLE_RATE, below_peak_db: float = 35.0) -> tuple[float, float]:
    """(first, last) second where 10 ms frames carry energy within below_peak_db of the peak."""
    hop = rate // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    active = np.flatnonzero(db > db.max() - below_peak_db)
    return active[0] / 100, (active[-1] + 1) / 100


def turns(events: list[Event]) -> list[tuple[float, SpeechEnd]]:
    """Pair each SpeechStart with its SpeechEnd, checking they alternate."""
    out, start = [], None
    for ev in events:
        if isinstance(ev, SpeechStart):
            assert start is None, f"two starts in a row: {events}"
            start = ev.t
        else:
            assert start is not None, f"end without start: {events}"
            assert ev.t > start
            out.append((start, ev))
            start = None
    assert start is None, f"turn left open: {events}"
    return out


# --- bundles -------------------------------------------------------------------------------------


def chunked_bundle(src, dest, boundary: str):
    """A copy of an exported tiny bundle whose manifest runs the chunked input mode (torch tower, CHUNK s
    behind CONTEXT s), with vocabulary-token or learned-row audio boundaries."""
    shutil.copytree(src, dest)
    m = load_bundle(dest).manifest
    for f in m.tower_files.values():
        (dest / f).unlink()  # the mmproj pads to 30 s: no chunked encoding there
    m = dataclasses.replace(m, encoder_input=["chunked"], chunk_seconds=CHUNK, context_seconds=CONTEXT, tower_files={})
    if boundary == "embeddings":
        rows = np.random.default_rng(7).normal(0.0, 0.2, (2, m.llm_dim)).astype(np.float32)
        np.save(dest / "audio-boundary.npy", rows)
        m = dataclasses.replace(m, boundary="embeddings", boundary_file="audio-boundary.npy")
    (dest / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
    return dest


# --- a second LLM architecture ---------------------------------------------------------------------


def tiny_gemma3_gguf(llm_dir: Path, out: Path, n_embd: int = 64, n_layer: int = 2, seed: int = 0) -> Path:
    """A random Gemma 3 GGUF (llama.cpp's ``gemma3`` graph: q/k norms, post-norms, and token embeddings scaled by
    sqrt(n_embd) inside the graph) with the vocabulary of a tiny checkpoint's LLM folder: a second architecture
    for the paths that feed embedding rows in place of tokens."""
    import json

    import gguf
    from llasm_export.llm_gguf import read_vocab

    from llasm_cli.files import write_gguf

    n_vocab = json.loads((llm_dir / "config.json").read_text())["vocab_size"]
    tokens, scores, types = read_vocab(llm_dir, n_vocab)
    n_head, n_head_kv, head_dim, n_ff = 4, 2, 16, 2 * n_embd
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    w.add_name("tiny gemma3")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(64)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    T = gguf.MODEL_TENSOR

    def add(kind, shape, bid=None, scale=0.2):
        name = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    add(T.TOKEN_EMBD, (n_vocab, n_embd), scale=0.05)  # small: the graph multiplies them by sqrt(n_embd)
    add(T.OUTPUT_NORM, (n_embd,))
    for b in range(n_layer):
        for kind in (T.ATTN_NORM, T.ATTN_POST_NORM, T.FFN_NORM, T.FFN_POST_NORM):
            add(kind, (n_embd,), b)
        add(T.ATTN_Q_NORM, (head_dim,), b)
        add(T.ATTN_K_NORM, (head_dim,), b)
        add(T.ATTN_Q, (n_head * head_dim, n_embd), b)
        add(T.ATTN_K, (n_head_kv * head_dim, n_embd), b)
        add(T.ATTN_V, (n_head_kv * head_dim, n_embd), b)
        add(T.ATTN_OUT, (n_embd, n_head * head_dim), b)
        add(T.FFN_GATE, (n_ff, n_embd), b)
        add(T.FFN_UP, (n_ff, n_embd), b)
        add(T.FFN_DOWN, (n_embd, n_ff), b)
    write_gguf(w, out)
    return out
