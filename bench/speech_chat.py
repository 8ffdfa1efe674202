"""A spoken chat as a user has it: end of speech -> first answer character and first audio, barge-in,
questions with a pause in the middle, false turns.

A private PulseAudio daemon stands in for a laptop: `llasm chat --mic --speak` plays into a null sink
"speaker", whose sound is looped back into the microphone (null sink "vmic"; its monitor is the default
source) 18 dB down and 60 ms late; questions are played into "vmic" at full level (flite's rms voice). Both
monitors are recorded all along, so each moment is measured where it happened: a question's end and a
barge-in's start where the microphone heard them (the clip found by cross-correlation in the microphone's
recording, under the answer's echo), the answer's first sample where the speaker played it.

- first answer character: from the end of a question's speech to the first character of the answer on the
  terminal; first audio: to the first sample of the answer played. Beside them, in the same run, the cascade a
  user would otherwise run on the same clip: the same 0.6 s of silence to know the turn has ended, then
  faster-whisper (int8, the packaged whisper-base) -> the same LLM (llama-cpp-python, its chat template) ->
  its first character, and its first clause -> the same voice, timed to the first sample;
- barge-in: a question played while a long answer is spoken: from the question's first voiced sample to the
  moment the speaker fell silent;
- pauses: the ten questions of bench/turn_pauses.py, each with a 0.5-0.8 s pause mid-sentence: heard as one
  turn holding its last words;
- false turns: turns the chat took that nobody spoke (its own voice heard back); answers cut with no barge-in.

    python bench/speech_chat.py [--questions N] [--interrupts N] [--pauses N] [--voice flite:slt]

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

from bench.turn_pauses import PAUSED, paused  # noqa: E402
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
SILENT_DB = -45.0  # the recording is silent below this (a 20 ms frame's RMS)
ANSWER_WAIT_S = 16.0  # after an answer starts: 40 tokens spoken by flite take about 12 s


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
        self.asked = 0
        self.first_char: list[float] = []  # end of speech -> the first answer character, per question

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
            if said.strip() and len(self.first_char) < self.asked + 1:
                self.first_char.append(ENDPOINT_SILENCE_S + time.perf_counter() - t0)
            if CLAUSE_END.search(said):
                break
        self.voice.speak_native(said.strip())
        self.asked += 1
        return ENDPOINT_SILENCE_S + time.perf_counter() - t0


class Stamped:
    """pexpect's log of what the chat printed, each piece with the moment it came (time.monotonic)."""

    def __init__(self) -> None:
        self.pieces: list[tuple[float, str]] = []
        self.answers = 0  # "llasm›" printed so far
        self._tail = ""

    def write(self, text: str) -> None:
        self.pieces.append((time.monotonic(), text))
        joined = self._tail + text
        self.answers += joined.count("llasm›") - self._tail.count("llasm›")
        self._tail = joined[-8:]

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.pieces)

    def answer_starts(self) -> list[float]:
        """When the first character of each answer was printed (the first visible one after "llasm›")."""
        times, starts, at = [], [], 0
        for t, piece in self.pieces:
            times.extend([t] * len(piece))
        text = self.text
        for m in re.finditer("llasm›", text):
            rest = ANSI.sub(lambda e: "\0" * len(e.group()), text[m.end() :])  # escapes kept as placeholders
            first = re.search(r"[^\s\0]", rest)
            if first is not None and m.end() + first.start() >= at:
                at = m.end() + first.start()
                starts.append(times[at])
        return starts


def locate(recording: np.ndarray, clip: np.ndarray, near_s: float, span_s: float = 4.0) -> float | None:
    """Seconds into ``recording`` where ``clip`` begins, searched from ``near_s`` on: the peak of their
    cross-correlation (the clip arrives mixed with the answer's echo)."""
    from scipy.signal import fftconvolve

    lo = max(0, round((near_s - 0.5) * SAMPLE_RATE))
    seg = recording[lo : lo + round(span_s * SAMPLE_RATE) + clip.size]
    if seg.size < clip.size:
        return None
    corr = fftconvolve(seg, clip[::-1], mode="valid")
    return (lo + int(np.argmax(corr))) / SAMPLE_RATE


def speech_edges(x: np.ndarray) -> tuple[float, float]:
    """The first and last audible 20 ms frames of a clip, in seconds."""
    loud = np.flatnonzero(frames_db(x) > SILENT_DB)
    return loud[0] / 50, (loud[-1] + 1) / 50


def main(argv: list[str] | None = None) -> int:
    import pexpect

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=10, help="questions asked (first audio, false turns)")
    ap.add_argument("--interrupts", type=int, default=10, help="barge-ins measured")
    ap.add_argument("--pauses", type=int, default=len(PAUSED), help="questions with a pause in the middle played")
    ap.add_argument("--voice", default="flite:slt", help="the chat's voice (and the cascade's)")
    ap.add_argument("--log", type=Path, help="write what the chat printed here (with --stats), each piece timed")
    ap.add_argument("--keep", type=Path, help="copy both recordings here (speaker.wav, vmic.wav)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llasm-speech-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        env = start_pulse(folder)
        try:
            return measure(a, folder, env, pexpect)
        finally:
            subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True)


def expect_answers(child, out: Stamped, n: int, timeout: float = 60.0) -> None:
    """Read until the ``n``-th answer has begun ("llasm›" printed ``n`` times)."""
    deadline = time.monotonic() + timeout
    while out.answers < n:
        if time.monotonic() > deadline:
            raise TimeoutError("no answer came")
        pump(child, 0.05)


def pump(child, seconds: float) -> None:
    """Let ``seconds`` pass while reading what the chat prints, so that each piece is stamped as it comes
    (pexpect reads only when asked)."""
    import pexpect

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            child.read_nonblocking(65536, timeout=min(0.01, left))
        except pexpect.TIMEOUT:
            pass


def play(child, path: Path, env: dict, t_rec: float) -> float:
    """``path`` played into the microphone, the chat's output read meanwhile; when paplay started, on the
    bench's clock."""
    t = time.monotonic() - t_rec
    player = subprocess.Popen(["paplay", "-d", "vmic", str(path)], env=env)
    while player.poll() is None:
        pump(child, 0.02)
    if player.returncode != 0:
        raise RuntimeError(f"paplay failed on {path} (exit {player.returncode})")
    return t


def measure(a, folder: Path, env: dict, pexpect) -> int:
    import soundfile as sf

    recs = {name: (folder / f"{name}.wav", subprocess.Popen(
        ["parec", "-d", f"{name}.monitor", "--file-format=wav", "--rate=16000", "--channels=1",
         str(folder / f"{name}.wav")], env=env)) for name in ("speaker", "vmic")}
    t_rec = time.monotonic()  # times below are from here; each recording's own start is found at the end
    child = pexpect.spawn(sys.executable, ["-m", "llasm_cli", "chat", "--mic", "--device", "pulse", "--speak",
                                           *(["--stats"] if a.log else []),
                                           "--voice", a.voice, "--temperature", "0", "--max-tokens", "40"],
                          env=env, encoding="utf-8", codec_errors="replace", timeout=180, dimensions=(50, 200))
    out = Stamped()
    child.logfile_read = out
    asked, cuts = [], []  # (the clip, when it began playing)
    pauses = []  # (turns taken before it, the words after its pause)
    try:
        child.expect("answers spoken")
        time.sleep(1.5)
        qs = (QUESTIONS * (1 + a.questions // len(QUESTIONS)))[: a.questions]
        for i, q in enumerate(qs):
            wav = folder / f"q{i}.wav"
            x = speak(q, wav)
            n = out.answers + 1
            asked.append((x, play(child, wav, env, t_rec)))
            expect_answers(child, out, n)
            pump(child, ANSWER_WAIT_S)  # the answer is spoken to its end; its echo must not start a turn
            log(f"  asked {i + 1}/{len(qs)}: {q}")
        for i in range(a.interrupts):
            wav = folder / "long.wav"
            speak(LONG, wav)
            n = out.answers + 1
            play(child, wav, env, t_rec)
            expect_answers(child, out, n)
            pump(child, 2.0 + 0.25 * (i % 8))  # into the answer: its sound, or a pause between clauses (not timed)
            iwav = folder / "interrupt.wav"
            x = speak(INTERRUPT, iwav)
            cuts.append((x, play(child, iwav, env, t_rec)))
            expect_answers(child, out, n + 1)
            pump(child, ANSWER_WAIT_S)
            log(f"  interrupted {i + 1}/{a.interrupts}")
        for i, (spec, first, rest, gap) in enumerate(PAUSED[: a.pauses]):
            wav = folder / f"p{i}.wav"
            sf.write(wav, paused(spec, first, rest, gap, lead=0.2, tail=0.2), SAMPLE_RATE)
            before = len(re.findall(r"\[\d+\.\d s of speech\]", ANSI.sub("", out.text)))
            n = out.answers + 1
            play(child, wav, env, t_rec)
            expect_answers(child, out, n)
            pump(child, ANSWER_WAIT_S)
            pauses.append((before, rest))
            log(f"  paused {i + 1}/{a.pauses}: {first} … {rest}")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        t_stop = time.monotonic() - t_rec
        for _, rec in recs.values():
            rec.terminate()
            rec.wait(10)
        child.close(force=True)
    if a.log:
        a.log.write_text("".join(f"[{t - t_rec:9.3f}] {piece!r}\n" for t, piece in out.pieces), encoding="utf-8")
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
        for path, _ in recs.values():
            shutil.copy(path, a.keep / path.name)
    played, heard = (load_audio(recs[k][0]) for k in ("speaker", "vmic"))
    # each recording began this long after t_rec (it ran until t_stop)
    lag_out, lag_in = (t_stop - x.size / SAMPLE_RATE for x in (played, heard))
    text = ANSI.sub("", out.text)
    turns_taken = len(re.findall(r"\[\d+\.\d s of speech\]", text))
    ends = []  # the end of each question's speech, as the microphone heard it, on the bench's clock
    for x, t in asked:
        at = locate(heard, x, t - lag_in)
        ends.append(None if at is None else at + speech_edges(x)[1] + lag_in)
    firsts = [s + lag_out - e for e in ends if e is not None and (s := first_sound(played, e - lag_out)) is not None]
    starts = out.answer_starts()[: len(asked)]
    chars = [c - t_rec - e for c, e in zip(starts, ends, strict=False) if e is not None]
    reactions = []  # only where the answer was sounding when the user began (not between two of its clauses)
    out_db = frames_db(played)
    onsets = []
    for x, t in cuts:
        at = locate(heard, x, t - lag_in)
        if at is not None:
            onset = at + speech_edges(x)[0] + lag_in
            onsets.append(onset)
            frame = int((onset - lag_out) * 50)
            if out_db[max(0, frame - 10) : frame + 1].max() <= SILENT_DB:
                continue
            if (s := silent_from(played, onset - lag_out, hold_s=1.0)) is not None:  # not a gap between clauses
                reactions.append(s + lag_out - onset)
    whole = 0
    segments = text.split("llasm›")
    for i, (before, rest) in enumerate(pauses):
        after = pauses[i + 1][0] if i + 1 < len(pauses) else turns_taken
        k = len(asked) + 2 * len(cuts) + i  # the segment that ends with this turn's "heard:" line
        said = re.findall(r"heard: “([^”]*)”", segments[k]) if k < len(segments) else []
        whole += after - before == 1 and bool(said) and rest.rstrip("?.").split()[-1].lower() in said[-1].lower()
    log("barge-in onsets (s, speaker's clock): " + " ".join(f"{t - lag_out:.2f}" for t in onsets))
    log("speech ends (s): " + " ".join(f"{e:.2f}" for e in ends if e is not None))
    log("per question, ms: first character " + " ".join(f"{1e3 * c:.0f}" for c in chars)
        + "; first audio " + " ".join(f"{1e3 * f:.0f}" for f in firsts)
        + "; barge-in " + " ".join(f"{1e3 * r:.0f}" for r in reactions))
    cascade = Cascade(a.voice)
    cas = [cascade.first_audio_s(x) for x, _ in asked]
    cas_char = cascade.first_char
    ratios = [f / c for f, c in zip(firsts, cas, strict=False)]
    spoken_turns, answers_cut = len(asked) + 2 * len(cuts) + len(pauses), text.count("(answer cut")
    print("| measure | llasm chat | cascade (faster-whisper -> LLM -> voice) | ratio (median per question) |")
    print("|---|---:|---:|---:|")
    print(f"| end of speech -> first answer character, median of {len(chars)} | "
          f"{1e3 * statistics.median(chars):.0f} ms | {1e3 * statistics.median(cas_char):.0f} ms | "
          f"{statistics.median([c / k for c, k in zip(chars, cas_char, strict=False)]):.2f} |")
    print(f"| end of speech -> first audio sample, median of {len(firsts)} | {1e3 * statistics.median(firsts):.0f} ms "
          f"| {1e3 * statistics.median(cas):.0f} ms | {statistics.median(ratios):.2f} |")
    print(f"| barge-in: speech start -> playback stopped, median of {len(reactions)} | "
          f"{1e3 * statistics.median(reactions):.0f} ms | | |" if reactions else "| barge-in | not measured | | |")
    print(f"| questions with a pause in the middle heard as one turn | {whole} / {len(pauses)} | | |")
    print(f"| turns taken / spoken (false turns) | {turns_taken} / {spoken_turns} "
          f"({max(0, turns_taken - spoken_turns)}) | | |")
    print(f"| answers cut / barge-ins played (cut by its own echo) | {answers_cut} / {len(cuts)} "
          f"({max(0, answers_cut - len(cuts))}) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
