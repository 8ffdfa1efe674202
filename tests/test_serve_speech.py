"""`llasm serve` speaks, through the official openai client: ``modalities: ["text", "audio"]`` answers whole
(``message.audio``) and streamed (``delta.audio`` transcript and pcm16 deltas), and ``/v1/audio/speech``.
The audio is checked by ear: the default model's own Whisper hears the answer in it, and its transcript is
the text the same server answers without audio. Hostile values are 400s with OpenAI-style bodies.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.formats.built_in import default_bundle_path

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]
GREEDY = {"temperature": 0, "seed": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def served():
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import ServeSettings, close_server, load_server

    srv = load_server(default_bundle_path(), ServeSettings(parallel=2, queue=2, n_ctx=512))
    try:
        with ServerThread(srv) as st:
            yield srv, openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        close_server(srv)


@pytest.fixture(scope="module")
def hear():
    from llasm_cli.audio.decode import resample
    from llasm_cli.audio.ears import WhisperEars
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.towers.transcript import ears_folder

    ears = WhisperEars(ears_folder(load_bundle(default_bundle_path())), 2)
    return lambda audio, rate: re.sub(r"[^a-z ]", "", ears.hear(resample(audio, rate)).text.lower())


@pytest.fixture(scope="module")
def typed(served):
    _, client = served
    return client.chat.completions.create(model="x", messages=QUESTION, **GREEDY).choices[0].message.content


def test_a_spoken_answer_says_the_text_answer(served, typed, hear):
    _, client = served
    r = client.chat.completions.create(model="x", messages=QUESTION, modalities=["text", "audio"],
                                       audio={"voice": "alloy", "format": "wav"}, **GREEDY)
    msg = r.choices[0].message
    assert msg.content is None and msg.audio.transcript == typed and "Tokyo" in typed
    assert msg.audio.id.startswith("audio_") and msg.audio.expires_at > 0
    audio, rate = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)), dtype="float32")
    assert rate == 24000 and audio.ndim == 1 and audio.size > 24000
    assert "tokyo" in hear(audio, rate)


def test_a_streamed_spoken_answer_comes_as_transcript_and_pcm16_deltas(served, hear):
    """A longer answer: its first clause is spoken (an audio delta sent) before its text is complete."""
    _, client = served
    tips = [{"role": "user", "content": "Give me three tips for sleeping better."}]
    long = {**GREEDY, "max_tokens": 48}
    typed = client.chat.completions.create(model="x", messages=tips, **long).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="x", messages=tips, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        stream=True, **long))
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio is not None]
    transcript = "".join(d.transcript or "" for d in deltas)
    data = [base64.b64decode(d.data) for d in deltas if d.data]
    assert transcript == typed
    assert len({d.id for d in deltas}) == 1
    assert data and all(len(b) % 2 == 0 for b in data)
    first_audio = next(i for i, d in enumerate(deltas) if d.data)
    last_text = max(i for i, d in enumerate(deltas) if d.transcript)
    assert len(data) >= 2 and first_audio < last_text, (len(data), first_audio, last_text)
    pcm = np.frombuffer(b"".join(data), "<i2").astype(np.float32) / 32768.0
    said, heard = set(re.findall(r"[a-z]+", typed.lower())), set(hear(pcm, 24000).split())
    assert len(said & heard) >= 0.7 * len(said), (typed, heard)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_speech_endpoint_speaks_the_input_in_each_format_and_speed(served, hear):
    _, client = served
    text = "The capital of Japan is Tokyo."
    wav = client.audio.speech.create(model="x", voice="alloy", input=text, response_format="wav").content
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 24000 and "capital of japan is tokyo" in hear(audio, rate)
    fast = client.audio.speech.create(model="x", voice="alloy", input=text, response_format="wav", speed=1.5).content
    assert sf.info(io.BytesIO(fast)).duration < 0.8 * audio.size / rate
    for fmt, container in (("mp3", "MP3"), ("flac", "FLAC"), ("opus", "OGG")):
        got = client.audio.speech.create(model="x", voice="alloy", input=text, response_format=fmt).content
        assert sf.info(io.BytesIO(got)).format == container and sf.info(io.BytesIO(got)).duration > 1.0
    pcm = client.audio.speech.create(model="x", voice="flite:slt", input=text, response_format="pcm").content
    assert len(pcm) % 2 == 0 and "tokyo" in hear(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, 24000)


@pytest.mark.parametrize("extra,code,param", [
    ({"modalities": ["text", "image"]}, "unsupported_value", "modalities"),
    ({"modalities": ["text", "audio"]}, "missing_required_parameter", "audio"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "invalid_value", "audio"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "aiff"}}, "unsupported_value", "audio.format"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, "missing_required_parameter", "audio.format"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "nobody", "format": "wav"}}, "invalid_value", "audio.voice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "flite:nobody", "format": "wav"}}, "voice_unavailable",
     "audio.voice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": 7, "format": "wav"}}, "invalid_type", "audio.voice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}, "stream": True},
     "unsupported_value", "audio.format"),
], ids=["image", "no-audio", "audio-without-modality", "aiff", "no-format", "unknown-voice", "missing-voice",
        "voice-number", "stream-wav"])
def test_hostile_audio_requests_get_400(served, extra, code, param):
    _, client = served
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="x", messages=QUESTION, **GREEDY, extra_body=extra)
    assert err.value.body["code"] == code and err.value.body["param"] == param, err.value.body


@pytest.mark.parametrize("body,code,param", [
    ({"voice": "alloy"}, "missing_required_parameter", "input"),
    ({"voice": "alloy", "input": "   "}, "invalid_value", "input"),
    ({"voice": "alloy", "input": "x" * 5000}, "invalid_value", "input"),
    ({"input": "hello"}, "missing_required_parameter", "voice"),
    ({"voice": "alloy", "input": "hello", "response_format": "aac"}, "unsupported_value", "response_format"),
    ({"voice": "alloy", "input": "hello", "speed": 9}, "invalid_value", "speed"),
    ({"voice": "alloy", "input": "hello", "speed": "fast"}, "invalid_type", "speed"),
    ({"voice": "alloy", "input": "hello", "stream_format": "sse"}, "unsupported_value", "stream_format"),
], ids=["no-input", "blank-input", "long-input", "no-voice", "aac", "speed-9", "speed-string", "sse"])
def test_hostile_speech_requests_get_400(served, body, code, param):
    _, client = served
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/audio/speech", body={"model": "x", **body}, cast_to=bytes)
    assert err.value.body["code"] == code and err.value.body["param"] == param, err.value.body
