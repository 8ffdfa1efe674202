"""The endpointer on real espeak-ng speech, fed in random-sized chunks as a sound card would.

Expected boundaries come from the signal itself (energy within 35 dB of its peak), not from the
VAD, so these tests check that turns open and close where the speech really is.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.audio.decode import resample
from llasm_cli.audio.endpoint import Endpointer, Event, level
from llasm_cli.audio.geometry import SAMPLE_RATE
from tests.helpers import espeak, speech_bounds, turns

TOL = 0.3  # seconds: allowed distance between a turn boundary and the speech's energy boundary
NOISE_FLOOR_DB = -65.0  # a quiet room's hiss under every stream, so silence is not digital zero


def say(path, text: str) -> np.ndarray:
    data, rate = sf.read(str(espeak(text, path)), dtype="float32")
    return resample(data, rate)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def with_floor(x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (x + rng.standard_normal(x.size) * 10 ** (NOISE_FLOOR_DB / 20)).astype(np.float32)


def feed(ep: Endpointer, stream: np.ndarray, seed: int = 0) -> list[Event]:
    """Push stream in random chunks from 0 to 4000 samples, as capture callbacks deliver it."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    i = 0
    while i < stream.size:
        n = int(rng.integers(0, 4000))
        events += ep.push(stream[i : i + n])
        i += n
    return events


@pytest.fixture(scope="module")
def ep() -> Endpointer:
    return Endpointer()


@pytest.fixture(scope="module")
def weather(workdir) -> np.ndarray:
    return say(workdir / "weather.wav", "What is the weather like in Paris today? I would like to know before I leave.")


@pytest.fixture(scope="module")
def hello(workdir) -> np.ndarray:
    return say(workdir / "hello.wav", "Hello there, can you hear me?")


def test_one_utterance_is_one_turn_with_true_boundaries(ep, weather):
    lead = 1.3
    stream = with_floor(np.concatenate([silence(lead), weather, silence(1.5)]))
    on, off = speech_bounds(weather)
    ep.reset()
    [(start, end)] = turns(feed(ep, stream, seed=1))
    assert abs(start - (lead + on)) <= TOL
    assert abs(end.t - (lead + off)) <= TOL
    assert not end.truncated
    # The audio covers the turn plus pre-roll (0.3 s) and post-roll (0.2 s), and holds the speech.
    assert abs(end.audio.size / SAMPLE_RATE - (end.t - start + 0.5)) <= 0.05
    got_on, got_off = speech_bounds(end.audio)
    assert abs((got_off - got_on) - (off - on)) <= TOL


def test_chunking_does_not_change_the_result(ep, hello):
    stream = with_floor(np.concatenate([silence(0.7), hello, silence(1.0)]))
    results = []
    for seed in (2, 3):
        ep.reset()
        results.append([(type(e).__name__, e.t) for e in feed(ep, stream, seed)])
    ep.reset()
    results.append([(type(e).__name__, e.t) for e in ep.push(stream)])
    assert results[0] == results[1] == results[2]


def test_short_pause_stays_inside_one_turn(ep, hello, weather):
    pause = 0.35  # shorter than trailing_silence (0.6 s), measured between energy boundaries
    h_on, h_off = speech_bounds(hello)
    w_on, w_off = speech_bounds(weather)
    first = hello[: int(h_off * SAMPLE_RATE)]
    second = weather[int(w_on * SAMPLE_RATE) :]
    stream = with_floor(np.concatenate([silence(1.0), first, silence(pause), second, silence(1.5)]))
    ep.reset()
    [(start, end)] = turns(feed(ep, stream, seed=4))
    assert abs(start - (1.0 + h_on)) <= TOL
    assert abs(end.t - (1.0 + h_off + pause + (w_off - w_on))) <= TOL


def test_long_pause_makes_two_turns(ep, hello, weather):
    pause = 1.2
    stream = with_floor(np.concatenate([silence(0.8), hello, silence(pause), weather, silence(1.5)]))
    h_on, h_off = speech_bounds(hello)
    w_on, w_off = speech_bounds(weather)
    w_at = 0.8 + hello.size / SAMPLE_RATE + pause
    ep.reset()
    (s1, e1), (s2, e2) = turns(feed(ep, stream, seed=5))
    assert abs(s1 - (0.8 + h_on)) <= TOL and abs(e1.t - (0.8 + h_off)) <= TOL
    assert abs(s2 - (w_at + w_on)) <= TOL and abs(e2.t - (w_at + w_off)) <= TOL


def test_silence_opens_no_turn(ep):
    ep.reset()
    assert feed(ep, silence(8.0), seed=6) == []
    assert feed(ep, with_floor(silence(8.0)), seed=7) == []


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    return np.fft.irfft(spectrum, n)


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_steady_noise_opens_no_turn(ep, colour):
    rng = np.random.default_rng(8)
    n = 8 * SAMPLE_RATE
    noise = rng.standard_normal(n) if colour == "white" else _pink(n, rng)
    noise = (noise / np.sqrt(np.mean(noise**2)) * 10 ** (-25 / 20)).astype(np.float32)
    assert abs(level(noise) - -25.0) < 0.1
    ep.reset()
    assert feed(ep, noise, seed=9) == []


def test_speech_over_noise_is_still_found(ep, weather):
    rng = np.random.default_rng(10)
    speech_db = level(weather)
    stream = np.concatenate([silence(1.0), weather, silence(1.5)])
    noise = _pink(stream.size, rng)
    noise = noise / np.sqrt(np.mean(noise**2)) * 10 ** ((speech_db - 15) / 20)  # 15 dB SNR
    on, off = speech_bounds(weather)
    ep.reset()
    [(start, end)] = turns(feed(ep, (stream + noise).astype(np.float32), seed=11))
    assert abs(start - (1.0 + on)) <= TOL and abs(end.t - (1.0 + off)) <= TOL


def test_max_turn_cuts_long_speech(hello):
    # Speech without any pause as long as trailing_silence: 7 s of back-to-back sentences.
    on, off = speech_bounds(hello)
    voiced = hello[int(on * SAMPLE_RATE) : int(off * SAMPLE_RATE)]
    talk = np.concatenate([np.concatenate([voiced, silence(0.15)])] * 5)
    stream = with_floor(np.concatenate([silence(1.0), talk, silence(1.5)]))
    ep = Endpointer(max_turn=3.0)
    found = turns(feed(ep, stream, seed=12))
    assert len(found) >= 2
    start, first = found[0]
    assert first.truncated
    assert abs(first.t - start - 3.0) <= 0.05  # cut at max_turn (one 32 ms frame of slack)
    assert abs(first.audio.size / SAMPLE_RATE - (3.0 + 0.3)) <= 0.05  # plus the pre-roll
    # The next turn starts where the cut left off, without repeating audio, and the talk ends
    # untruncated where the speech ends.
    assert found[1][0] >= first.t - 1e-9
    assert not found[-1][1].truncated
    assert abs(found[-1][1].t - (1.0 + talk.size / SAMPLE_RATE - 0.15)) <= TOL
    assert sum(e.audio.size for _, e in found) <= stream.size


def test_reset_restarts_the_clock(ep, hello):
    stream = np.concatenate([silence(0.5), hello, silence(1.0)])
    ep.reset()
    first = feed(ep, stream, seed=13)
    ep.reset()
    again = feed(ep, stream, seed=14)
    assert [e.t for e in first] == [e.t for e in again]


def test_level_is_rms_dbfs():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    assert level(np.ones(100, np.float32)) == pytest.approx(0.0, abs=1e-6)
    assert level(0.5 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-9.03, abs=0.01)
    assert level(np.zeros(100, np.float32)) == -120.0
    assert level(np.zeros(0, np.float32)) == -120.0
    assert Endpointer.level is level or Endpointer.level(np.ones(4)) == 0.0


def test_rejects_multichannel_chunks(ep):
    with pytest.raises(ValueError, match="mono"):
        ep.push(np.zeros((100, 2), np.float32))


def test_require_speech_tells_speech_from_tones_noise_and_clicks(question_audio):
    """What `llasm ask` refuses to send (exit 8 in the CLI) and what it sends."""
    from llasm_cli.audio.endpoint import MIN_VOICED, require_speech, voiced_seconds
    from llasm_cli.errors import NoSpeechError

    assert voiced_seconds(question_audio) > 1.0
    require_speech(question_audio, "speech")
    require_speech(question_audio * 0.01, "quiet speech")  # 40 dB down is still speech (a quiet microphone)
    from llasm_finetune.augment import add_noise, phone_band

    require_speech(phone_band(question_audio, SAMPLE_RATE), "telephone band")
    require_speech(add_noise(question_audio, 0.0, True, 2), "speech in pink noise at 0 dB SNR")
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    for name, x in [("tone", 0.5 * np.sin(2 * np.pi * 440 * t)), ("noise", 0.1 * rng.standard_normal(SAMPLE_RATE)),
                    ("brown noise", 0.001 * np.cumsum(rng.standard_normal(SAMPLE_RATE))),
                    ("quiet noise", 1e-4 * rng.standard_normal(SAMPLE_RATE)),
                    ("hum", 0.3 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)),
                    ("silence", np.zeros(SAMPLE_RATE)), ("1 ms", np.full(16, 0.1))]:
        assert voiced_seconds(x.astype(np.float32)) < MIN_VOICED, name
        with pytest.raises(NoSpeechError, match="--force"):
            require_speech(x.astype(np.float32), name)
