"""`llasm pull` and `llasm models` against a real HTTP server on 127.0.0.1 that answers as the hub.

No mock of huggingface_hub: the CLI runs as a subprocess with HF_ENDPOINT pointing at the server
below and HF_HOME at a temp folder. The server answers what huggingface_hub 2.x asks for:

- ``GET /api/models/{repo}/revision/{rev}?blobs=True``: ``id``, ``sha`` and ``siblings`` with
  ``size``, ``blobId`` and ``lfs`` (``sha256``, ``size``, ``pointerSize``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit`` and ``ETag``; LFS files answer
  302 with ``X-Linked-Etag``/``X-Linked-Size`` and a ``Location`` on another host name
  (``localhost``, the "CDN") that serves the bytes, with ``Range`` support;
- errors as the hub sends them: 404 with ``X-Error-Code: RepoNotFound``, 403 with ``GatedRepo``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from llasm_cli.hub import storage_folder

from .test_errors import assert_clean_error, run_llasm

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ULTRAVOX = "ggml-org/ultravox-v0_5-llama-3_2-1b-GGUF"
LLM = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
MMPROJ = "mmproj-ultravox-v0_5-llama-3_2-1b-f16.gguf"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: set[str]
    gated: bool = False
    advertised_size: dict[str, int] = field(default_factory=dict)  # lie about a size (disk-space test)
    corrupt: set[str] = field(default_factory=set)  # serve other bytes than advertised


class FakeHub:
    """The hub's API and file URLs, on a loopback port; records every request it gets."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_after: dict[str, int] = {}  # file name -> cut its next GET after this many bytes
        self.unavailable: set[str] = set()  # file names whose GETs answer 503
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, head=True)

            def do_GET(self) -> None:
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def file_gets(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of the bytes of ``name``."""
        return [rng for method, path, rng in self.requests
                if method == "GET" and path.startswith("/cdn/") and path.endswith("/" + name)]

    # --- answers ---------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            return self.model_info(h, m[1], m[2])
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(h, m[1], m[2], m[3], head)
        if m := re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path):
            return self.serve_bytes(h, m[1], m[2], head)
        self.reply(h, 404, headers={"X-Error-Code": "EntryNotFound"})

    def reply(self, h, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False,
              length: int | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def repo_or_error(self, h, repo: str, rev: str, head: bool = False) -> Repo | None:
        r = self.repos.get(repo)
        if r is None:
            self.reply(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
        elif r.gated:
            self.reply(h, 403, b'{"error":"Access to this model is restricted"}', {"X-Error-Code": "GatedRepo"}, head)
        elif rev not in ("main", COMMIT):
            self.reply(h, 404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
        else:
            return r
        return None

    def model_info(self, h, repo: str, rev: str) -> None:
        r = self.repo_or_error(h, repo, rev)
        if r is None:
            return
        siblings = []
        for name, data in r.files.items():
            size = r.advertised_size.get(name, len(data))
            s = {"rfilename": name, "size": size, "blobId": git_blob_id(data)}
            if name in r.lfs:
                s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
            siblings.append(s)
        body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "gated": False,
                           "siblings": siblings}).encode()
        self.reply(h, 200, body, {"Content-Type": "application/json"})

    def resolve(self, h, repo: str, rev: str, name: str, head: bool) -> None:
        r = self.repo_or_error(h, repo, rev, head)
        if r is None:
            return
        if name not in r.files:
            self.reply(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, head)
            return
        data = r.files[name]
        if name in r.lfs:  # the hub redirects LFS files to its CDN, another host
            self.reply(h, 302, b"", {
                "Location": f"http://localhost:{self.port}/cdn/{repo}/{name}",
                "X-Repo-Commit": COMMIT, "ETag": '"pointer-etag"',
                "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Linked-Size": str(r.advertised_size.get(name, len(data))),
            }, head)
            return
        self.serve(h, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_id(data)}"'}, name, head)

    def serve_bytes(self, h, repo: str, name: str, head: bool) -> None:
        r = self.repos[repo]
        data = r.files[name]
        if name in r.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.serve(h, data, {"ETag": f'"{hashlib.sha256(r.files[name]).hexdigest()}"'}, name, head)

    def serve(self, h, data: bytes, headers: dict[str, str], name: str, head: bool) -> None:
        cut = None if head else self.cut_after.pop(name, None)
        if cut is None and not head and name in self.unavailable:  # after a cut, when both are set
            self.reply(h, 503, b"busy")
            return
        start = 0
        if (rng := h.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
            start = int(m[1])
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        if cut is None:
            self.reply(h, 206 if start else 200, body, headers, head)
            return
        self.reply(h, 206 if start else 200, body[:cut], headers, length=len(body))  # promise all, send part
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def hub():
    server = FakeHub()
    server.repos[ULTRAVOX] = Repo(
        files={LLM: random_bytes(300_000, 1), "Llama-3.2-1B-Instruct-Q8_0.gguf": random_bytes(5000, 2),
               MMPROJ: random_bytes(200_000, 3), "README.md": b"# ultravox\n"},
        lfs={LLM, "Llama-3.2-1B-Instruct-Q8_0.gguf", MMPROJ},
    )
    server.repos["test/plain"] = Repo(
        files={"config.json": b'{"a": 1}\n', "weights/model.safetensors": random_bytes(50_000, 4)},
        lfs={"weights/model.safetensors"},
    )
    server.repos["test/resume"] = Repo(files={"big.gguf": random_bytes(2_000_000, 5)}, lfs={"big.gguf"})
    server.repos["test/corrupt"] = Repo(files={"bad.gguf": random_bytes(100_000, 6)}, lfs={"bad.gguf"},
                                        corrupt={"bad.gguf"})
    server.repos["test/huge"] = Repo(files={"huge.gguf": random_bytes(1000, 7)}, lfs={"huge.gguf"},
                                     advertised_size={"huge.gguf": 1 << 60})
    server.repos["test/gated"] = Repo(files={"x.gguf": b"x"}, lfs={"x.gguf"}, gated=True)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def hf_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5",
               HF_HUB_DOWNLOAD_TIMEOUT="5", NO_COLOR="1", **extra)
    return env


def pull(env: dict[str, str], *args: str):
    return run_llasm("pull", *args, env=env)


def test_pull_fetches_the_registered_files_once(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    res = pull(env, "ultravox-1b")
    assert res.returncode == 0, res.stderr
    snapshot = Path(res.stdout.strip())
    assert snapshot == storage_folder(ULTRAVOX, tmp_path / "hf" / "hub") / "snapshots" / COMMIT
    files = hub.repos[ULTRAVOX].files
    assert sorted(p.name for p in snapshot.iterdir()) == sorted([LLM, MMPROJ])  # the Q4_K_M and the projector
    for name in (LLM, MMPROJ):
        assert (snapshot / name).read_bytes() == files[name]
    assert "llasm ask question.wav -m ultravox-1b" in res.stderr  # it runs (test_published runs a pulled pair)
    assert (snapshot.parent.parent / "refs" / "main").read_text() == COMMIT
    assert not list((snapshot.parent.parent / "blobs").glob("*.incomplete"))

    gets = len([r for r in hub.requests if r[0] == "GET"])
    again = pull(env, "ultravox-1b")
    assert again.returncode == 0 and again.stdout == res.stdout, again.stderr
    new_gets = [r for r in hub.requests if r[0] == "GET"][gets:]
    assert all(path.startswith("/api/") for _, path, _ in new_gets), new_gets  # metadata only, no bytes

    offline = pull({**env, "HF_HUB_OFFLINE": "1"}, "ultravox-1b")
    assert offline.returncode == 0 and offline.stdout == res.stdout, offline.stderr

    listing = run_llasm("models", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.startswith("  ") and line[2] != " "}
    assert {"ultravox-1b", "ultravox-8b", "voxtral-3b", "qwen2.5-omni-3b", "llasm-cllama2", "whisper-large-v2"} <= set(rows)
    assert rows["ultravox-1b"].split()[3] == "cached" and rows["voxtral-3b"].split()[3] == "-"
    assert rows["ultravox-1b"].rstrip().endswith("runs") and rows["qwen2.5-omni-3b"].rstrip().endswith("runs")


def test_pull_a_repo_gets_every_file_and_checks_git_blob_ids(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    res = pull(env, "test/plain", "--revision", COMMIT)
    assert res.returncode == 0, res.stderr
    snapshot = Path(res.stdout.strip())
    for name, data in hub.repos["test/plain"].files.items():
        assert (snapshot / name).read_bytes() == data


def test_an_interrupted_download_resumes(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    data = hub.repos["test/resume"].files["big.gguf"]
    hub.cut_after["big.gguf"] = 700_000
    hub.unavailable.add("big.gguf")  # the connection drops, then the server is busy: this run gives up
    first = pull(env, "test/resume")
    hub.unavailable.discard("big.gguf")
    assert_clean_error(first, 12, "503")
    blobs = storage_folder("test/resume", tmp_path / "hf" / "hub") / "blobs"
    partial = blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete"
    assert partial.stat().st_size == 700_000

    second = pull(env, "test/resume")
    assert second.returncode == 0, second.stderr
    got = (Path(second.stdout.strip()) / "big.gguf").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert hub.file_gets("big.gguf")[-1] == "bytes=700000-"
    assert not partial.exists()


def test_a_dropped_connection_resumes_in_the_same_run(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    before = len(hub.file_gets("big.gguf"))
    hub.cut_after["big.gguf"] = 1_234_567
    res = pull(env, "test/resume")
    assert res.returncode == 0, res.stderr
    assert hub.file_gets("big.gguf")[before:] == [None, "bytes=1234567-"]
    got = (Path(res.stdout.strip()) / "big.gguf").read_bytes()
    assert got == hub.repos["test/resume"].files["big.gguf"]


def test_checksum_mismatch_leaves_nothing_in_the_cache(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    assert_clean_error(pull(env, "test/corrupt"), 14, "bad.gguf", "sha256", "deleted")
    storage = storage_folder("test/corrupt", tmp_path / "hf" / "hub")
    left = [p for p in storage.rglob("*") if p.is_file() or p.is_symlink()] if storage.exists() else []
    assert not [p for p in left if "blobs" in p.parts or "snapshots" in p.parts], left


def test_not_enough_disk_space_fails_before_downloading(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    assert_clean_error(pull(env, "test/huge"), 13, "disk space", "HF_HOME")
    assert hub.file_gets("huge.gguf") == []


@pytest.mark.parametrize("name", ["test/no-such-repo", "no-such-model"])
def test_missing_repo_or_name(hub, tmp_path, name):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), name), 10, name)


def test_missing_revision(hub, tmp_path):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), "test/plain", "--revision", "v9"), 10, "v9")


def test_gated_repo(hub, tmp_path):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), "test/gated"), 11, "accept its license", "hf auth login")


def test_no_network(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_clean_error(pull(hf_env(tmp_path / "hf", closed), "ultravox-1b"), 12, "cannot reach", "HF_HUB_OFFLINE")


def test_offline_and_not_cached(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url, HF_HUB_OFFLINE="1")
    n = len(hub.requests)
    assert_clean_error(pull(env, "ultravox-1b"), 12, "offline", "not in the cache")
    assert len(hub.requests) == n


def test_choose_takes_the_first_pattern_that_matches_in_each_choice():
    from llasm_cli.hub import choose

    names = ["m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf", "README.md"]
    assert choose(names, (("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*Q8_0.gguf", "mmproj-*f16.gguf"))) == [
        "m-Q4_K_M.gguf", "mmproj-m-Q8_0.gguf"]
    assert choose(names, (("*Q5_K_M.gguf",),)) is None  # a part the repository lacks
    assert choose(names, None) == sorted(names)
