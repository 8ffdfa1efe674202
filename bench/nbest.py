"""Whisper's n-best told apart by the LLM: how often the transcript is word for word right, and its WER.

Why audio/ears.py widens its beam to NBEST and lets the LLM choose (LLM_WEIGHT, MAX_WORDS_APART). Two clip sets
that differ in voices: bench/ears.py's 150 (eleven offline voices, the default model's table) and
bench/transcribe.py's 180 (mostly espeak-ng), each clean, through a telephone band and with noise at 15 dB SNR.
Each clip is heard once as the default model hears it (the packaged whisper-base in CTranslate2, the quiz prompt,
the unpadded clip + 1 s of silence), Whisper's NBEST hypotheses kept with their log-probabilities (repeats cut);
SmolLM2-135M-Instruct scores each as the user's turn (llm/scorer.py). Rows: Whisper's best; the ears' own choice
(its weight, no hypothesis far longer or shorter than the best, nor the best cut short); the oracle (the best of
the n-best, what no rule can beat); the LLM's choice at several weights, with and without the length guard.

    python bench/nbest.py [--limit N]        # N clips of each set (default: all)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/nbest.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.scoring import word_errors  # noqa: E402
from bench.transcribe import words  # noqa: E402

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)


def clip_sets(limit: int | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """(text said, 16 kHz audio) per clip, for each set."""
    from bench import ears, transcribe
    from llasm_cli.audio.decode import load_audio

    folder, rows = transcribe.clips()
    return {"bench/ears.py": [(c["text"], c["audio"]) for c in ears.clips(None)][:limit],
            "bench/transcribe.py": [(r["text"], load_audio(folder / r["file"])) for r in rows][:limit]}


def hypotheses(bot, audio: np.ndarray) -> list[dict]:
    """Whisper's n-best of one clip as the ears search it, each with its texts' log-probabilities."""
    from llasm_cli.audio import ears as E
    from llasm_cli.audio.transcribe import clip_mel, max_tokens

    ears = bot.tower.ears
    mel = clip_mel(audio, E.INPUT_MODE, ears.n_mels)
    encoded = ears.encoder.encode(ears._ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
    limit = max_tokens(audio.size / E.SAMPLE_RATE)
    got = ears.model.generate(encoded, [ears.prompted], beam_size=E.NBEST, num_hypotheses=E.NBEST,
                              max_length=len(ears.prompted) + limit + 1, return_scores=True)[0]
    hyps = [ears._trimmed(seq, [], limit) + (float(mean) * (len(seq) + 1),)
            for seq, mean in zip(got.sequences_ids, got.scores)]
    texts = [ears.text(ids) for ids, _, _ in hyps]
    llm = bot.tower.scorer.score([bot.tower.words(t) for t in texts])
    return [{"ids": ids, "text": t, "whisper": w, "llm": q} for t, (ids, _, w), q in zip(texts, hyps, llm)]


def shipped(bot, hyps: list[dict]) -> dict:
    """The hypothesis audio/ears.py chooses (its rule, its weight), from the scores already computed."""
    ears = bot.tower.ears
    table = {h["text"]: h["llm"] for h in hyps}
    saved, ears.rescore = ears.rescore, lambda texts: [table[t] for t in texts]
    try:
        return hyps[ears._choose([], [(h["ids"], "eot", h["whisper"]) for h in hyps])]
    finally:
        ears.rescore = saved


def choose(hyps: list[dict], weight: float, apart: int | None) -> dict:
    n = len(words(hyps[0]["text"]))
    pool = [h for h in hyps if apart is None or abs(len(words(h["text"])) - n) <= apart]
    return max(pool, key=lambda h: h["whisper"] + weight * h["llm"])


def measure(limit: int | None) -> dict:
    from llasm_cli.assistant import Assistant
    from llasm_cli.audio.ears import MAX_WORDS_APART
    from llasm_cli.formats.built_in import default_bundle_path

    bot = Assistant(default_bundle_path(), n_ctx=512, n_threads=2)
    out = {}
    try:
        for name, items in clip_sets(limit).items():
            heard = [(said, hypotheses(bot, audio)) for said, audio in items]
            rules = {"Whisper's best": lambda h: h[0], "as shipped (audio/ears.py)": lambda h: shipped(bot, h),
                     "oracle (the best of the n-best)": lambda h: min(h, key=lambda x: x["err"])}
            for w in WEIGHTS:
                rules[f"LLM chooses, weight {w}"] = lambda h, w=w: choose(h, w, None)
                rules[f"LLM chooses, weight {w}, at most {MAX_WORDS_APART} words apart"] = (
                    lambda h, w=w: choose(h, w, MAX_WORDS_APART))
            for said, hyps in heard:
                for h in hyps:
                    h["err"] = word_errors(words(said), words(h["text"]))
            total = sum(len(words(said)) for said, _ in heard)
            out[name] = {rule: {"right": sum(pick(h)["err"] == 0 for _, h in heard),
                                "wer": sum(pick(h)["err"] for _, h in heard) / max(total, 1)}
                         for rule, pick in rules.items()} | {"clips": len(heard)}
    finally:
        bot.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="the first N clips of each set")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args(argv)
    result = measure(a.limit)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    sets = list(result)
    print("| rule | " + " | ".join(f"{s}: right of {result[s]['clips']} | WER" for s in sets) + " |")
    print("|---|" + "---:|---:|" * len(sets))
    for rule in (r for r in result[sets[0]] if r != "clips"):
        cells = " | ".join(f"{result[s][rule]['right']} | {100 * result[s][rule]['wer']:.1f}%" for s in sets)
        print(f"| {rule} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
