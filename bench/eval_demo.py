"""The demo model on held-out voices when the audio gets worse than espeak's clean output.

    python bench/eval_demo.py [--model DIR] [--questions 60] [--repeats 20] [--backends ggml,onnx,torch]

DIR defaults to the bundle `python -m llasm_finetune.demo` writes (~/.cache/llasm/demo-run/bundle) where one
exists, else the packaged demo model (llasm_cli/models/demo).

Speaks fresh questions in espeak-ng voices, variants, speeds and pitches that training never used
(`finetune/demo_tasks.py`), then asks the bundle (as `llasm ask` does) about clean, noisy (20 and
10 dB SNR, white or pink) and telephone-band (8 kHz, 300-3400 Hz) copies of the same clips.
Prints exact-match accuracy per condition and tower backend. The noise and telephone copies are
made by `finetune/augment.py`, as the demo's degraded training clips are, but at fixed levels.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from llasm_finetune import demo_tasks as T
from llasm_finetune.augment import add_noise, phone_band
from llasm_finetune.demo import SEED, accuracy, synthesise

from llasm_cli.files import atomic_write_text

CONDITIONS = ("clean", "noise 20 dB", "noise 10 dB", "telephone")


def questions(n_sums: int, n_repeats: int) -> list[dict]:
    """Held-out items: sums (every third with "answer in Chinese") and "repeat after me" sentences."""
    rng = random.Random(SEED + 2)  # not the training script's held-out set: new clips, same voice pool
    items = []
    for i, (a, op, b) in enumerate(rng.sample(T.problems(), n_sums)):
        zh = i % 3 == 0
        items.append({"kind": "chinese" if zh else "english", "text": T.ZH_INSTRUCTION if zh else None,
                      "spoken": T.question(a, op, b, rng.randrange(len(T.QUESTION_FORMS))),
                      "answer": T.answer(a, op, b, chinese=zh), "tts": T.voice(rng, held_out=True)})
    for s in rng.sample(T.sentences(), n_repeats):
        items.append({"kind": "repeat", "text": None, "spoken": f"repeat after me: {s}", "answer": s,
                      "tts": T.voice(rng, held_out=True)})
    return items


def condition(x, name: str, seed: int):
    """The clean clip as heard under ``name`` (16 kHz float samples in, same out)."""
    from llasm_cli.audio.geometry import SAMPLE_RATE

    if name == "clean":
        return x
    if name == "telephone":
        return phone_band(x, SAMPLE_RATE)
    snr = float(name.split()[1])
    return add_noise(x, snr, pink=seed % 2 == 0, seed=seed)


def run(model: Path, items: list[dict], backends: list[str]) -> dict:
    from llasm_cli.assistant import Assistant
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import answer, answer_streamed
    from llasm_cli.llm.engine import Sampling

    with tempfile.TemporaryDirectory() as tmp:
        synthesise(Path(tmp), [it | {"audio": f"{i}.wav"} for i, it in enumerate(items)])
        clips = [load_audio(Path(tmp) / f"{i}.wav") for i in range(len(items))]
    heard = {cond: [condition(x, cond, seed=i) for i, x in enumerate(clips)] for cond in CONDITIONS}
    kinds = [it["kind"] for it in items]
    report: dict = {"model": str(model), "n": len(items)}
    columns = []
    for backend in backends:
        bot = Assistant(model, backend=backend)
        try:  # whole clips (a file), and for a chunked model the same clips streamed as a microphone delivers them
            ways = {backend: answer} | ({f"{backend} streamed": answer_streamed} if bot.tower.chunked else {})
            for column, ask in ways.items():
                columns.append(column)
                for cond in CONDITIONS:
                    right = []
                    for it, audio in zip(items, heard[cond]):
                        out = ask(bot, audio, text=it["text"], sampling=Sampling(temperature=0), max_tokens=24)
                        right.append(out == it["answer"])
                        print(".", end="", file=sys.stderr, flush=True)
                    report.setdefault(cond, {})[column] = accuracy(kinds, right)
                    print(f" {column} {cond}: {report[cond][column]['accuracy']}%", file=sys.stderr)
        finally:
            bot.close()
    report["columns"] = columns
    return report


def table(report: dict) -> str:
    columns = report["columns"]
    rows = ["| condition | " + " | ".join(f"{c} %" for c in columns) + " |",
            "|---|" + "---:|" * len(columns)]
    for cond in CONDITIONS:
        rows.append(f"| {cond} | " + " | ".join(f"{report[cond][c]['accuracy']:.1f}" for c in columns) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the demo recipe's own bundle where it exists, else the packaged demo model)")
    p.add_argument("--questions", type=int, default=60, help="spoken sums (a third with 'answer in Chinese')")
    p.add_argument("--repeats", type=int, default=20, help="'repeat after me' sentences")
    p.add_argument("--backends", default=None,
                   help="tower backends, comma-separated (default: each that can run the model here)")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = p.parse_args()
    from llasm_finetune.demo import ROOT_DEFAULT

    from llasm_cli.formats.built_in import demo_bundle_path
    from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle

    trained = ROOT_DEFAULT / "bundle"
    model = a.model or (trained if (trained / MANIFEST_FILE).is_file() else demo_bundle_path())
    if not (model / MANIFEST_FILE).is_file():
        raise SystemExit(f"no demo bundle in {model}: train one (python -m llasm_finetune.demo) or pass --model DIR")
    from llasm_cli.towers import candidates

    backends = [b.strip() for b in a.backends.split(",") if b.strip()] if a.backends else candidates(load_bundle(model))
    report = run(model, questions(a.questions, a.repeats), backends)
    print(f"held-out voices, {report['n']} questions, exact match:\n")
    print(table(report))
    if a.json:
        atomic_write_text(a.json, json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
