"""A spoken chat as a user has it: end of speech -> first audio of the answer, barge-in, false turns.

A private PulseAudio daemon stands in for a laptop: `llasm chat --mic --speak` plays into a null sink
"speaker", whose sound is looped back into the microphone (null sink "vmic"; its monitor is the default
source) 18 dB down and 60 ms late; questions are played into "vmic" at full level (flite's rms voice). The
speaker's monitor is recorded all along, so what was played is measured where it was played.

- first audio: from the end of a question's playback to the first sample of the answer in the recording;
  beside it, in the same run, the cascade a user would otherwise run on the same clip: the same 0.6 s of
  silence to know the turn has ended, then faster-whisper (int8, the packaged whisper-base) -> the same LLM
  (llama-cpp-python, its chat template) -> its first clause -> the same voice, timed to the first sample;
- barge-in: a question played while a long answer is spoken: from the question's first voiced sample to the
  moment the speaker fell silent;
- false turns: turns the chat took that nobody spoke (its own voice heard back).

    python bench/speech_chat.py [--questions N] [--voice flite:slt]

Needs pulseaudio, pactl, paplay, parec and flite (apt-get install pulseaudio pulseaudio-utils flite), and the
bench extra (faster-whisper). Prints a table; ratios are per question, medians.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llasm_cli.audio.decode import load_audio  # noqa: E402
from llasm_cli.audio.geometry import SAMPLE_RATE  # noqa: E402

QUESTIONS = ["What is the capital of Japan?", "What language is spoken in Brazil?",
             "What is the largest ocean on Earth?", "What is the boiling point of water?",
             "What is the capital of Germany?", "How many days are in a week?", "What is photosynthesis?",
             "What do bees make?", "Who wrote Romeo and Juliet?", "What color is grass?"]
LONG = "Give me three tips for sleeping better."
INTERRUPT = "What is the capital of Japan?"
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
ENDPOINT_SILENCE_S = 0.6  # a hands-free turn ends after this much silence (llasm chat's default --silence)
SILENT_DB = -45.0
ANSWER_WAIT_S = 16.0  # after an answer starts: 40 tokens spoken by flite take about 12 s  # the recording is silent below this (a 20 ms frame's RMS)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout.strip()


def start_pulse(folder: Path) -> dict:
    """The laptop: vmic (the microphone), speaker (the chat's output) looped back into vmic, attenuated."""
    missing = [t for t in ("pulseaudio", "pactl", "paplay", "parec", "flite") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install pulseaudio pulseaudio-utils flite")
    runtime = folder / "xdg"
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "PULSE_SERVER"} | {"XDG_RUNTIME_DIR": str(runtime)}
    run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--load=module-null-sink sink_name=vmic",
         "--load=module-null-sink sink_name=speaker", "--load=module-native-protocol-unix",
         "--load=module-always-sink"], env)
    env["PULSE_SERVER"] = f"unix:{runtime / 'pulse' / 'native'}"
    for _ in range(100):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    run(["pactl", "load-module", "module-loopback", "source=speaker.monitor", "sink=vmic", "latency_msec=60"], env)
    run(["pactl", "set-sink-volume", "speaker", "50%"], env)  # 0.5^3 on PulseAudio's cubic scale: about -18 dB
    run(["pactl", "set-default-sink", "speaker"], env)
    run(["pactl", "set-default-source", "vmic.monitor"], env)
    return env


def frames_db(x: np.ndarray, frame: int = SAMPLE_RATE // 50) -> np.ndarray:
    n = x.size // frame
    y = x[: n * frame].reshape(n, frame)
    return 10 * np.log10(np.mean(y * y, axis=1) + 1e-12)


def first_sound(x: np.ndarray, after_s: float) -> float | None:
    """Seconds into ``x`` of the first audible 20 ms frame after ``after_s``."""
    db = frames_db(x)
    start = int(after_s * 50)
    loud = np.flatnonzero(db[start:] > SILENT_DB)
    return None if not loud.size else (start + loud[0]) / 50


def silent_from(x: np.ndarray, after_s: float, hold_s: float = 0.3) -> float | None:
    """Seconds into ``x`` where it falls silent for ``hold_s`` after ``after_s``."""
    db = frames_db(x)
    need = int(hold_s * 50)
    quiet = 0
    for i in range(int(after_s * 50), db.size):
        quiet = quiet + 1 if db[i] <= SILENT_DB else 0
        if quiet >= need:
            return (i - need + 1) / 50
    return None


def speak(text: str, path: Path) -> np.ndarray:
    subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True, capture_output=True)
    return load_audio(path)


class Cascade:
    """faster-whisper -> llama-cpp-python (the default model's GGUF, its chat template) -> first clause -> voice."""

    def __init__(self, voice_spec: str) -> None:
        import llama_cpp
        from faster_whisper import WhisperModel

        from llasm_cli.formats.built_in import default_bundle_path
        from llasm_cli.formats.bundle import load_bundle
        from llasm_cli.hub.packaged import find_packaged_whisper
        from llasm_cli.voices import open_voice

        self.asr = WhisperModel(str(find_packaged_whisper("base")), device="cpu", compute_type="int8", cpu_threads=2)
        self.llm = llama_cpp.Llama(str(load_bundle(default_bundle_path()).llm_path()), n_ctx=1024, n_threads=2,
                                   verbose=False)
        self.voice = open_voice(voice_spec)

    def first_audio_s(self, audio: np.ndarray) -> float:
        from llasm_cli.speech_out import CLAUSE_END

        t0 = time.perf_counter()
        segments, _ = self.asr.transcribe(audio, language="en", beam_size=1, without_timestamps=True,
                                          condition_on_previous_text=False, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments)
        said = ""
        for chunk in self.llm.create_chat_completion([{"role": "user", "content": text}], temperature=0, max_tokens=40,
                                                     stream=True):
            said += chunk["choices"][0]["delta"].get("content") or ""
            if CLAUSE_END.search(said):
                break
        self.voice.speak_native(said.strip())
        return ENDPOINT_SILENCE_S + time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import pexpect

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=10, help="questions asked (first audio, false turns)")
    ap.add_argument("--interrupts", type=int, default=10, help="barge-ins measured")
    ap.add_argument("--voice", default="flite:slt", help="the chat's voice (and the cascade's)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llasm-speech-") as tmp:
        folder = Path(tmp)
        env = start_pulse(folder)
        try:
            return measure(a, folder, env, pexpect)
        finally:
            subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True)


def measure(a, folder: Path, env: dict, pexpect) -> int:
    import io

    played = folder / "played.wav"
    rec = subprocess.Popen(["parec", "-d", "speaker.monitor", "--file-format=wav", "--rate=16000", "--channels=1",
                            str(played)], env=env)
    t_rec = time.monotonic()  # wall times below are from here; the recording's own start is found at the end
    child = pexpect.spawn(sys.executable, ["-m", "llasm_cli", "chat", "--mic", "--device", "pulse", "--speak",
                                           "--voice", a.voice, "--temperature", "0", "--max-tokens", "40"],
                          env=env, encoding="utf-8", codec_errors="replace", timeout=180, dimensions=(50, 200))
    output = io.StringIO()
    child.logfile_read = output
    child.expect("answers spoken")
    time.sleep(1.5)
    ends, interrupts = [], []
    qs = (QUESTIONS * (1 + a.questions // len(QUESTIONS)))[: a.questions]
    for i, q in enumerate(qs):
        wav = folder / f"q{i}.wav"
        speak(q, wav)
        subprocess.run(["paplay", "-d", "vmic", str(wav)], env=env, check=True)
        ends.append(time.monotonic() - t_rec)
        child.expect("llasm›")
        time.sleep(ANSWER_WAIT_S)  # the answer is spoken to its end; its echo must not start a turn
        log(f"  asked {i + 1}/{len(qs)}: {q}")
    for i in range(a.interrupts):
        wav = folder / "long.wav"
        speak(LONG, wav)
        subprocess.run(["paplay", "-d", "vmic", str(wav)], env=env, check=True)
        child.expect("llasm›")
        time.sleep(2.5)
        iwav = folder / "interrupt.wav"
        x = speak(INTERRUPT, iwav)
        onset = (first_sound(x, 0.0) or 0.0)
        t_start = time.monotonic() - t_rec
        subprocess.run(["paplay", "-d", "vmic", str(iwav)], env=env, check=True)
        interrupts.append(t_start + onset)
        child.expect("llasm›")
        time.sleep(ANSWER_WAIT_S)
        log(f"  interrupted {i + 1}/{a.interrupts}")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    text = ANSI.sub("", output.getvalue())
    t_stop = time.monotonic() - t_rec
    rec.terminate()
    rec.wait(10)
    audio = load_audio(played)
    lag = t_stop - audio.size / SAMPLE_RATE  # the recording began this long after t_rec
    ends = [e - lag for e in ends]
    interrupts = [t - lag for t in interrupts]
    turns_taken = len(re.findall(r"\[\d+\.\d s of speech\]", text))
    firsts = [s - e for e in ends if (s := first_sound(audio, e)) is not None]
    reactions = [s - t for t in interrupts if (s := silent_from(audio, t)) is not None]
    cascade = Cascade(a.voice)
    cas = [cascade.first_audio_s(speak(q, folder / "c.wav")) for q in qs]
    ratios = [f / c for f, c in zip(firsts, cas, strict=False)]
    spoken_turns = len(qs) + 2 * a.interrupts
    print("| measure | llasm chat | cascade (faster-whisper -> LLM -> voice) | ratio (median per question) |")
    print("|---|---:|---:|---:|")
    print(f"| end of speech -> first audio sample, median of {len(firsts)} | {1e3 * statistics.median(firsts):.0f} ms "
          f"| {1e3 * statistics.median(cas):.0f} ms | {statistics.median(ratios):.2f} |")
    print(f"| barge-in: speech start -> playback stopped, median of {len(reactions)} | "
          f"{1e3 * statistics.median(reactions):.0f} ms | | |" if reactions else "| barge-in | not measured | | |")
    print(f"| turns taken / spoken (false turns) | {turns_taken} / {spoken_turns} "
          f"({max(0, turns_taken - spoken_turns)}) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
