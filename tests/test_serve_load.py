"""`llasm serve` under load, as a separate process started by its own command line: more clients
than it admits send mixed text/audio requests (whole and streamed, some with an earlier spoken
turn) for a fixed time. Every request gets llasm's own answer or a clean 503 with Retry-After,
/health answers throughout, and the server's memory stays flat.

llasm's own answer is what ``Conversation`` on an ``Assistant`` of the packaged model says in this
process (temperature 0), so nothing here depends on what the model's weights say. Under load,
conversations share the server's batches and KV cache, and llama.cpp's rounding may decide a near
tie the other way (tests/near_greedy.py): an answer that is not the one the server gave alone must
be llasm's answer up to that rounding.

Loopback only, bounded in time (LOAD_SECONDS) and in count (MAX_REQUESTS).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from llasm_cli.formats.built_in import demo_bundle_path
from llasm_cli.formats.bundle import load_bundle
from tests.near_greedy import departure, prompt_of

openai = pytest.importorskip("openai")

DEFAULT = demo_bundle_path()
MODEL = load_bundle(DEFAULT).manifest.name if DEFAULT is not None else "llasm"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
CLIENTS = 10
PARALLEL, QUEUE = 3, 3  # 6 admitted at once: with 10 clients some are turned away
WARM_SECONDS = 3.0  # load before the first memory reading (caches, allocator pools, thread pools fill)
LOAD_SECONDS = 10.0
MAX_REQUESTS = 3000
RSS_MARGIN_MB = 24
MAX_TOKENS = 8  # per answer: the 30-layer LLM's answers cut short, so that requests keep coming

pytestmark = pytest.mark.skipif(DEFAULT is None, reason="no packaged default model")


def _audio(wav: Path) -> dict:
    data = base64.b64encode(wav.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


JAPAN = EXAMPLES / "what_is_the_capital_of_japan.wav"
CASES = [  # (name, user turns: (audio, typed text) each); an earlier turn's answer is the one the server gave
    ("audio", [(JAPAN, None)]),
    ("audio", [(EXAMPLES / "what_is_the_largest_ocean_on_earth.wav", None)]),
    ("mixed", [(JAPAN, "Answer in French.")]),
    ("text", [(None, "Repeat after me: the cat likes the red box")]),
    ("history", [(JAPAN, None), (EXAMPLES / "how_do_i_fix_a_flat_tire.wav", None)]),
]


@pytest.fixture(scope="module")
def llasm():
    """llasm's own path on the packaged model, in this process."""
    from llasm_cli.assistant import Assistant

    bot = Assistant(DEFAULT, n_threads=2)
    yield bot
    bot.close()


def _own_answers(bot, turns: list[tuple[Path | None, str | None]]) -> list[str]:
    """llasm's answer to each turn (temperature 0, ``MAX_TOKENS``), computed as a fresh server computes it."""
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import Conversation
    from llasm_cli.llm.engine import Sampling

    bot.engine.reset()
    conv = Conversation(bot)
    out = []
    for wav, text in turns:
        conv.add_user(load_audio(wav) if wav else None, text=text)
        out.append("".join(conv.respond(Sampling(temperature=0), MAX_TOKENS)).strip())
    return out


def _messages(turns: list[tuple[Path | None, str | None]], answers: list[str]) -> list[dict]:
    """The request for ``turns``: typed text as a string or a text part, audio as input_audio parts,
    and ``answers`` (the server's) between the user turns."""
    out: list[dict] = []
    for (wav, text), answer in zip(turns, [*answers, None]):
        if wav is None:
            out.append({"role": "user", "content": text})
        else:
            out.append({"role": "user", "content": ([{"type": "text", "text": text}] if text else []) + [_audio(wav)]})
        if answer is not None:
            out.append({"role": "assistant", "content": answer})
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    env = {**os.environ, "LLASM_THREADS": "2", "LLASM_MODEL": "demo"}  # the packaged demo model
    proc = subprocess.Popen(
        [sys.executable, "-m", "llasm_cli", "serve", "--port", "0", "--parallel", str(PARALLEL), "--queue",
         str(QUEUE), "--ctx", "1024"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    url, lines = None, []
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        url = m.group(1) if m else None
    if url is None:
        proc.kill()
        pytest.fail("llasm serve did not start: " + "".join(lines) + proc.stderr.read())
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining: a full pipe would block it
    yield proc, url
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _health(url: str) -> tuple[int, dict]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request("GET", "/health")
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def _answer(client, messages, stream: bool) -> str:
    kw = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS}
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    out = client.chat.completions.create(**kw, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in out if c.choices)


def test_mixed_load(server_process, llasm):
    proc, url = server_process
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    own = [_own_answers(llasm, turns)[-1] for _, turns in CASES]  # llasm's answers
    # each case alone, first: the first request on the fresh server is computed as llasm computes it
    first = _answer(client, _messages(CASES[0][1], []), stream=False)
    assert first == own[0]
    assert all(turns[0] == CASES[0][1][0] for _, turns in CASES if len(turns) > 1)
    cases = [(name, _messages(turns, [first] * (len(turns) - 1))) for name, turns in CASES]  # earlier turns: JAPAN
    expected = [first] + [_answer(client, messages, stream=False) for _, messages in cases[1:]]
    verdicts: dict[tuple[int, str], str | None] = {}  # (case, answer) -> how it departs from llasm's, or None

    def departs(case: int, answer: str) -> str | None:
        """How ``answer`` departs from llasm's own (None: it is llasm's, maybe up to rounding)."""
        if answer == own[case]:
            return None
        if (case, answer) not in verdicts:
            turns = CASES[case][1]
            verdicts[case, answer] = departure(llasm, prompt_of(llasm, turns, MAX_TOKENS), answer, MAX_TOKENS)
        return verdicts[case, answer]

    for case, answer in enumerate(expected):
        assert departs(case, answer) is None, (CASES[case][0], departs(case, answer))

    stop = threading.Event()
    results: list[tuple[str, str, object]] = []  # (phase, outcome, detail)
    lock = threading.Lock()
    phase = ["warm"]

    def worker(k: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        i = k
        while not stop.is_set():
            with lock:
                if len(results) >= MAX_REQUESTS:
                    return
            name, messages = cases[i % len(cases)]
            stream = bool((i // len(cases)) % 2)
            try:
                got = _answer(c, messages, stream)
                outcome = "ok" if got == expected[i % len(cases)] else "other"  # judged below, in this thread
                detail: object = (i % len(cases), stream, got)
            except openai.APIStatusError as exc:
                retry = exc.response.headers.get("retry-after", "")
                clean = exc.status_code == 503 and retry.isdigit() and exc.body and exc.body.get("code") == "server_busy"
                outcome, detail = ("busy" if clean else "error"), (exc.status_code, retry, exc.body)
                time.sleep(0.05 + 0.02 * (k % 5))  # back off a little, as a client told Retry-After would
            except Exception as exc:
                outcome, detail = "error", repr(exc)
            with lock:
                results.append((phase[0], outcome, detail))
            i += 1

    health: list[tuple[float, int]] = []

    def watch() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = _health(url)[0]
            except Exception:
                status = -1
            health.append((time.monotonic() - t0, status))
            time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    time.sleep(WARM_SECONDS)
    rss_before = _rss_mb(proc.pid)
    phase[0] = "load"
    time.sleep(LOAD_SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    deadline = time.monotonic() + 30
    while _health(url)[1]["requests_in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rss_after = _rss_mb(proc.pid)

    # an answer other than the one given alone: llasm's up to rounding ("near"), or wrong
    results = [(p, o if o != "other" else ("near" if departs(d[0], d[2]) is None else "wrong"), d)
               for p, o, d in results]
    outcomes = [o for _, o, _ in results]
    bad = [(o, d, departs(d[0], d[2]) if o == "wrong" else None) for _, o, d in results if o not in ("ok", "near", "busy")]
    assert not bad, bad[:5]
    loaded = [o for p, o, _ in results if p == "load"]
    assert loaded.count("ok") + loaded.count("near") >= 10, outcomes
    assert "busy" in outcomes  # more clients than admitted: some were turned away, cleanly
    assert health and all(status == 200 for _, status in health), health
    assert max(t for t, _ in health) < 2.0
    assert abs(rss_after - rss_before) < RSS_MARGIN_MB, (rss_before, rss_after)
    status, body = _health(url)
    assert status == 200 and body["slots_busy"] == 0 and body["queued"] == 0
    print(f"\n{len(results)} requests: {outcomes.count('ok')} answered as alone, {outcomes.count('near')} as llasm "
          f"up to rounding, {outcomes.count('busy')} turned away (503); "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MB; /health slowest {max(t for t, _ in health) * 1e3:.0f} ms")
