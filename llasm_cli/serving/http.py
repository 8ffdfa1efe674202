"""The HTTP side of ``llasm serve``: the FastAPI routes over a ``Server``, the socket, uvicorn.

Routes: ``POST /v1/chat/completions`` (the server's ``chat``), ``GET /v1/models``, ``GET /v1/models/ID``
and ``GET /health``; every error is an OpenAI-style JSON body (``json_fields.APIError``).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llasm_cli import __version__
from llasm_cli.errors import ServeError
from llasm_cli.serving.json_fields import APIError, error_body
from llasm_cli.serving.server import Server, as_api_error

# --- the ASGI app -----------------------------------------------------------------------


def create_app(server: Server):
    """The FastAPI application for ``server``."""
    app = FastAPI(title="llasm", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"unknown endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(message, "invalid_request_error", None, f"http_{exc.status_code}"),
                            exc.status_code, headers=getattr(exc, "headers", None))

    async def answered(handler, request: Request):
        server.check_key(request)
        try:
            return await handler(request)
        except Exception as exc:  # APIError, LlasmError as they are; a bug: a 500 with a JSON body, and the server goes on
            raise as_api_error(exc) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answered(server.chat, request)

    @app.post("/v1/audio/speech")
    async def audio_speech(request: Request):
        return await answered(server.speech, request)

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request)
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        server.check_key(request)
        if model_id != server.name:
            raise APIError(404, f"no model {model_id!r}; this server runs {server.name!r}", "model", "model_not_found")
        return server.model_card()

    @app.get("/health")
    async def health():
        status, body = server.health()
        return JSONResponse(body, status)

    return app


# --- running ----------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (clients may connect as soon as it returns); failure is a ``ServeError``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # connections wait in the backlog from now on, before uvicorn accepts any
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(sock: socket.socket) -> bool:
    host = sock.getsockname()[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _uvicorn(server: Server, verbose: bool):
    import uvicorn

    config = uvicorn.Config(
        create_app(server), log_level="info" if verbose else "warning", access_log=verbose,
        timeout_graceful_shutdown=3, lifespan="off", server_header=False,
    )
    return uvicorn.Server(config)


def startup_lines(server: Server, sock: socket.socket) -> list[str]:
    """What ``llasm serve`` says when it starts: where, how much, and a warning when it is open to others."""
    s = server.settings
    lines = []
    if not is_loopback(sock) and s.api_key is None:
        lines.append(f"warning: listening on {sock.getsockname()[0]} without --api-key: anyone who can reach "
                     "this port can use the model")
    lines.append(f"llasm serve: {server.name} at {url_of(sock)}/v1 ({s.parallel} conversations at once, "
                 f"{server.n_ctx_seq} positions each, queue {s.queue}); Ctrl-C stops")
    return lines


def run(server: Server, sock: socket.socket, verbose: bool = False) -> None:
    """Serve on ``sock`` (from ``bind``) until Ctrl-C or SIGTERM; the start-up lines go to stderr."""
    for line in startup_lines(server, sock):
        print(line, file=sys.stderr, flush=True)
    _uvicorn(server, verbose).run(sockets=[sock])


class ServerThread:
    """The app on a loopback port in a background thread (tests, embedding in other programs)."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._uv = _uvicorn(server, verbose=False)
        self._thread = threading.Thread(target=self._uv.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name="llasm-http")

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError("the HTTP server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
