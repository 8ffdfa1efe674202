"""Does the default model hear? Spoken questions answered as the same questions typed, with Whisper's ears.

Issue #31's table. Questions: the recipe's facts with known answers (finetune/distill_data.FACTS), capitals,
and open requests (tips, explanations, poems) -- none of them ever trained on: the transcript bridge is
untrained. Voices: every offline engine installed (hibari, SVOX Pico en-US/en-GB, flite slt/rms/awb/kal,
Piper joe, Kokoro, espeak-ng en-us/en-gb-scotland), one per question in turn; each clip clean, through a
telephone band (8 kHz, 300-3400 Hz) and with white noise at 15 dB SNR.

Rows, all greedy, the same LLM (``--llm``: the default SmolLM2-135M-Instruct, or Gemma 3 270M base):

- ``typed``: the question typed (the ceiling);
- ``cascade``: faster-whisper (the packaged whisper-base, int8, greedy, no prompt: what a cascade runs) ->
  its transcript typed;
- ``bridge``: the bundle (Assistant + its transcript tower: what ``llasm ask`` runs), Whisper's words as
  the LLM's own input rows.

Columns: spoken answer = typed answer (the first sentence, case and punctuation aside); facts answered right
(a known answer in the first 24 tokens) spoken and typed; the transcript's word error rate; the median time
to hear a clip (ears or faster-whisper) and its ratio to faster-whisper's, clip by clip.

    python bench/ears.py [--limit N] [--llm smollm2|gemma|PATH.gguf] [--json OUT]
    python bench/ears.py --variants      # the ears' choices: no prompt, beam 3, Whisper's padded 30 s window

``--variants`` runs the bridge alone once per way of hearing (audio/ears.py's prompt, beam width and input
mode changed on the loaded tower) against the typed answers, to show why the shipped choices are what they are.

Needs the bench extra (faster-whisper; Gemma 3 270M for --llm gemma) and the voices extra where installed.
Clips are cached in the bench folder (bench/assets.bench_root).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/ears.py` from anywhere
    sys.path.insert(0, str(ROOT))

from llasm_finetune.augment import add_noise, phone_band  # noqa: E402
from llasm_finetune.distill_data import CAPITALS, FACTS, TASKS, TOPICS  # noqa: E402

from bench.assets import bench_root, whisper_base_ct2  # noqa: E402
from bench.scoring import word_errors  # noqa: E402
from bench.transcribe import words  # noqa: E402
from llasm_cli.audio.geometry import SAMPLE_RATE  # noqa: E402

THREADS = 2
ANSWER_TOKENS = 24
NOISE_SNR = 15.0
CONDITIONS = ("clean", "phone", "noise")
CLIPS_VERSION = "v1"
VOICES = ("hibari:heart", "pico:en-US", "flite:slt", "pico:en-GB", "flite:rms", "piper:joe", "flite:awb",
          "kokoro:jf_alpha", "espeak-ng:en-us", "flite:kal", "espeak-ng:en-gb-scotland")
CAPITAL_QUESTIONS = 12
OPEN_QUESTIONS = 18


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def questions() -> list[dict]:
    """Facts (with accepted answers), capitals, and open requests; fixed order and choice."""
    rng = random.Random(31)
    out = [{"text": q, "answers": a} for q, a in FACTS]
    for country in rng.sample(sorted(CAPITALS), CAPITAL_QUESTIONS):
        out.append({"text": f"What is the capital of {country}?", "answers": [CAPITALS[country].lower()]})
    opens = [f"Tell me about {t}." for t in rng.sample(TOPICS, OPEN_QUESTIONS // 2)]
    opens += [f"How do I {t}?" for t in rng.sample(TASKS, OPEN_QUESTIONS - len(opens))]
    return out + [{"text": q, "answers": []} for q in opens]


# --- clips -------------------------------------------------------------------------------------------------


def installed_voices() -> list:
    from llasm_cli.errors import VoiceError
    from llasm_cli.voices import open_voice

    found = []
    for spec in VOICES:
        try:
            found.append(open_voice(spec, THREADS))
        except VoiceError as exc:
            log(f"  voice {spec} left out: {exc}")
    return found


def clips(limit: int | None) -> list[dict]:
    """Each question spoken by the next voice, in three conditions: 16 kHz float32, cached as .npy."""
    import soxr

    folder = bench_root() / f"ears-clips-{CLIPS_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    qs = questions()[:limit]
    voices = None
    out = []
    for i, q in enumerate(qs):
        spec = VOICES[i % len(VOICES)]
        path = folder / f"{i:03d}-{spec.replace(':', '_')}.npy"
        if not path.is_file():
            if voices is None:
                voices = {v.spec: v for v in installed_voices()}
            voice = voices.get(spec) or next(iter(voices.values()))
            x = voice.speak_native(q["text"])
            x = soxr.resample(x, voice.native_rate, SAMPLE_RATE).astype(np.float32)
            pad = np.zeros(SAMPLE_RATE // 4, np.float32)
            np.save(path, np.concatenate([pad, x, pad]))
        x = np.load(path)
        versions = {"clean": x, "phone": phone_band(x, SAMPLE_RATE), "noise": add_noise(x, NOISE_SNR, False, seed=i)}
        for cond in CONDITIONS:
            out.append(q | {"i": i, "voice": spec, "condition": cond, "audio": np.asarray(versions[cond], np.float32)})
    return out


# --- scoring -----------------------------------------------------------------------------------------------


def first_sentence(text: str) -> str:
    head = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    return " ".join(words(head))


def knows(answer: str, accepted: list[str]) -> bool:
    said = " ".join(words(answer))
    return any(a in said for a in accepted)


# --- systems -----------------------------------------------------------------------------------------------


class Runner:
    """One assistant (the bundle) for every row: typed, cascade (faster-whisper's transcript typed), bridge."""

    def __init__(self, llm: str | None) -> None:
        from faster_whisper import WhisperModel

        from llasm_cli.assistant import Assistant
        from llasm_cli.formats.built_in import default_bundle_path, with_llm
        from llasm_cli.formats.bundle import load_bundle

        bundle = load_bundle(default_bundle_path())
        if llm:
            bundle = with_llm(bundle, llm)
        self.bot = Assistant(bundle, n_ctx=1024, n_threads=THREADS)
        self.bot.warmup_tower()
        self.fw = WhisperModel(str(whisper_base_ct2()), device="cpu", compute_type="int8", cpu_threads=THREADS,
                               num_workers=1)

    def answer(self, clip: np.ndarray | None = None, text: str | None = None) -> str:
        from llasm_cli.llm.engine import Sampler, Sampling

        bot = self.bot
        bot.engine.reset()
        logits = bot.engine.eval(bot.prompt(bot.messages(clip, text, None, None)))
        return bot.llm.detokenize(list(bot.engine.generate(logits, Sampler(Sampling(temperature=0.0)), ANSWER_TOKENS)))

    def hear(self, audio: np.ndarray) -> tuple[np.ndarray, str, float]:
        t = time.perf_counter()
        rows = self.bot.tower.encode(audio)
        return rows, self.bot.tower.transcript, 1000 * (time.perf_counter() - t)

    def cascade(self, audio: np.ndarray) -> tuple[str, float]:
        t = time.perf_counter()
        segments, _ = self.fw.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                         without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments)
        return text, 1000 * (time.perf_counter() - t)


def measure(limit: int | None, llm: str | None) -> dict:
    items = clips(limit)
    run = Runner(llm)
    typed = {}
    rows = []
    for n, c in enumerate(items):
        if c["text"] not in typed:
            typed[c["text"]] = run.answer(text=c["text"])
        rows_, heard, ears_ms = run.hear(c["audio"])
        bridge = run.answer(clip=rows_)
        cascade_text, fw_ms = run.cascade(c["audio"])
        cascade = run.answer(text=cascade_text) if cascade_text else ""
        rows.append({k: c[k] for k in ("i", "text", "answers", "voice", "condition")} | {
            "typed": typed[c["text"]], "bridge": bridge, "heard": heard, "cascade": cascade,
            "cascade_heard": cascade_text, "ears_ms": ears_ms, "fw_ms": fw_ms})
        if n % 15 == 0:
            log(f"  {n + 1}/{len(items)} {c['condition']:5s} {c['voice']:22s} heard {heard!r}")
    name = run.bot.bundle.manifest.name
    run.bot.close()
    return {"llm": name, "rows": rows}


VARIANTS = {  # name -> (decoder prompt kept, beam width, input mode, the LLM chooses among Whisper's n-best)
    "shipped: quiz prompt, unpadded + 1 s of silence, 5-best chosen by the LLM": (True, 3, "zeros", True),
    "the same, Whisper's best of beam 3": (True, 3, "zeros", False),
    "greedy": (True, 1, "zeros", False),
    "greedy, no decoder prompt": (False, 1, "zeros", False),
    "greedy, unpadded, no silence after": (True, 1, "unpadded", False),
    "greedy, Whisper's padded 30 s window": (True, 1, "padded", False),
}


def variants(limit: int | None) -> None:
    """The bridge under each of VARIANTS: spoken = typed per condition, facts, WER, median ms to hear."""
    from llasm_cli.audio import ears as ears_module

    items = clips(limit)
    run = Runner(None)
    ears = run.bot.tower.ears
    typed = {c["text"]: run.answer(text=c["text"]) for c in items}
    shipped = (ears.prompted, ears.prompt_ids, ears_module.INPUT_MODE, ears.rescore)
    print("| ears | spoken = typed: clean | phone | noise 15 dB | facts right | WER | ms to hear (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (prompt, beam, mode, llm) in VARIANTS.items():
        ears.prompted = shipped[0] if prompt else ears.start
        ears.prompt_ids = shipped[1] if prompt else []
        ears.beam, ears_module.INPUT_MODE, ears.rescore = beam, mode, shipped[3] if llm else None
        same, facts, errs, n_words, ms = dict.fromkeys(CONDITIONS, 0), 0, 0, 0, []
        for c in items:
            rows, heard, t = run.hear(c["audio"])
            answer = run.answer(clip=rows)
            same[c["condition"]] += first_sentence(answer) == first_sentence(typed[c["text"]])
            facts += knows(answer, c["answers"]) if c["answers"] else 0
            errs += word_errors(words(c["text"]), words(heard))
            n_words += len(words(c["text"]))
            ms.append(t)
        n = len(items) // len(CONDITIONS)
        cells = " | ".join(f"{100 * same[cond] / n:.0f}%" for cond in CONDITIONS)
        print(f"| {name} | {cells} | {facts} | {100 * errs / n_words:.1f}% | {statistics.median(ms):.0f} |", flush=True)
    ears.prompted, ears.prompt_ids, ears_module.INPUT_MODE, ears.rescore = shipped
    ears.beam = ears_module.BEAM
    run.bot.close()


def summarize(result: dict) -> dict:
    rows = result["rows"]
    out = {}
    for cond in (*CONDITIONS, "all"):
        sel = [r for r in rows if cond in ("all", r["condition"])]
        facts = [r for r in sel if r["answers"]]
        entry = {"clips": len(sel)}
        for system, heard in (("cascade", "cascade_heard"), ("bridge", "heard")):
            same = sum(first_sentence(r[system]) == first_sentence(r["typed"]) for r in sel)
            errs = sum(word_errors(words(r["text"]), words(r[heard])) for r in sel)
            entry[system] = {
                "same_as_typed": 100 * same / len(sel),
                "facts": sum(knows(r[system], r["answers"]) for r in facts),
                "wer": 100 * errs / max(1, sum(len(words(r["text"])) for r in sel)),
            }
        entry["typed_facts"] = sum(knows(r["typed"], r["answers"]) for r in facts)
        entry["facts_total"] = len(facts)
        out[cond] = entry
    ratios = [r["ears_ms"] / r["fw_ms"] for r in rows if r["fw_ms"] > 0]
    out["ms"] = {"ears": statistics.median(r["ears_ms"] for r in rows),
                 "faster_whisper": statistics.median(r["fw_ms"] for r in rows),
                 "ratio": statistics.median(ratios)}
    return out


def print_table(result: dict, summary: dict) -> None:
    f = summary["all"]["facts_total"]
    print(f"\nLLM: {result['llm']}; {summary['all']['clips']} clips ({len({r['i'] for r in result['rows']})} questions, "
          f"{f // len(CONDITIONS)} with a known answer, x {len(CONDITIONS)} conditions)\n")
    print("| row | spoken = typed: all | clean | phone | noise 15 dB | facts right (of " + str(f) + ") | WER of what it heard |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    a = summary["all"]
    print(f"| typed (the ceiling) | 100% | 100% | 100% | 100% | {a['typed_facts']} | - |")
    labels = {"cascade": "faster-whisper transcript, typed (a cascade)",
              "bridge": "**transcript bridge (the default bundle, untrained)**"}
    for system, label in labels.items():
        cells = [f"{summary[c][system]['same_as_typed']:.0f}%" for c in ("all", *CONDITIONS)]
        print(f"| {label} | {' | '.join(cells)} | {a[system]['facts']} | {a[system]['wer']:.1f}% |")
    ms = summary["ms"]
    print(f"\nTime to hear a clip (median): ears {ms['ears']:.0f} ms, faster-whisper {ms['faster_whisper']:.0f} ms; "
          f"ears / faster-whisper, clip by clip: {ms['ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument("--llm", default="smollm2", help="smollm2 (the default model), gemma (Gemma 3 270M), or a GGUF")
    ap.add_argument("--json", type=Path, default=None, help="also write every answer here")
    ap.add_argument("--variants", action="store_true", help="the bridge alone under each way of hearing (VARIANTS)")
    a = ap.parse_args(argv)
    if a.variants:
        variants(a.limit)
        return 0
    llm = None
    if a.llm == "gemma":
        from bench.assets import gemma_gguf

        llm = str(gemma_gguf(log))
    elif a.llm != "smollm2":
        llm = a.llm
    result = measure(a.limit, llm)
    summary = summarize(result)
    if a.json:
        a.json.write_text(json.dumps(result | {"summary": summary}, indent=1, ensure_ascii=False))
    print_table(result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
