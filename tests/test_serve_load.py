"""`llasm serve` under load, as a separate process started by its own command line: more clients
than it admits send mixed text/audio requests (whole and streamed, some with an earlier spoken
turn) for a fixed time. Every request gets the answer it gets alone or a clean 503 with
Retry-After, /health answers throughout, and the server's memory stays flat.

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

from llasm_cli.bundle import default_bundle_path

openai = pytest.importorskip("openai")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLIENTS = 10
PARALLEL, QUEUE = 3, 3  # 6 admitted at once: with 10 clients some are turned away
WARM_SECONDS = 3.0  # load before the first memory reading (caches, allocator pools, thread pools fill)
LOAD_SECONDS = 10.0
MAX_REQUESTS = 3000
RSS_MARGIN_MB = 24

pytestmark = pytest.mark.skipif(default_bundle_path() is None, reason="no packaged demo model")


def _audio(name: str) -> dict:
    data = base64.b64encode((EXAMPLES / name).read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def _cases() -> list[tuple[str, list[dict], str]]:
    """(name, messages, the demo's answer)."""
    seven = _audio("what_is_seven_plus_five.wav")
    twelve = _audio("how_much_is_twelve_times_three.wav")
    twenty = _audio("calculate_twenty_minus_four.wav")
    return [
        ("audio", [{"role": "user", "content": [seven]}], "twelve"),
        ("audio", [{"role": "user", "content": [twelve]}], "thirty six"),
        ("mixed", [{"role": "user", "content": [{"type": "text", "text": "answer in Chinese"}, seven]}], "十二"),
        ("text", [{"role": "user", "content": "repeat after me: the cat likes the red box"}], "the cat likes the box"),
        ("history", [{"role": "user", "content": [seven]}, {"role": "assistant", "content": "twelve"},
                     {"role": "user", "content": [twenty]}], None),
    ]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    env = {**os.environ, "LLASM_THREADS": "2"}
    env.pop("LLASM_MODEL", None)  # the packaged demo
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
    if not stream:
        return client.chat.completions.create(model="llasm-demo", messages=messages, temperature=0).choices[0].message.content
    out = client.chat.completions.create(model="llasm-demo", messages=messages, temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in out if c.choices)


def test_mixed_load(server_process):
    proc, url = server_process
    cases = _cases()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    expected = [_answer(client, messages, stream=False) for _, messages, _ in cases]  # each alone, first
    assert [e for e, (_, _, known) in zip(expected, cases) if known] == [k for _, _, k in cases if k]

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
            name, messages, _ = cases[i % len(cases)]
            stream = bool((i // len(cases)) % 2)
            try:
                got = _answer(c, messages, stream)
                outcome = "ok" if got == expected[i % len(cases)] else "wrong"
                detail: object = (name, stream, got)
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

    outcomes = [o for _, o, _ in results]
    bad = [(o, d) for _, o, d in results if o not in ("ok", "busy")]
    assert not bad, bad[:5]
    loaded = [o for p, o, _ in results if p == "load"]
    assert loaded.count("ok") >= 10, outcomes
    assert "busy" in outcomes  # more clients than admitted: some were turned away, cleanly
    assert health and all(status == 200 for _, status in health), health
    assert max(t for t, _ in health) < 2.0
    assert abs(rss_after - rss_before) < RSS_MARGIN_MB, (rss_before, rss_after)
    status, body = _health(url)
    assert status == 200 and body["slots_busy"] == 0 and body["queued"] == 0
    print(f"\n{len(results)} requests: {outcomes.count('ok')} answered, {outcomes.count('busy')} turned away (503); "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MB; /health slowest {max(t for t, _ in health) * 1e3:.0f} ms")
