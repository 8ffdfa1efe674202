"""Hands-free `llasm chat` speaks its answers, does not answer itself, and stops when the user talks over it.

Real PulseAudio virtual devices: the chat plays into a null sink "speaker" whose monitor is looped back into the
microphone (null sink "vmic", whose monitor is the default source) 18 dB down and 60 ms late, as a laptop's
speaker reaches its microphone; the user's questions are played into "vmic" at full level. Real voices (flite),
the default model, and Whisper (the default model's own ears) to check what was played.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time

import numpy as np
import pexpect
import pytest

from llasm_cli.audio.decode import load_audio
from tests.helpers import finish, screen, spawn

SPEAKER = "speaker"


def _pactl(pulse, *args: str) -> str:
    done = subprocess.run(["pactl", *args], env=pulse, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture()
def laptop(pulse):
    """A speaker whose sound reaches the microphone attenuated and late; the chat's default output."""
    modules = [_pactl(pulse, "load-module", "module-null-sink", f"sink_name={SPEAKER}"),
               _pactl(pulse, "load-module", "module-loopback", f"source={SPEAKER}.monitor", "sink=vmic",
                      "latency_msec=60")]
    _pactl(pulse, "set-sink-volume", SPEAKER, "50%")  # PulseAudio's cubic scale: 0.5^3, about -18 dB
    _pactl(pulse, "set-default-sink", SPEAKER)
    try:
        yield pulse
    finally:
        _pactl(pulse, "set-default-sink", "vmic")
        for m in reversed(modules):
            _pactl(pulse, "unload-module", m)


def _speak(pulse, text: str, path) -> tuple[subprocess.Popen, float]:
    """``text`` spoken by flite into the microphone (not the speaker), started: the player and the seconds."""
    subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True, capture_output=True)
    return subprocess.Popen(["paplay", "-d", "vmic", str(path)], env=pulse), load_audio(path).size / 16000


def _say(pulse, text: str, path) -> float:
    """``text`` spoken into the microphone, to its end; its seconds."""
    player, seconds = _speak(pulse, text, path)
    assert player.wait(60) == 0
    return seconds


def _record(pulse, path) -> subprocess.Popen:
    return subprocess.Popen(["parec", "-d", f"{SPEAKER}.monitor", "--file-format=wav", "--rate=16000",
                             "--channels=1", str(path)], env=pulse)


def test_a_spoken_chat_speaks_never_answers_itself_and_can_be_cut(laptop, tmp_path):
    pulse = laptop
    played = tmp_path / "played.wav"
    rec = _record(pulse, played)
    child = spawn("default", "--mic", "--device", "pulse", "--speak", "--voice", "flite:slt", "--temperature", "0",
                  "--max-tokens", "40", env=pulse, timeout=120)
    child.logfile_read = open(tmp_path / "chat.log", "w")  # noqa: SIM115 - read on failure
    try:
        child.expect(r"input: microphone \(pulse\) · answers spoken \(flite:slt\)")
        time.sleep(1.0)
        _say(pulse, "What is the capital of Japan?", tmp_path / "q1.wav")
        child.expect("heard: “What is the capital of Japan")
        child.expect("llasm›")
        time.sleep(8.0)  # the answer is spoken through the speaker, and its echo reaches the microphone
        _say(pulse, "Give me three tips for sleeping better.", tmp_path / "q2.wav")
        child.expect("heard: “Give me three tips for sleeping better")
        child.expect("llasm›")
        time.sleep(3.0)  # well into the spoken answer
        t_cut = time.monotonic()
        player, seconds = _speak(pulse, "What is the capital of France?", tmp_path / "q3.wav")
        child.expect(r"\(answer cut: you spoke\)")
        cut_after = time.monotonic() - t_cut
        assert player.wait(60) == 0
        assert cut_after < seconds, (cut_after, seconds)  # cut while the user still speaks
        child.expect(r"heard: “What is the capital of France")  # the echo cancelled: its first syllables too
        child.expect("llasm›")
        time.sleep(8.0)
        saved = tmp_path / "chat.json"
        child.send(f"/save {saved}\r")
        child.expect("saved")
        child.expect("listening")
        child.sendcontrol("d")
        finish(child)
    except pexpect.TIMEOUT:
        pytest.fail(f"the chat did not go on as expected; its screen:\n{screen(tmp_path / 'chat.log')}")
    finally:
        rec.terminate()
        rec.wait(10)
    turns = json.loads(saved.read_text())["turns"]
    roles = [t["role"] for t in turns]
    assert roles == ["user", "assistant"] * 3, [(t["role"], t["content"][:40]) for t in turns]  # no turn of its own
    first, cut, last = (turns[i]["content"] for i in (1, 3, 5))
    assert "tokyo" in first.lower() and "paris" in last.lower()
    assert not first.endswith("…") and not last.endswith("…"), (first, last)  # only the answer talked over is cut
    assert (tmp_path / "chat.log").read_text().count("(answer cut") == 1
    assert cut.endswith("…") and 0 < len(cut) < 200, cut  # kept as far as it was heard

    from llasm_cli.audio.ears import WhisperEars
    from llasm_cli.formats.built_in import default_bundle_path
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.towers.transcript import ears_folder

    ears = WhisperEars(ears_folder(load_bundle(default_bundle_path())), 2)
    audio = load_audio(played)
    assert np.abs(audio).max() > 0.05
    heard = ears.hear(audio[: 30 * 16000]).text.lower()
    assert "capital of japan is tokyo" in re.sub(r"[^a-z ]", "", heard), heard  # what was played is the answer


def test_barge_in_learns_the_echo_and_hears_the_user_over_it():
    """Speech-like echo (loud syllables, quiet gaps) never cuts in; the user 18 dB over it does, within
    BARGE_IN_SECONDS, and the blocks held back start before the user's first loud block."""
    from llasm_cli.turn_taking import BARGE_IN_SECONDS, CANCELLED_SECONDS, LEARN_SECONDS, BargeIn

    def blocks(seconds: float, size: int = 512) -> int:
        return math.ceil(seconds * 16000 / size)

    BARGE_IN_BLOCKS, CANCELLED_BLOCKS, LEARN_BLOCKS = (blocks(s) for s in (BARGE_IN_SECONDS, CANCELLED_SECONDS,
                                                                           LEARN_SECONDS))

    rng = np.random.default_rng(0)
    gate = BargeIn()
    echo = [-30.0 + (8.0 if (i // 5) % 2 else -10.0) + rng.normal(0, 2) for i in range(300)]  # syllables and gaps
    for i, db in enumerate(echo):
        assert gate.hold(np.full(512, i, np.float32), db, audible=i > 3) is None, i
    user = [-12.0 + rng.normal(0, 1.5) for _ in range(10)]
    got = None
    for j, db in enumerate(user):
        got = gate.hold(np.full(512, 1000 + j, np.float32), db)
        if got is not None:
            break
    assert got is not None and j == BARGE_IN_BLOCKS - 1
    assert got[0][0] < 1000 <= got[-1][0] and len(got) > BARGE_IN_BLOCKS  # held echo blocks, then the user's
    fresh = BargeIn()  # before the echo is known (the first LEARN_BLOCKS blocks heard while audible): no cut
    assert all(fresh.hold(np.zeros(512, np.float32), 0.0) is None for _ in range(LEARN_BLOCKS - 1))
    # behind an echo canceller: what it leaves of the echo never cuts in, a voice does in CANCELLED_BLOCKS blocks
    cancelled = BargeIn(cancelled=True)
    assert all(cancelled.hold(np.zeros(512, np.float32), -60.0 + rng.normal(0, 3)) is None for _ in range(200))
    got = [cancelled.hold(np.zeros(512, np.float32), -25.0) for _ in range(CANCELLED_BLOCKS)]
    assert got[-1] is not None and all(g is None for g in got[:-1])
    # blocks of another size (the echo canceller's 10 ms frames): the same time in a row, not the same count
    small = BargeIn(cancelled=True)
    assert all(small.hold(np.zeros(160, np.float32), -60.0) is None for _ in range(blocks(LEARN_SECONDS, 160)))
    got = [small.hold(np.zeros(160, np.float32), -25.0) for _ in range(blocks(CANCELLED_SECONDS, 160))]
    assert got[-1] is not None and all(g is None for g in got[:-1])


def test_a_pause_is_waited_through_as_long_as_the_words_so_far_say():
    from llasm_cli.turn_taking import END_LIKELY, END_UNLIKELY, MID_SENTENCE_WAIT, pause_wait

    assert pause_wait(0.9) == pause_wait(END_LIKELY) == 1.0
    assert pause_wait(1e-6) == pause_wait(END_UNLIKELY) == MID_SENTENCE_WAIT
    assert 1.0 < pause_wait(0.1) < pause_wait(0.03) < pause_wait(0.01) < MID_SENTENCE_WAIT


def test_answers_are_spoken_clause_by_clause_as_they_stream(pulse):
    """Clauses go to the voice as soon as they are complete (the first one may end at a comma); the device
    plays them in order; a stop says how much was heard."""
    from llasm_cli.audio.playback import Player
    from llasm_cli.speech_out import SpokenAnswer
    from llasm_cli.voices import open_voice

    player, voice = Player(), open_voice("flite:slt")
    try:
        answer = SpokenAnswer(voice, player)
        for piece in ["The capital", " of Japan is Tokyo", ". It is", " a large city, with", " many people", "!"]:
            answer.feed(piece)
        assert answer.clauses == ["The capital of Japan is Tokyo."]
        answer.finish()
        answer.wait(30)
        assert answer.clauses == ["The capital of Japan is Tokyo.", " It is a large city, with many people!"]
        assert answer.first_audio is not None and answer.error is None and not player.busy
        assert answer.stop() == "The capital of Japan is Tokyo. It is a large city, with many people!"

        first = SpokenAnswer(voice, player)
        first.feed("Well, sleeping better takes three things, mostly habits")
        assert first.clauses == ["Well, sleeping better takes three things,"]
        first.feed(", and a dark room. Second, keep a schedule. Third, avoid screens at night.")
        first.finish()
        time.sleep(3.5)  # into the second clause
        heard = first.stop()
        assert heard.startswith("Well, sleeping better takes three things,") and not heard.endswith("night.")
        assert not player.busy
    finally:
        player.close()


def test_the_echo_canceller_takes_the_answer_out_and_leaves_the_user_in(laptop, tmp_path):
    """Through the looped-back speaker: the microphone's audio, cleaned with the exact samples played, holds the
    answer's echo at least 20 dB lower (after AEC3's first second), and the user's question spoken over it
    is still heard word for word."""
    import threading

    from llasm_cli.audio.echo import EchoCancelledMicrophone
    from llasm_cli.audio.mic import Microphone
    from llasm_cli.audio.playback import Player
    from llasm_cli.voices import open_voice

    voice = open_voice("flite:slt")
    answer = voice.speak_native("Sleeping better takes a few habits. First, keep a regular schedule, even on "
                                "weekends. Second, keep your bedroom dark, quiet and cool. Third, avoid "
                                "screens and caffeine in the evening, and get some daylight in the morning.")
    player = Player()
    raw, clean = [], []
    try:
        with Microphone("pulse") as raw_mic:  # the same source heard twice: as it comes, and as the chat hears it
            mic = Microphone("pulse")
            mic.open()
            heard = EchoCancelledMicrophone(mic, player)
            try:
                time.sleep(1.0)  # the chat listens for a while before its first answer
                raw_mic.flush()
                heard.flush()
                player.play(answer, voice.native_rate)
                user = threading.Timer(6.5, _say, (laptop, "What is the capital of Japan?", tmp_path / "q.wav"))
                user.start()
                t0 = time.monotonic()
                while time.monotonic() - t0 < 11.0:
                    raw.append(raw_mic.read(0.05))
                    while (c := heard.read(0.0)).size:
                        clean.append(c)
                user.join()
            finally:
                heard.close()
    finally:
        player.close()
    echo = heard.canceller
    raw_a, clean_a = np.concatenate(raw), np.concatenate(clean)
    assert echo.frames > 800 and echo.unpaired == 0, (echo.frames, echo.unpaired)

    def db(x: np.ndarray) -> float:
        return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12))

    echo_only = slice(1 * 16000, round(3.5 * 16000))  # the user speaks 6.5 s after the start (a device starts late)
    assert db(raw_a[echo_only]) > -50, "the loopback carried no echo"
    assert db(raw_a[echo_only]) - db(clean_a[echo_only]) >= 20.0, (db(raw_a[echo_only]), db(clean_a[echo_only]))

    from llasm_cli.audio.ears import WhisperEars
    from llasm_cli.formats.built_in import default_bundle_path
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.towers.transcript import ears_folder

    ears = WhisperEars(ears_folder(load_bundle(default_bundle_path())), 2)
    heard = re.sub(r"[^a-z ]", "", ears.hear(clean_a[round(3.5 * 16000) :]).text.lower())
    assert "capital of japan" in heard, heard


def test_what_is_spoken_of_an_answer():
    """Clauses end at sentence marks (the first also at a comma after 4 words); Markdown's marks are never
    spoken and a clause of marks alone is not spoken at all."""
    from llasm_cli.speech_out import Clauses, speakable

    split = Clauses()
    got = [c for piece in ["Sure, here", " are three tips, in order:", "\n\n1. **Keep", " a schedule**.", " Done"]
           for c in split.feed(piece)] + split.rest()
    assert [speakable(c) for c in got if speakable(c)] == ["Sure, here are three tips,", "in order:", "1.",
                                                           "Keep a schedule .", "Done"]
    assert speakable("**") == "" and speakable("see [the docs](http://x.y)") == "see the docs"


def test_ask_speaks_its_answer_through_the_speaker(laptop, tmp_path):
    """`llasm ask --speak` plays the answer on the default output device as it streams: recorded where the
    speaker plays it, Whisper hears the text answer."""
    from tests.helpers import run_llasm

    played = tmp_path / "played.wav"
    rec = _record(laptop, played)
    try:
        time.sleep(0.5)
        res = run_llasm("ask", "-m", "default", "--text", "What is the capital of Japan?", "--speak", "--voice",
                        "flite:slt", "--temperature", "0", "--max-tokens", "16", env=laptop)
        time.sleep(0.5)
    finally:
        rec.terminate()
        rec.wait(10)
    assert res.returncode == 0, res.stderr
    assert "tokyo" in res.stdout.lower()

    from llasm_cli.audio.ears import WhisperEars
    from llasm_cli.formats.built_in import default_bundle_path
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.towers.transcript import ears_folder

    audio = load_audio(played)
    assert np.abs(audio).max() > 0.05, "nothing was played"
    heard = WhisperEars(ears_folder(load_bundle(default_bundle_path())), 2).hear(audio).text.lower()
    assert "tokyo" in heard, heard
