"""`llasm serve` through the official openai client over real HTTP on loopback: text, audio, both,
streaming, multi-turn with audio in earlier turns, sampling controls, and hostile requests, each
refused with a 4xx and an OpenAI-style error body while the server goes on answering /health.

The server runs the packaged default model in this process (uvicorn in a thread); its answers are
compared with what llasm's own single-conversation path (``Conversation`` on an ``Assistant`` of
the same bundle, temperature 0) says to the same messages. No answer is written here: every
expected answer comes from that path, so the tests hold for any weights the bundle ships. Answers
are cut at ``MAX_TOKENS`` (the LLM has 30 layers; the tests stay fast).

A request served alone on a fresh server (``alone``, ``solo``) is computed exactly as llasm's own
path computes it, and its answer must be the same, token for token. Answers given while other
conversations share the batches and the KV cache may differ where llama.cpp's rounding decides a
near tie (tests/near_greedy.py explains): they must be llasm's answer up to that rounding.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.formats.built_in import demo_bundle_path
from llasm_cli.formats.bundle import load_bundle
from tests.near_greedy import departure, prompt_of

openai = pytest.importorskip("openai")

DEFAULT = demo_bundle_path()
MODEL = load_bundle(DEFAULT).manifest.name if DEFAULT is not None else "llasm"  # what /v1/models reports
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
JAPAN = EXAMPLES / "what_is_the_capital_of_japan.wav"
OCEAN = EXAMPLES / "what_is_the_largest_ocean_on_earth.wav"
HAIKU = EXAMPLES / "write_a_haiku_about_friendship.wav"
QUESTION = "What is the capital of Japan?"
REPEAT = "Repeat after me: the cat likes the red box"
FRENCH = "Answer in French."
MAX_TOKENS = 8  # per answer, unless a test says otherwise
MAX_AUDIO = 20.0
MAX_BODY = 2 << 20

pytestmark = pytest.mark.skipif(DEFAULT is None, reason="no packaged default model")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_part(data: bytes | Path, fmt: str = "wav") -> dict:
    raw = data.read_bytes() if isinstance(data, Path) else data
    return {"type": "input_audio", "input_audio": {"data": b64(raw), "format": fmt}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def user(*parts: dict | str) -> dict:
    return {"role": "user", "content": [text_part(p) if isinstance(p, str) else p for p in parts]}


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, JSON body) of one raw request: for bodies no client library would send."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        data = res.read()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


def assert_openai_error(body: dict, code: str | None = None, param: str | None = None) -> None:
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err


@pytest.fixture(scope="module")
def served():
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import ServeSettings, close_server, load_server

    srv = load_server(DEFAULT, ServeSettings(parallel=4, queue=4, n_ctx=1024, max_audio=MAX_AUDIO, max_body=MAX_BODY))
    try:
        with ServerThread(srv) as st:
            yield srv, st.url
    finally:
        close_server(srv)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ref():
    """llasm's own single-conversation path on the same bundle, for reference answers."""
    from llasm_cli.assistant import Assistant

    bot = Assistant(DEFAULT)
    yield bot
    bot.close()


@pytest.fixture(autouse=True)
def _alive_after(request):
    """Whatever a test sent, the server answers /health afterwards."""
    yield
    if "served" in request.fixturenames:
        status, _, body = raw(request.getfixturevalue("served")[1], "GET", "/health")
        assert status == 200 and body["status"] == "ok", body


GREEDY = {"temperature": 0, "seed": 0, "max_tokens": MAX_TOKENS}


def ask(client, messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, **{**GREEDY, **kw})


@contextmanager
def solo(served, bot=None):
    """(server, client) of a fresh one-conversation server on the module's model (or ``bot``): what a request
    sent there (or a conversation, turn after turn) gets is computed exactly as llasm's own path computes it."""
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import Server, ServeSettings

    srv = Server(bot or served[0].bot, ServeSettings(parallel=1, queue=0, n_ctx=1024, max_audio=MAX_AUDIO, max_body=MAX_BODY))
    try:
        with ServerThread(srv) as st:
            yield srv, openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        srv.close()


def alone(served, messages, **kw):
    """The response to one request on a fresh server (a stream: its chunks, all read)."""
    with solo(served) as (_, c):
        r = ask(c, messages, **kw)
        return list(r) if kw.get("stream") else r


_answers: dict = {}  # reference answers already computed (each is computed the same way every time)


def reference(bot, turns: list[tuple[Path | None, str | None]], max_tokens: int = MAX_TOKENS,
              system: str | None = None) -> list[tuple[str, int]]:
    """(answer, answer tokens) per turn, from Conversation on the reference Assistant (its cache
    cleared first: the computation is the one a fresh server makes)."""
    key = (bot.bundle.manifest.history_turns, tuple(turns), max_tokens, system)
    if key not in _answers:
        _answers[key] = _reference(bot, turns, max_tokens, system)
    return _answers[key]


def _reference(bot, turns, max_tokens, system) -> list[tuple[str, int]]:
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import Conversation
    from llasm_cli.llm.engine import Sampling

    bot.engine.reset()
    conv = Conversation(bot, system=system)
    out = []
    for wav, text in turns:
        conv.add_user(load_audio(wav) if wav else None, text=text)
        answer = "".join(conv.respond(Sampling(temperature=0), max_tokens)).strip()
        out.append((answer, conv.stats.answer_tokens))
    return out


def assert_llasms_answer(bot, turns: list[tuple[Path | None, str | None]], got: str, max_tokens: int = MAX_TOKENS,
                         system: str | None = None) -> None:
    """``got``, the answer to the last of ``turns`` given while other conversations were served, is
    llasm's own: the same, or the same up to the rounding that decides near ties."""
    expected = reference(bot, turns, max_tokens, system)[-1][0]
    if got != expected:
        why = departure(bot, prompt_of(bot, turns, max_tokens, system), got, max_tokens)
        assert why is None, f"{why} (llasm's answer: {expected!r})"


def prompt_positions(bot, wav: Path | None, text: str | None) -> tuple[int, int]:
    """(prompt positions, audio positions) of a one-turn question, counted by the Assistant."""
    from llasm_cli.audio.decode import load_audio

    n = load_audio(wav).size if wav else 0
    audio = bot.audio_positions(n) if wav else 0
    embd = np.zeros((audio - 2, bot.engine.n_embd), np.float32) if wav else None
    segs = bot.prompt(bot.messages(embd, text, None, None))
    return sum(len(s) for s in segs), audio


# --- answers ----------------------------------------------------------------------------


def test_models_and_health(served, client):
    srv, url = served
    assert [m.id for m in client.models.list().data] == [srv.bot.bundle.manifest.name]
    assert client.models.retrieve(srv.bot.bundle.manifest.name).owned_by == "llasm"
    status, _, body = raw(url, "GET", "/health")
    assert status == 200 and body["slots_idle"] + body["slots_busy"] == 4


def finish_reason(n_tokens: int, max_tokens: int = MAX_TOKENS) -> str:
    """What the server reports for an answer of ``n_tokens`` (the reference's count): cut at the limit, or ended."""
    return "length" if n_tokens >= max_tokens else "stop"


@pytest.mark.parametrize("wav,text", [
    (None, QUESTION),
    (JAPAN, None),
    (JAPAN, FRENCH),
    (None, REPEAT),
], ids=["text", "audio", "mixed", "repeat"])
def test_answer_matches_llasm(served, ref, wav, text):
    parts = ([text] if text else []) + ([audio_part(wav)] if wav else [])
    r = alone(served, [user(*parts)])
    [(expected, n_tokens)] = reference(ref, [(wav, text)])
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == finish_reason(n_tokens)
    positions, audio = prompt_positions(ref, wav, text)
    assert r.usage.prompt_tokens == positions
    assert r.usage.prompt_tokens_details.audio_tokens == audio
    assert r.usage.completion_tokens == n_tokens
    assert r.usage.total_tokens == positions + n_tokens
    if wav is not None:  # 2.03 s of speech: 2 boundary rows + one embedding per 320 * stack_factor samples begun
        from llasm_cli.audio.decode import load_audio

        assert audio == 2 + math.ceil(load_audio(wav).size / (320 * ref.bundle.manifest.stack_factor))


def test_string_content_and_audio_formats(served, ref, tmp_path):
    [(repeated, _)] = reference(ref, [(None, REPEAT)])
    assert alone(served, [{"role": "user", "content": REPEAT}]).choices[0].message.content == repeated
    [(heard, _)] = reference(ref, [(JAPAN, None)])
    samples, rate = sf.read(JAPAN, dtype="float32")
    for fmt in ("flac", "ogg", "mp3"):
        data = encoded(samples, rate, fmt.upper())
        r = alone(served, [user(audio_part(data, fmt))])
        if fmt == "flac":  # lossless: the very samples of the wav
            expected = heard
        else:  # lossy: what llasm hears in that file on its own
            (tmp_path / f"question.{fmt}").write_bytes(data)
            [(expected, _)] = reference(ref, [(tmp_path / f"question.{fmt}", None)])
        assert r.choices[0].message.content == expected, fmt
    stereo = encoded(np.repeat(samples[:, None], 2, axis=1), rate, "WAV")  # two channels, averaged
    assert alone(served, [user(audio_part(stereo))]).choices[0].message.content == heard


def test_stream_equals_whole_answer(served):
    messages = [user(FRENCH, audio_part(OCEAN))]
    whole = alone(served, messages)
    chunks = alone(served, messages, stream=True, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert not chunks[-1].choices  # the usage chunk comes last, with no choices
    u, w = chunks[-1].usage, whole.usage
    assert (u.prompt_tokens, u.completion_tokens, u.prompt_tokens_details.audio_tokens) == (
        w.prompt_tokens, w.completion_tokens, w.prompt_tokens_details.audio_tokens)
    assert len({c.id for c in chunks}) == 1


@pytest.fixture(scope="module")
def with_history():
    """The built-in model with its manifest's history_turns lifted: the prompt holds the whole
    conversation (what any model trained on conversations does)."""
    from dataclasses import replace

    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.bundle import Bundle

    b = load_bundle(DEFAULT)
    bot = Assistant(Bundle(b.root, replace(b.manifest, history_turns=None)))
    yield bot
    bot.close()


def test_a_single_question_model_answers_the_last_question_alone(served, ref):
    """The built-in model was trained on single questions (history_turns 0): a request with history
    gets the last question's own answer, and only its audio is counted."""
    alone_answer = reference(ref, [(HAIKU, "And this one?")])[0][0]
    history = [user(audio_part(JAPAN)), {"role": "assistant", "content": "tokyo"}, user("And this one?", audio_part(HAIKU))]
    with solo(served) as (_, client):
        got = ask(client, history)
        single = ask(client, [user("And this one?", audio_part(HAIKU))])
    assert got.choices[0].message.content == alone_answer == single.choices[0].message.content
    assert got.usage.prompt_tokens == single.usage.prompt_tokens
    assert got.usage.prompt_tokens_details.audio_tokens == single.usage.prompt_tokens_details.audio_tokens


def test_multi_turn_with_audio_history_reuses_the_cache(served, with_history):
    ref = with_history
    turns = [(JAPAN, None), (HAIKU, "And this one?")]
    expected = reference(ref, turns)
    with solo(served, ref) as (srv, client):
        first = ask(client, [user(audio_part(JAPAN))])
        assert first.choices[0].message.content == expected[0][0]
        calls = srv.bot.tower.encode_calls
        history = [user(audio_part(JAPAN)), {"role": "assistant", "content": first.choices[0].message.content},
                   user("And this one?", audio_part(HAIKU))]
        second = ask(client, history)
        assert second.choices[0].message.content == expected[1][0]
        encoded = srv.bot.tower.encode_calls - calls
    from llasm_cli.audio.decode import load_audio

    before = ref.tower.encode_calls
    ref.tower.encode(load_audio(HAIKU))
    per_clip = ref.tower.encode_calls - before  # windows (a chunked model: chunks) of one encode of the clip
    assert encoded == per_clip  # only the new clip was encoded
    # everything the first request left in its sequence was kept: its prompt and the answer's ids (all
    # of them decoded when the answer ended; an answer cut at max_tokens never decodes its last one)
    cut = first.choices[0].finish_reason == "length"
    assert second.usage.prompt_tokens_details.cached_tokens == (
        first.usage.prompt_tokens + first.usage.completion_tokens - cut)
    new_clip = ref.audio_positions(load_audio(HAIKU).size)
    assert second.usage.prompt_tokens_details.audio_tokens == first.usage.prompt_tokens_details.audio_tokens + new_clip


def test_sampling_controls(served, client, ref):
    messages = [user(REPEAT)]
    hot = [ask(client, messages, temperature=1.5, seed=7).choices[0].message.content for _ in range(2)]
    assert hot[0] == hot[1]  # the same seed, the same answer
    one = ask(client, messages, max_tokens=1)
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 1
    whole = alone(served, messages).choices[0].message.content
    assert whole == reference(ref, [(None, REPEAT)])[0][0]
    word = whole.split()[2]  # a stop string inside the answer: the answer ends just before it
    assert whole.index(word) > 0
    stopped = alone(served, messages, stop=[word, "zebra"])
    assert stopped.choices[0].message.content == whole[: whole.index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in alone(served, messages, stop=word, stream=True)
                       if c.choices)
    assert streamed == whole[: whole.index(word)]
    forced = ask(client, messages, max_tokens=24, extra_body={"ignore_eos": True})
    assert forced.usage.completion_tokens == 24 and forced.choices[0].finish_reason == "length"


def test_concurrent_requests_get_their_own_answers(client, ref):
    """Eight requests at once on four sequences: each answer is the one it gets alone, up to the
    rounding that decides near ties when several conversations share the batches."""
    cases = [(JAPAN, None), (OCEAN, None), (JAPAN, FRENCH), (None, REPEAT)] * 2
    expected = {c: reference(ref, [c])[0][0] for c in cases}
    got: list = [None] * len(cases)

    def one(i: int) -> None:
        wav, text = cases[i]
        parts = ([text] if text else []) + ([audio_part(wav)] if wav else [])
        try:
            if i % 2:
                got[i] = "".join(c.choices[0].delta.content or "" for c in ask(client, [user(*parts)], stream=True))
            else:
                got[i] = ask(client, [user(*parts)]).choices[0].message.content
        except Exception as exc:  # reported by the comparison below
            got[i] = repr(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for case, answer in zip(cases, got):
        if answer != expected[case]:
            assert_llasms_answer(ref, [case], answer)


# --- refusals ---------------------------------------------------------------------------


def test_api_key(served, client):
    srv, url = served
    srv.settings.api_key = "sesame"
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            ask(client, [user(REPEAT)])
        assert_openai_error(err.value.body and {"error": err.value.body}, "invalid_api_key")
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert ask(keyed, [user(REPEAT)]).choices[0].message.content
        status, headers, body = raw(url, "GET", "/v1/models")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert raw(url, "GET", "/health")[0] == 200  # health needs no key
    finally:
        srv.settings.api_key = None


def _nan_wav() -> bytes:
    x = np.full(16000, 0.1, dtype=np.float32)
    x[8000] = np.nan
    return encoded(x, 16000, "WAV", "FLOAT")


def _long_wav() -> bytes:
    rng = np.random.default_rng(0)
    return encoded((0.01 * rng.standard_normal(int(8000 * (MAX_AUDIO + 5)))).astype(np.float32), 8000, "WAV", "PCM_16")


AUDIO_PARAM = "messages[0].content[0].input_audio"


@pytest.mark.parametrize("messages,code,param", [
    ([user({"type": "image_url", "image_url": {"url": "http://x/y.png"}})], "unsupported_content_type",
     "messages[0].content[0].type"),
    ([user({"type": "input_audio", "input_audio": {"data": "not base64 at all!", "format": "wav"}})],
     "invalid_base64", AUDIO_PARAM + ".data"),
    ([user({"type": "input_audio", "input_audio": {"data": "UklGRg=", "format": "wav"}})], "invalid_base64",
     AUDIO_PARAM + ".data"),
    ([user(audio_part(b"this is plain text, not a wav file" * 20))], "invalid_audio", AUDIO_PARAM),
    ([user(audio_part(b"RIFF\x24\x00\x00\x00WAVEfmt "))], "invalid_audio", AUDIO_PARAM),
    ([user(audio_part(_nan_wav()))], "invalid_audio", AUDIO_PARAM),
    ([user(audio_part(_long_wav()))], "audio_too_long", AUDIO_PARAM),
    ([user(audio_part(JAPAN, "aiff"))], "unsupported_value", AUDIO_PARAM + ".format"),
    ([{"role": "user", "content": f"message {i}"} for i in range(10_000)], "too_many_messages", "messages"),
    ([user("word " * 3000)], "context_length_exceeded", "messages"),
    ([{"role": "assistant", "content": [audio_part(JAPAN)]}], "invalid_value", AUDIO_PARAM.replace(
        ".input_audio", "")),
    ([{"role": "robot", "content": "hi"}], "invalid_value", "messages[0].role"),
    ([], "invalid_value", "messages"),
], ids=["unknown-part-type", "not-base64", "bad-padding", "text-as-audio", "truncated-wav", "nan-samples",
        "too-long", "unknown-format", "10000-messages", "larger-than-context", "assistant-audio", "unknown-role",
        "no-messages"])
def test_hostile_requests_get_400(client, messages, code, param):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, messages)
    assert err.value.status_code == 400
    assert_openai_error({"error": err.value.body}, code, param)


@pytest.mark.parametrize("body,code,param", [
    (b'{"messages": [', "invalid_json", None),
    (b"\xff\xfe\x00garbage", "invalid_json", None),
    (b"", "invalid_json", None),
    (b'{"messages": NaN}', "invalid_json", None),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", None),
    (b'[{"role": "user", "content": "hi"}]', "invalid_type", None),
    (b'{"messages": "hello"}', "invalid_type", "messages"),
    (b'{"messages": [{"role": "user", "content": 42}]}', "invalid_type", "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": [42]}]}', "invalid_type", "messages[0].content[0]"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "invalid_type", "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}', "invalid_value", "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}', "invalid_type", "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "invalid_value", "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "invalid_type", "stream"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}', "invalid_type", "seed"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}', "invalid_type", "stop"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 3}', "unsupported_value", "n"),
    (b'{"messages": [{"role": "user"}]}', "missing_required_parameter", "messages[0].content"),
], ids=["truncated", "not-utf8", "empty", "nan-literal", "deep-nesting", "array-body", "messages-string",
        "content-number", "part-number", "temperature-string", "temperature-range", "max-tokens-string",
        "max-tokens-zero", "stream-string", "seed-float", "stop-numbers", "n-3", "no-content"])
def test_malformed_bodies_get_400(served, body, code, param):
    status, _, reply = raw(served[1], "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert status == 400, reply
    assert_openai_error(reply, code, param)


def test_body_size_unknown_paths_and_methods(served, client):
    url = served[1]
    with pytest.raises(openai.APIStatusError) as err:  # a real body over the limit
        ask(client, [user("x" * (MAX_BODY + 1000))])
    assert err.value.status_code == 413
    assert_openai_error({"error": err.value.body}, "request_too_large")
    u = urlparse(url)  # a declared length over the limit is refused before the body is read
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(10 * MAX_BODY))
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and json.loads(res.read())["error"]["code"] == "request_too_large"
    conn.close()
    status, _, body = raw(url, "GET", "/v1/nothing")
    assert status == 404
    assert_openai_error(body)
    status, _, body = raw(url, "GET", "/v1/chat/completions")
    assert status == 405
    assert_openai_error(body)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- several at once: the queue, and clients that leave -----------------------------------


def test_full_queue_is_503_and_a_client_that_leaves_frees_its_sequence(served, ref):
    """One sequence, no queue: a second request is refused at once with Retry-After; closing the
    first one's stream frees the sequence long before its 1900 tokens could have been decoded."""
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import Server, ServeSettings

    srv = Server(served[0].bot, ServeSettings(parallel=1, queue=0, n_ctx=2048))
    try:
        with ServerThread(srv) as st:
            c = openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            stream = ask(c, [user(REPEAT)], stream=True, max_tokens=1900, extra_body={"ignore_eos": True})
            chunks = iter(stream)
            next(chunks)
            assert next(chunks).choices[0].delta.content
            with pytest.raises(openai.APIStatusError) as err:
                ask(c, [user(REPEAT)])
            assert err.value.status_code == 503
            assert int(err.value.response.headers["retry-after"]) >= 1
            assert_openai_error({"error": err.value.body}, "server_busy")
            t0 = time.monotonic()
            stream.close()
            while srv.health()[1]["requests_in_flight"] or srv.health()[1]["slots_busy"]:
                assert time.monotonic() - t0 < 10, srv.health()
                time.sleep(0.01)
            assert srv.scheduler.slots[0].fed_len < 1000  # stopped, not run to the end
            assert srv.health()[1]["requests_served"] == 0
            again = ask(c, [user(REPEAT)])
            assert_llasms_answer(ref, [(None, REPEAT)], again.choices[0].message.content)
            assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
            # a client that gives up on a whole (non-streamed) answer frees the sequence too
            impatient = openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=0.5)
            with pytest.raises(openai.APITimeoutError):
                ask(impatient, [user(REPEAT)], max_tokens=1900, extra_body={"ignore_eos": True})
            t0 = time.monotonic()
            while srv.health()[1]["requests_in_flight"] or srv.health()[1]["slots_busy"]:
                assert time.monotonic() - t0 < 10, srv.health()
                time.sleep(0.01)
            assert srv.scheduler.slots[0].fed_len < 1000
            assert srv.health()[1]["requests_served"] == 1
    finally:
        srv.close()


def test_a_shared_prefix_is_copied_from_a_busy_sequence(served, ref):
    """A long system prompt another sequence holds is copied (cells shared), not prefilled again,
    and the answer is the one llasm gives on its own (up to the rounding of shared batches)."""
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import Server, ServeSettings

    sentence = "You are a helpful assistant. Answer every question in one short sentence. "
    system = sentence
    while len(ref.engine.tokenize(system)) < 150:  # long, but well inside one 512-position prefill batch
        system += sentence
    question = QUESTION
    srv = Server(served[0].bot, ServeSettings(parallel=2, queue=0, n_ctx=2048))
    try:
        with ServerThread(srv) as st:
            c = openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            busy = ask(c, [{"role": "system", "content": system}, user(REPEAT)], stream=True, max_tokens=1500,
                       extra_body={"ignore_eos": True})
            chunks = iter(busy)
            next(chunks)  # the first sequence now holds the system prompt and is answering
            r = ask(c, [{"role": "developer", "content": system}, user(question)])
            busy.close()
    finally:
        srv.close()
    assert_llasms_answer(ref, [(None, question)], r.choices[0].message.content, system=system)
    assert len(ref.engine.tokenize(system)) < r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens


def test_tiny_random_bundle_with_the_ggml_tower(swiglu, question_wav):
    """Any bundle serves, here a tiny random one built at test time, its f32 variant (exact KV and
    attention) and the ggml (mtmd) tower in the encoder thread: the answer and the counts are
    llasm's own."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import Conversation
    from llasm_cli.llm.engine import Sampling
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import ServeSettings, close_server, load_server

    srv = load_server(swiglu[1], ServeSettings(parallel=2, queue=0, n_ctx=512), backend="ggml", variant="f32")
    try:
        with ServerThread(srv) as st:
            c = openai.OpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            r = ask(c, [user("please answer:", audio_part(question_wav))], max_tokens=8)
    finally:
        close_server(srv)
    bot = Assistant(swiglu[1], backend="ggml", llm_variant="f32")
    try:
        conv = Conversation(bot)
        audio = load_audio(question_wav)
        conv.add_user(audio, text="please answer:")
        expected = "".join(conv.respond(Sampling(temperature=0), 8))
        assert r.choices[0].message.content == expected.lstrip()
        assert r.usage.completion_tokens == conv.stats.answer_tokens
        assert r.usage.prompt_tokens == conv.stats.prompt_tokens
        assert r.usage.prompt_tokens_details.audio_tokens == bot.audio_positions(audio.size)
    finally:
        bot.close()


def test_cli_port_taken_exits_15():
    """`llasm serve` on a port that is taken: one line on stderr and exit code 15, before any model loads."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "llasm_cli", "serve", "--port", str(port)], capture_output=True,
                             text=True, timeout=120)
    assert res.returncode == 15, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_startup_warns_when_open_to_others_without_a_key(served):
    import socket

    from llasm_cli.serving.http import bind, startup_lines

    srv = served[0]
    with bind("127.0.0.1", 0) as local, socket.socket() as everywhere:
        everywhere.bind(("0.0.0.0", 0))  # bound, never listening: nothing can reach it
        assert not any(line.startswith("warning") for line in startup_lines(srv, local))
        assert startup_lines(srv, everywhere)[0].startswith("warning: listening on 0.0.0.0 without --api-key")
        srv.settings.api_key = "k"
        try:
            assert not any(line.startswith("warning") for line in startup_lines(srv, everywhere))
        finally:
            srv.settings.api_key = None
