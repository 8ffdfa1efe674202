"""The stack factor's accuracy side: 10 against 5 audio positions per second on the demo model.

    python -m llasm_finetune.demo --streaming --continue-from llasm_cli/models/demo --workdir W
    python -m bench.stack_factor --workdir W [--items 6000] [--steps 800] [--jobs 2]

Halving the positions halves a whole clip's prefill (bench/RESULTS.md has the latency side on a
~1B LLM); this measures what it costs the model. Two arms start from the same trained checkpoint
(W/stage2/final, the built-in model's recipe: stack factor 5, 0.5 s chunks behind 1 s of context)
and get the same stage-2 steps on the same subset of W's spoken instructions:

  - k5:  the checkpoint as it is (the control: more training alone);
  - k10: the same checkpoint with its adaptor widened to 10 stacked frames (each new position starts
    as the mean of the two old ones it covers) and 0.6 s chunks behind 1 s of context (a chunk must
    be whole 0.2 s positions).

Both are scored like the demo: greedy exact match on W/eval.json's held-out voices, each clip whole
(unpadded) and chunk by chunk as the microphone streams it. The frozen features of the new chunking
are computed up front by ``--jobs`` processes into W/features (the demo's cache: reruns are cheap).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from llasm_finetune import demo

from llasm_cli.files import atomic_folder, atomic_write_text

ARMS = {"k10": (10, 0.6), "k5": (5, 0.5)}  # stack factor, chunk seconds (context stays 1 s)


def widen(ckpt: Path, out: Path, stack_factor: int, chunk_seconds: float) -> Path:
    """A copy of ``ckpt`` whose adaptor stacks ``stack_factor`` frames, a whole multiple of its own: the
    first Linear sees each old position's frames side by side and starts as their mean."""
    import torch
    from safetensors.torch import load_file, save_file

    from llasm_cli.model import ADAPTOR_FILE, LLM_DIR, META_FILE, WHISPER_DIR

    if (out / META_FILE).exists():
        return out
    meta = json.loads((ckpt / META_FILE).read_text())
    times, rem = divmod(stack_factor, meta["adaptor"]["stack_factor"])
    if rem:
        raise SystemExit(f"stack factor {stack_factor} is not a multiple of {meta['adaptor']['stack_factor']}")
    w = load_file(str(ckpt / ADAPTOR_FILE))
    w["norm_pre.weight"] = w["norm_pre.weight"].repeat(times)
    w["linear_1.weight"] = torch.cat([w["linear_1.weight"] / times] * times, dim=1)
    meta["adaptor"] |= {"stack_factor": stack_factor, "chunk_seconds": chunk_seconds}
    with atomic_folder(out) as tmp:
        for part in (LLM_DIR, WHISPER_DIR):
            shutil.copytree(ckpt / part, tmp / part)
        save_file({k: v.contiguous() for k, v in w.items()}, str(tmp / ADAPTOR_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def subset(root: Path, n: int, out: Path) -> Path:
    """``n`` of the demo's spoken instructions, the same for both arms, clip paths made absolute."""
    if out.exists():
        return out
    convs = json.loads((root / "stage2.json").read_text())
    picked = random.Random(demo.SEED).sample(convs, min(n, len(convs)))
    for c in picked:
        for turn in c["conversations"]:
            if "audio" in turn:
                turn["audio"] = str((root / turn["audio"]).resolve())
    atomic_write_text(out, json.dumps(picked, ensure_ascii=False))
    return out


def _warm(args: tuple[str, str, str, list[str]]) -> int:
    """One worker: compute (and cache) the frozen features of ``paths`` in ``mode``."""
    import torch
    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import FeatureStore

    torch.set_num_threads(1)
    ckpt, cache, mode, paths = args
    model, _, _ = load_checkpoint(Path(ckpt))
    store = FeatureStore(model.tower, mode, cache, demo.feature_dtype())
    for p in paths:
        store.get(p)
        store.mem.clear()
    return len(paths)


def warm_features(root: Path, ckpt: Path, data: Path, jobs: int) -> None:
    """Every clip the arm's stage 2 will read, encoded up front by ``jobs`` processes of one thread."""
    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import DialogueDataset, FeatureStore
    from llasm_finetune.train import TrainConfig, load_samples

    from llasm_cli.prompt import DEFAULT_TEMPLATE

    inputs, shares = demo.INPUTS["streaming"]
    model, tok, _ = load_checkpoint(ckpt)
    cfg = TrainConfig(stage=2, init=str(ckpt), data=str(data), out="")
    stores = [FeatureStore(model.tower, m, root / "features", demo.feature_dtype()) for m in inputs]
    ds = DialogueDataset(load_samples(cfg, str(data)), tok, tok.chat_template or DEFAULT_TEMPLATE,
                         (model.audio_start_id, model.audio_end_id), stores, "", 2048, list(shares))
    work = [(st.mode, p) for st, p in ds.clips()]
    t0 = time.time()
    tasks = [(str(ckpt), str(root / "features"), mode, [p for m, p in work[i::jobs] if m == mode])
             for i in range(jobs) for mode in inputs]
    with ProcessPoolExecutor(jobs) as pool:
        done = sum(pool.map(_warm, tasks))
    demo.log(f"features: {done} clips in {time.time() - t0:.0f} s")


def score(ckpt: Path, items) -> dict[str, dict]:
    """Held-out exact match per encoder input (unpadded = a file, chunked = the microphone's stream)."""
    return {mode: demo.score_answers(items, answers) for mode, answers in demo.torch_greedy(ckpt, items).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=demo.ROOT_DEFAULT, help="a finished demo --streaming run")
    p.add_argument("--items", type=int, default=6000, help="spoken instructions both arms train on")
    p.add_argument("--steps", type=int, default=800, help="stage-2 steps per arm")
    p.add_argument("--jobs", type=int, default=2, help="processes computing the new chunking's features")
    a = p.parse_args()
    root = a.workdir.resolve()
    start = root / "stage2" / "final"
    if not (start / "llasm.json").exists():
        raise SystemExit(f"{start} is missing: run `python -m llasm_finetune.demo --streaming ...` there first")
    work = root / "stack"
    data = subset(root, a.items, work / f"stage2-{a.items}.json")
    items = demo.eval_items(root)
    report: dict = {"items": a.items, "steps": a.steps}
    inputs, shares = demo.INPUTS["streaming"]
    for arm, (k, chunk) in ARMS.items():
        init = start if k == 5 else widen(start, work / f"{arm}-init", k, chunk)
        warm_features(root, init, data, a.jobs)
        final = demo.run_stage2(root, init, inputs, shares, name=f"stack/{arm}", data=data, steps=a.steps,
                                **demo.CONTINUE_LR)  # as the built-in model's --continue-from run
        report[arm] = score(final, items)
        demo.log(f"{arm}: {report[arm]}")
    report["start"] = score(start, items)
    demo.log(f"start (stack 5, no more training): {report['start']}")
    atomic_write_text(work / "report.json", json.dumps(report, indent=2))
    print(f"\nheld-out voices, {len(items)} items, greedy exact match (%), {a.steps} stage-2 steps on {a.items} items:\n")
    print("| model | positions/s | whole clip | streamed |")
    print("|---|---:|---:|---:|")
    for name, k in (("start", 5), ("k5", 5), ("k10", 10)):
        r = report[name]
        print(f"| {name} | {50 // k} | {r['unpadded']['accuracy']} | {r['chunked']['accuracy']} |")


if __name__ == "__main__":
    main()
