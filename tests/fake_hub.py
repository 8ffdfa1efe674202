"""A real HTTP server on 127.0.0.1 that answers as the Hugging Face hub (tests/test_pull.py,
tests/test_published.py): no mock of huggingface_hub, the CLI runs as a subprocess with HF_ENDPOINT
pointing at it (`hf_env`). It answers what huggingface_hub 2.x asks for:

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

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ULTRAVOX = "ggml-org/ultravox-v0_5-llama-3_2-1b-GGUF"
LLM = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
MMPROJ = "mmproj-ultravox-v0_5-llama-3_2-1b-f16.gguf"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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


def hf_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess that talks to the hub at ``endpoint`` with its cache in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5",
               HF_HUB_DOWNLOAD_TIMEOUT="5", NO_COLOR="1", **extra)
    return env
