"""Whisper's transcript without PyTorch: our ONNX greedy decoder (llasm_cli/audio/transcribe.py) in three
input modes, against faster-whisper (the cascade's ASR) and whisper.cpp, on spoken questions.

Why this exists: issue #31's hybrid feeds the LLM Whisper's transcript beside the adaptor's embeddings,
from one encoder pass. Whether that pass may be unpadded (cheap) depends on whether the decoder still
transcribes well, and stops, on unpadded frames (DESIGN.md 2026-12-07: it often does not).

Clips: 60 questions (20 "What is the capital of X?", 10 other facts, bench/assets.SENTENCES, small talk),
three in four spoken by espeak-ng voices (varied voice, variant, speed, pitch), one in four by flite
(slt, kal, awb, rms); each clean, through a telephone band (300-3400 Hz at 8 kHz) and with white noise at
15 dB SNR: 180 clips. Systems, all greedy, English, no timestamps, 2 threads each, run one after another
on each clip (so load on the machine hits all alike):

- ``onnx <mode>[+p]``: the ONNX folder of the packaged whisper-base (float32) on the padded 30 s window,
  the unpadded frames, or unpadded + 1 s of zeros; ``+p`` adds the quiz prompt. Prompted and plain
  decodes share one encoder pass; each row's ms counts mel + encoder + cross K/V + its decode.
- ``onnx-int8 <mode>[+p]``: the same encoder pass, the decoder's matrices in int8 (ONNX Runtime's dynamic
  quantization; the encoder stays float32, as the adaptor of the hybrid reads its frames).
- ``faster-whisper[+p]``: CTranslate2 int8 on the same weights, temperature 0 without fallback.
- ``whisper.cpp``, ``whisper.cpp ctx[+p]``: pywhispercpp on export/whisper_cpp.py's f16 file, the padded
  window, or ``ctx``: audio_ctx trimmed to the clip's encoder frames + 1 s (see WHISPER_CPP_EXTRA_CTX).
  whisper.cpp has neither the length bound nor the repeat cut of ours.

Word error rate against the text that was spoken (lower case, punctuation dropped, numbers as words);
"exact": share of clips with WER 0; "runaway": outputs with more than 1.4x the spoken text's words;
ms: the median per clip, and its ratio to faster-whisper's (the median of per-clip ratios).

    python bench/transcribe.py [--limit N] [--no-int8] [--json > out.json]

Needs espeak-ng, flite, faster-whisper and pywhispercpp (the bench extra). Files go to the bench cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bench/onnx_tower.py: numpy's threads off the encoder's cores

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/transcribe.py` from anywhere
    sys.path.insert(0, str(ROOT))

from llasm_finetune.augment import add_noise, phone_band, write_clip  # noqa: E402
from llasm_finetune.demo_tasks import en_words  # noqa: E402
from llasm_finetune.distill_data import CAPITALS, FACTS, OTHER  # noqa: E402

from bench.assets import SENTENCES, bench_root, whisper_base_ct2, whisper_base_hf, whisper_cpp_base  # noqa: E402
from bench.scoring import word_errors  # noqa: E402
from llasm_cli.audio.decode import load_audio  # noqa: E402
from llasm_cli.audio.geometry import SAMPLE_RATE, SAMPLES_PER_ENCODER_FRAME  # noqa: E402
from llasm_cli.audio.transcribe import MODES, WhisperOnnx, clip_mel, max_tokens  # noqa: E402
from llasm_cli.files import atomic_folder  # noqa: E402

THREADS = 2
PROMPT = "Quiz questions. Who wrote Hamlet? How many days are in a week?"
NOISE_SNR = 15.0
CONDITIONS = ("clean", "phone", "noise")
RUNAWAY = 1.4  # more than this many times the spoken text's words
ESPEAK = [  # (voice, speed, pitch), cycled
    ("en-us", 160, 50), ("en-gb", 175, 40), ("en-gb-scotland+m2", 150, 60), ("en-us-nyc+f2", 180, 70),
    ("en-gb-x-rp+m5", 140, 35), ("en-029+Annie", 170, 55), ("en-us+boris", 190, 45), ("en-gb-x-gbcwmd+f4", 155, 65),
]
FLITE = ("slt", "kal", "awb", "rms")
REFERENCE = "faster-whisper"
# whisper.cpp's trimmed audio_ctx: the clip's encoder frames + 1 s (our ``zeros`` mode), over the clip + 2 s of
# zeros. With audio_ctx at or past the audio's own end it transcribed silence ("I'm going to start now.",
# "Thanks for watching.") on every clip tried; with the audio 1 s longer than the ctx it worked.
WHISPER_CPP_EXTRA_CTX = 50
WHISPER_CPP_TAIL_S = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- clips ---------------------------------------------------------------------------------------------


def texts() -> list[str]:
    out = [f"What is the capital of {c}?" for c in list(CAPITALS)[:20]]
    out += [q for q, _ in FACTS[:10]] + SENTENCES
    return out + OTHER[: 60 - len(out)]


def voice_of(i: int) -> tuple[str, str, int, int]:
    """(engine, voice, speed, pitch) of clip ``i``: every fourth one flite."""
    if i % 4 == 3:
        return "flite", FLITE[(i // 4) % len(FLITE)], 0, 0
    return ("espeak-ng", *ESPEAK[i % len(ESPEAK)])


def speak(text: str, i: int, path: Path) -> None:
    engine, voice, speed, pitch = voice_of(i)
    if engine == "flite":
        cmd = ["flite", "-voice", voice, "-t", text, "-o", str(path)]
    else:
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
    subprocess.run(cmd, check=True, capture_output=True)


def build_clips(folder: Path) -> None:
    """clean/phone/noise wavs of every text (16 kHz) and clips.json (text, voice, file per clip)."""
    rows = []
    for i, text in enumerate(texts()):
        raw = folder / f"{i:02d}-raw.wav"
        speak(text, i, raw)
        x = load_audio(raw)
        raw.unlink()
        versions = {"clean": x, "phone": phone_band(x, SAMPLE_RATE), "noise": add_noise(x, NOISE_SNR, False, seed=i)}
        for cond, y in versions.items():
            name = f"{i:02d}-{cond}.wav"
            write_clip(folder / name, np.asarray(y, np.float32), SAMPLE_RATE)
            rows.append({"text": text, "voice": ":".join(map(str, voice_of(i)[:2])), "condition": cond, "file": name})
    (folder / "clips.json").write_text(json.dumps(rows, indent=1))


def clips() -> tuple[Path, list[dict]]:
    folder = bench_root() / "transcribe-clips-v1"
    if not folder.is_dir():
        log("speaking the clips (espeak-ng, flite) and degrading them")
        with atomic_folder(folder, replace=False) as tmp:
            build_clips(tmp)
    return folder, json.loads((folder / "clips.json").read_text())


def onnx_folder(weights: str) -> Path:
    from llasm_export.whisper_onnx import write_whisper_onnx

    target = bench_root() / f"whisper-base-onnx-{weights}"
    if not (target / "whisper_onnx.json").is_file():
        log(f"exporting whisper-base to ONNX ({weights})")
        write_whisper_onnx(whisper_base_hf(log), target, PROMPT, weights, overwrite=True)
    return target


# --- scoring -------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower case, numbers spelled out (up to 999), punctuation dropped."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower()).replace("-", " ")
    text = re.sub(r"\d+", lambda m: en_words(int(m.group())) if int(m.group()) < 1000 else m.group(), text)
    return re.sub(r"[^a-z0-9' ]+", " ", text).split()


# --- systems: each maps samples to {row name: (text, ms)} ----------------------------------------------


def onnx_system(folders: dict[str, Path], modes: tuple[str, ...] = MODES):
    """Rows ``<label> <mode>[+p]`` per folder: one encoder + cross K/V pass per mode (the folders share their
    float32 encoder and cross K/V graphs; their decoders differ), each decode timed on its own."""
    models = {label: WhisperOnnx(folder, THREADS) for label, folder in folders.items()}
    first = next(iter(models.values()))

    def run(x: np.ndarray) -> dict[str, tuple[str, float]]:
        out = {}
        for mode in modes:
            t0 = time.perf_counter()
            cross = first.cross_kv(first.encode(clip_mel(x, mode)))
            shared = time.perf_counter() - t0
            for label, model in models.items():
                for prompt in (False, True):
                    t1 = time.perf_counter()
                    ids, _ = model.decode(cross, max_tokens(x.size / SAMPLE_RATE), prompt)
                    text = model.text(ids)
                    out[f"{label} {mode}{'+p' if prompt else ''}"] = (text, 1000 * (shared + time.perf_counter() - t1))
        return out

    return run


def faster_whisper_system():
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_base_ct2()), device="cpu", compute_type="int8", cpu_threads=THREADS,
                         num_workers=1)

    def run(x: np.ndarray) -> dict[str, tuple[str, float]]:
        out = {}
        for prompt in (None, PROMPT):
            t = time.perf_counter()
            segments, _ = model.transcribe(x, language="en", beam_size=1, best_of=1, temperature=0.0,
                                           without_timestamps=True, condition_on_previous_text=False,
                                           initial_prompt=prompt, vad_filter=False)
            text = " ".join(s.text.strip() for s in segments)
            out[REFERENCE + ("+p" if prompt else "")] = (text, 1000 * (time.perf_counter() - t))
        return out

    return run


def whisper_cpp_system():
    from pywhispercpp.model import Model

    model = Model(str(whisper_cpp_base(log)), n_threads=THREADS, print_progress=False, print_realtime=False,
                  redirect_whispercpp_logs_to=None)

    def run(x: np.ndarray) -> dict[str, tuple[str, float]]:
        out = {}
        ctx = -(-x.size // SAMPLES_PER_ENCODER_FRAME) + WHISPER_CPP_EXTRA_CTX
        tail = np.zeros(round(WHISPER_CPP_TAIL_S * SAMPLE_RATE), np.float32)
        for name, audio_ctx, prompt in (("whisper.cpp", 0, ""), ("whisper.cpp ctx", ctx, ""),
                                        ("whisper.cpp ctx+p", ctx, PROMPT)):
            t = time.perf_counter()
            audio = np.concatenate([x, tail]) if audio_ctx else x
            segs = model.transcribe(audio, language="en", no_timestamps=True, single_segment=True, temperature=0.0,
                                    temperature_inc=0.0, audio_ctx=audio_ctx, initial_prompt=prompt, no_context=True)
            out[name] = (" ".join(s.text.strip() for s in segs), 1000 * (time.perf_counter() - t))
        return out

    return run


# --- the run -------------------------------------------------------------------------------------------


def measure(limit: int | None, int8: bool = True) -> dict:
    folder, rows = clips()
    rows = rows[:limit] if limit else rows
    folders = {"onnx": onnx_folder("f32")} | ({"onnx-int8": onnx_folder("int8")} if int8 else {})
    systems = [onnx_system(folders), faster_whisper_system(), whisper_cpp_system()]
    warm = load_audio(folder / rows[0]["file"])
    for system in systems:  # first calls (allocations, kernel choices) not counted
        system(warm)
    results: dict[str, list[dict]] = {}
    for n, row in enumerate(rows):
        x = load_audio(folder / row["file"])
        ref = words(row["text"])
        for system in systems:
            for name, (text, ms) in system(x).items():
                hyp = words(text)
                results.setdefault(name, []).append({"clip": row["file"], "text": text, "ms": ms,
                                                     "errors": word_errors(ref, hyp), "ref_words": len(ref),
                                                     "runaway": len(hyp) > RUNAWAY * len(ref)})
        if n % 10 == 9:
            log(f"{n + 1}/{len(rows)} clips")
    return {"clips": rows, "results": results, "summary": summarize(rows, results)}


def summarize(rows: list[dict], results: dict[str, list[dict]]) -> dict[str, dict]:
    ref_ms = [r["ms"] for r in results[REFERENCE]]
    summary = {}
    for name, rs in results.items():
        row = {"ms": statistics.median(r["ms"] for r in rs),
               "ms_ratio": statistics.median(r["ms"] / b for r, b in zip(rs, ref_ms))}
        for cond in (None, *CONDITIONS):
            sel = [r for r, clip in zip(rs, rows) if cond is None or clip["condition"] == cond]
            key = cond or "all"
            row[f"wer_{key}"] = sum(r["errors"] for r in sel) / max(1, sum(r["ref_words"] for r in sel))
            row[f"exact_{key}"] = sum(r["errors"] == 0 for r in sel) / max(1, len(sel))
        row["runaway"] = sum(r["runaway"] for r in rs)
        row["clips"] = len(rs)
        summary[name] = row
    return summary


def print_table(summary: dict[str, dict]) -> None:
    print("| system | WER all | clean | phone | noise 15 dB | exact | runaway | median ms | ms / faster-whisper |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in summary.items():
        print(f"| {name} | {r['wer_all']:.1%} | {r['wer_clean']:.1%} | {r['wer_phone']:.1%} | {r['wer_noise']:.1%} "
              f"| {r['exact_all']:.0%} | {r['runaway']}/{r['clips']} | {r['ms']:.0f} | {r['ms_ratio']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="only the first N clips (of 180)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the ONNX decoder with int8 matrices")
    parser.add_argument("--json", action="store_true", help="one JSON object (every transcript, the summary) on "
                        "stdout instead of the table")
    args = parser.parse_args(argv)
    result = measure(args.limit, not args.no_int8)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
