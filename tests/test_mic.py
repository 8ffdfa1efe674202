"""The real capture path on a machine without a sound card: PulseAudio with a null sink.

espeak-ng speech is played into the sink with paplay and recorded from its monitor through
PortAudio's 'pulse' device, then endpointed. Durations are compared on the recorded signal,
because opening a stream takes a variable moment and wall-clock times mean nothing.
A sound server that does not start is a failure, not a skip: this is the only test of --mic.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.audio.decode import resample
from llasm_cli.audio.endpoint import Endpointer, Event, SpeechEnd
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.audio.mic import Microphone, list_input_devices, resolve_device
from llasm_cli.errors import MicrophoneError
from tests.helpers import espeak, speech_bounds, turns

TOL = 0.3


def _collect(mic: Microphone, seconds: float, ep: Endpointer | None = None) -> tuple[list[np.ndarray], list[Event]]:
    """Read `seconds` of audio (by sample count), stopping early once ep reports a SpeechEnd."""
    chunks: list[np.ndarray] = []
    events: list[Event] = []
    got, deadline = 0, time.monotonic() + seconds + 10
    while got < seconds * SAMPLE_RATE and time.monotonic() < deadline:
        chunk = mic.read(timeout=0.5)
        chunks.append(chunk)
        got += chunk.size
        if ep is not None:
            events += ep.push(chunk)
            if any(isinstance(e, SpeechEnd) for e in events):
                break
    return chunks, events


def test_pulse_is_an_input_device(pulse):
    devices = list_input_devices()
    pulse_dev = [d for d in devices if d["name"] == "pulse"]
    assert pulse_dev, f"no 'pulse' input device in {devices}"
    assert pulse_dev[0]["channels"] > 0 and pulse_dev[0]["default_samplerate"] > 0
    assert sum(d["is_default"] for d in devices) == 1
    assert resolve_device("PULSE") == pulse_dev[0]["index"]
    assert resolve_device(pulse_dev[0]["index"]) == pulse_dev[0]["index"]
    assert resolve_device(str(pulse_dev[0]["index"])) == pulse_dev[0]["index"]
    assert resolve_device(None) in {d["index"] for d in devices}


def test_bogus_device_is_a_microphone_error(pulse):
    with pytest.raises(MicrophoneError, match="no input device matches 'no-such-mic-xyz'.*pulse"):
        resolve_device("no-such-mic-xyz")
    with pytest.raises(MicrophoneError, match="there is no input device 9999"):
        resolve_device(9999)
    assert MicrophoneError.exit_code == 7


def test_recorded_speech_is_one_turn_of_the_right_length(pulse, workdir):
    wav = espeak("Please tell me a short story about a friendly robot.", workdir / "mic.wav")
    data, rate = sf.read(str(wav), dtype="float32")
    on, off = speech_bounds(resample(data, rate))
    ep = Endpointer()
    with Microphone("pulse") as mic:
        assert not mic.closed and mic.samplerate > 0
        chunks, events = _collect(mic, 0.5, ep)  # capture is running before anything plays
        player = subprocess.Popen(["paplay", str(wav)], env=pulse, stderr=subprocess.PIPE, text=True)
        more, events2 = _collect(mic, 3.0 + (off - on) + 3.0, ep)
        assert player.wait(timeout=20) == 0, player.stderr.read() if player.stderr else ""
    assert mic.closed and mic.stream.closed
    recorded = np.concatenate(chunks + more)
    [(start, end)] = turns(events + events2)
    rec_on, rec_off = speech_bounds(recorded)
    assert abs((end.t - start) - (off - on)) <= TOL
    assert abs(start - rec_on) <= TOL and abs(end.t - rec_off) <= TOL
    assert abs((rec_off - rec_on) - (off - on)) <= 0.05  # the capture neither lost nor added audio


def test_stream_is_closed_when_the_body_raises(pulse):
    with pytest.raises(ZeroDivisionError), Microphone("pulse") as mic:
        assert mic.read(timeout=10.0).size > 0  # returns at the first chunk; a busy machine starts streams late
        raise ZeroDivisionError("the body fails")
    assert mic.closed
    with pytest.raises(RuntimeError, match="closed"):
        mic.read()


def test_missing_portaudio_is_a_microphone_error(tmp_path):
    """Hide libportaudio from ctypes' library search in a fresh interpreter, as on a machine
    without the package: importing sounddevice raises OSError, which must become advice."""
    code = (
        "import ctypes.util; ctypes.util.find_library = lambda name: None\n"
        "from llasm_cli.errors import MicrophoneError\n"
        "from llasm_cli.audio.mic import list_input_devices\n"
        "try:\n    list_input_devices()\nexcept MicrophoneError as e:\n    print('MicrophoneError:', e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert "MicrophoneError: the PortAudio library is missing" in done.stdout, done.stdout + done.stderr
    assert "libportaudio2" in done.stdout
