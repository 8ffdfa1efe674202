"""May ggml use its extra CPU buffer types here? Asked of a child process, answered once per machine.

ggml moves quantized weights into "extra" buffer types when it loads a model on the CPU: AMX
tiles on Intel Xeons that have them, repacked Q4_0/Q8_0 layouts for AVX2/NEON kernels. They
are faster where they work, but on some AMX machines the first ``llama_decode`` dies with
SIGILL inside ``ggml_backend_amx_mul_mat``, and no Python code can catch that. So a child
process loads a tiny model built here (Q8_0 and Q4_0 weights, shaped so that both AMX and
the repack kernels take them) with the extra buffers on and decodes once. If it answers,
they are safe; if it dies by a signal, hangs or fails, llasm runs without them. The verdict
is cached per CPU model, CPU flags and llama.cpp build, so only the first command pays for it.

``python -m llasm_cli.llm.cpu_probe MODEL.gguf`` is the child's side.
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llasm_cli.files import cache_dir, read_json, write_json_best_effort

PROBE_VERSION = 1
PROBE_TIMEOUT_S = 120.0
ENV_FORCE = "LLASM_EXTRA_BUFFERS"  # "1"/"0": skip the probe and use (or not) the extra buffers
ENV_FAULT = "LLASM_PROBE_FAULT"  # a signal name the child raises on itself: tests of the fallback
VERDICT_FILE = "cpu-probe.json"
OK_LINE = "llasm-probe-ok"

# The probe model: one layer, shapes that are multiples of 32 (AMX tile rows/columns) and of 8
# (repack interleaving), so every quantized matmul is eligible for an extra buffer type.
N_EMBD, N_FF, N_HEAD, N_VOCAB = 64, 128, 2, 288


@dataclass
class Verdict:
    """Whether the extra buffer types are used, and why, as recorded in the cache."""

    extra_buffers: bool
    reason: str
    probed: bool = False  # True when this process ran the probe (the reason is then news)


def machine_key() -> str:
    """CPU model + flags + llama.cpp build: what the verdict depends on."""
    import llama_cpp

    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name == "model name" and cpu in ("", platform.processor()):
                cpu = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    lib = Path(llama_cpp.__file__).parent / "lib"
    builds = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in lib.glob("*.so*")) if lib.is_dir() else []
    parts = [str(PROBE_VERSION), platform.machine(), cpu, flags, llama_cpp.__version__, repr(builds)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] + " " + (cpu or platform.machine())


def extra_buffers_verdict(command: list[str] | None = None, use_cache: bool = True) -> Verdict:
    """The cached verdict for this machine, probing (in a child process) when there is none."""
    forced = os.environ.get(ENV_FORCE, "").strip().lower()
    if forced in ("0", "1", "no", "yes", "off", "on", "false", "true"):
        on = forced in ("1", "yes", "on", "true")
        return Verdict(on, f"{ENV_FORCE}={forced}")
    key = machine_key()
    path = cache_dir() / VERDICT_FILE
    cached = read_json(path) if use_cache else {}
    if key in cached and command is None:
        entry = cached[key]
        return Verdict(bool(entry["extra_buffers"]), str(entry["reason"]))
    verdict = run_probe(command)
    if command is None and use_cache:
        cached[key] = asdict(verdict) | {"when": time.strftime("%Y-%m-%d %H:%M:%S")}
        cached[key].pop("probed", None)
        write_json_best_effort(path, cached)
    return verdict


def run_probe(command: list[str] | None = None, timeout: float = PROBE_TIMEOUT_S) -> Verdict:
    """Run the child (by default: this module on a freshly written probe model) and judge its exit."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llasm-probe-") as tmp:
        if command is None:
            model = Path(tmp) / "probe.gguf"
            write_probe_model(model)
            command = [sys.executable, "-m", "llasm_cli.llm.cpu_probe", str(model)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Verdict(False, f"a test decode with them did not finish in {timeout:.0f} s", probed=True)
        except OSError as exc:
            return Verdict(False, f"the test process could not start ({exc})", probed=True)
    if done.returncode == 0 and OK_LINE in done.stdout:
        return Verdict(True, "a test decode with them succeeded", probed=True)
    if done.returncode < 0:
        name = _signal_name(-done.returncode)
        return Verdict(False, f"a test decode with them died with {name}", probed=True)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return Verdict(False, f"a test decode with them failed (exit {done.returncode}: {tail})", probed=True)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def write_probe_model(path: Path) -> Path:
    """The probe's model: one small layer with Q8_0 and Q4_0 weights."""
    return write_random_llama(path, N_EMBD, N_FF, 1, N_HEAD, N_VOCAB)


def write_random_llama(path: Path, n_embd: int, n_ff: int, n_layer: int, n_head: int, n_vocab: int,
                       seed: int = 0) -> Path:
    """A random-weight llama GGUF with Q8_0 and Q4_0 matrices and a byte-level SentencePiece
    vocabulary: enough for llama.cpp to load and decode it (probes and speed benchmarks)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (n_vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name: str, shape: tuple[int, ...], qtype=None) -> None:
        data = (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(np.float32)
        if qtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    names, t = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    add(names[t.TOKEN_EMBD] + ".weight", (n_vocab, n_embd), q8)
    add(names[t.OUTPUT_NORM] + ".weight", (n_embd,))
    add(names[t.OUTPUT] + ".weight", (n_vocab, n_embd), q8)
    blk = {t.ATTN_NORM: ((n_embd,), None), t.ATTN_Q: ((n_embd, n_embd), q8), t.ATTN_K: ((n_embd, n_embd), q4),
           t.ATTN_V: ((n_embd, n_embd), q8), t.ATTN_OUT: ((n_embd, n_embd), q4), t.FFN_NORM: ((n_embd,), None),
           t.FFN_GATE: ((n_ff, n_embd), q4), t.FFN_UP: ((n_ff, n_embd), q8), t.FFN_DOWN: ((n_embd, n_ff), q4)}
    for i in range(n_layer):
        for kind, (shape, qtype) in blk.items():
            add(names[kind].format(bid=i) + ".weight", shape, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def open_bare(model: str, extra_buffers: bool, n_ctx: int, n_batch: int, threads: int):
    """(model, context) loaded by llama.cpp alone, its log kept quiet, the extra buffers as asked:
    what the probe child and the extra-buffer benchmark measure. None where loading failed."""
    import llama_cpp

    from llasm_cli.llm import native

    native.init()
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = extra_buffers
    m = llama_cpp.llama_model_load_from_file(model.encode(), params)
    if not m:
        return None
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_batch
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(m, cparams)
    return (m, ctx) if ctx else None


def child(model: str) -> int:
    """Load ``model`` with the extra buffer types and decode a batch, then one token; check the logits."""
    import llama_cpp

    opened = open_bare(model, True, n_ctx=64, n_batch=32, threads=2)
    if opened is None:
        print("the probe model did not load", file=sys.stderr)
        return 3
    _, ctx = opened
    fault = os.environ.get(ENV_FAULT)
    if fault:
        os.kill(os.getpid(), getattr(signal, fault))
    batch = llama_cpp.llama_batch_init(32, 0, 1)
    for n_tokens, start in ((32, 0), (1, 32)):  # a prompt-sized batch, then a single-token step
        for i in range(n_tokens):
            batch.token[i] = 3 + (start + i) % (N_VOCAB - 3)
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n_tokens - 1
        batch.n_tokens = n_tokens
        if llama_cpp.llama_decode(ctx, batch) != 0:
            print("llama_decode failed", file=sys.stderr)
            return 4
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(N_VOCAB,))
        if not np.isfinite(logits).all():
            print("non-finite logits", file=sys.stderr)
            return 5
    print(OK_LINE)
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1]))
