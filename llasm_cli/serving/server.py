"""``llasm serve``: an OpenAI-compatible HTTP endpoint that hears speech.

``POST /v1/chat/completions`` takes messages whose content holds ``text`` and ``input_audio``
parts (base64 wav/mp3/flac/ogg), earlier turns included, and answers whole or streamed as
server-sent events in OpenAI's chunk format; ``GET /v1/models`` and ``GET /health`` tell what
runs and how busy it is. Any OpenAI client works against it.

Threads: the event loop answers HTTP; a worker pool decodes base64 and audio and renders the
prompt; one encoder thread runs the audio tower (not thread-safe, and CPU-heavy: never on the
event loop); the scheduler thread (scheduler.py) alone drives the llama.cpp context, where
several conversations are decoded together. A bounded number of requests is admitted (the
sequences plus a queue); past that a request gets 503 with ``Retry-After`` at once.

Two caches keep a conversation's next turn cheap: encoded clips by the hash of their base64
(audio in earlier turns is neither decoded nor encoded again), and the token ids of answers
this server gave, by their text (a history that repeats an answer is fed exactly the tokens
that were generated, so the sequence's cached prefix still matches past it).

(Over 400 lines: admission, the audio cache, prompts and the reply stream of one request read in
order; the HTTP routes are http.py's.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from llasm_cli.assistant import Assistant
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import (
    AudioFileError,
    AudioTooLongError,
    BackendUnavailableError,
    ContextOverflowError,
    LlasmError,
    TemplateError,
)
from llasm_cli.formats.bundle import Bundle
from llasm_cli.llm.engine import Sampling
from llasm_cli.llm.scheduler import BatchEngine, Failed, Finished, Job, Scheduler, Text
from llasm_cli.prompt import AUDIO, Message, join_lines, recent_exchanges
from llasm_cli.serving.json_fields import APIError, error_body, parse_json
from llasm_cli.serving.openai_api import (
    ChatRequest,
    Part,
    chunk_body,
    completion_body,
    decode_base64,
    parse_chat_request,
    read_audio_bytes,
    sse,
    usage_body,
    usage_chunk,
)
from llasm_cli.serving.openai_audio import parse_speech_request
from llasm_cli.serving.speech import AudioDeltas, Speaker

log = logging.getLogger("llasm.serve")

DEFAULT_MAX_AUDIO = 300.0  # seconds of audio per clip
DEFAULT_MAX_BODY = 32 << 20  # bytes of request body
DEFAULT_MAX_MESSAGES = 1024
HEARD_HEADER = "X-Llasm-Heard"  # what a transcript-hearing model heard in each audio part (Prepared.heard_header)
DISCONNECT_POLL_S = 0.25  # how often a whole (non-streamed) answer checks that its client is still there


@dataclass
class ServeSettings:
    """What the server admits; the model's own settings are the Assistant's."""

    parallel: int = 4  # conversations decoded at once (llama.cpp sequences)
    queue: int = 16  # requests that may wait for a sequence; more get 503
    n_ctx: int = 4096  # positions per conversation
    max_audio: float = DEFAULT_MAX_AUDIO
    max_body: int = DEFAULT_MAX_BODY
    max_messages: int = DEFAULT_MAX_MESSAGES
    api_key: str | None = None
    clip_cache_bytes: int = 256 << 20
    answer_cache: int = 1024


class _LRU:
    """A small thread-safe LRU map, bounded by entries and by a size function."""

    def __init__(self, max_items: int, max_size: int | None = None, size=lambda v: 1) -> None:
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.max_items, self.max_size, self._size, self.total = max_items, max_size, size, 0

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        with self._lock:
            if key in self._d:
                self.total -= self._size(self._d.pop(key))
            self._d[key] = value
            self.total += self._size(value)
            while self._d and (len(self._d) > self.max_items or (self.max_size is not None and self.total > self.max_size)):
                self.total -= self._size(self._d.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class _Clip:
    """One input_audio part of a request on its way to embeddings."""

    key: str
    param: str
    n_samples: int
    positions: int  # sequence positions: embeddings + markers (before a transcript is heard: at most this many)
    samples: np.ndarray | None = None  # until encoded
    embd: np.ndarray | None = None  # the encoded clip (from the cache, or once encoded)
    placeholder: np.ndarray | None = None  # stands in for embd while the prompt is measured
    heard: str | None = None  # Whisper's transcript, for a model that hears through one


@dataclass
class _Prepared:
    """A request's prompt, measured with placeholders where clips still have to be encoded."""

    segments: list  # the prompt as measured (final when no clip needed encoding)
    clips: list[_Clip] = field(default_factory=list)

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def audio_positions(self) -> int:
        return sum(c.positions for c in self.clips)

    @property
    def measured_only(self) -> bool:
        return any(c.placeholder is not None for c in self.clips)

    def heard_header(self) -> dict[str, str]:
        """``X-Llasm-Heard``: a JSON list of what each audio part was heard as, in order (ASCII-escaped),
        for a model that hears through a transcript; no header otherwise."""
        if not any(c.heard is not None for c in self.clips):
            return {}
        return {HEARD_HEADER: json.dumps([c.heard for c in self.clips])}

    def final_segments(self, bot: Assistant) -> list:
        """The measured prompt with each placeholder's slot holding its clip's embeddings (not rendered again)."""
        if not self.measured_only:
            return self.segments
        return bot.with_clips(self.segments, [c.embd for c in self.clips])


class Server:
    """A loaded model serving chat completions: admission, audio, prompts, the scheduler."""

    def __init__(self, bot: Assistant, settings: ServeSettings, n_threads: int | None = None,
                 exact: bool = False, name: str | None = None) -> None:
        self.bot = bot
        self.settings = settings
        self.name = name or bot.bundle.manifest.name
        self.created = int(time.time())
        self.batch = BatchEngine(bot.llm, settings.parallel, settings.n_ctx, n_threads=n_threads, exact=exact)
        self.scheduler = Scheduler(self.batch)
        self.n_ctx_seq = self.batch.n_ctx_seq
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="llasm-encode")
        self.speaker = Speaker()  # spoken answers and /v1/audio/speech (serving/speech.py)
        self._clips = _LRU(4096, settings.clip_cache_bytes, size=lambda v: v[1].nbytes)  # key -> (n, embd, heard)
        self._answers = _LRU(settings.answer_cache)
        self._lock = threading.Lock()
        self.in_flight = 0  # admitted requests not finished yet
        self.rejected = 0

    # --- admission ------------------------------------------------------------------

    def _admit(self) -> _Ticket:
        s = self.settings
        with self._lock:
            if self.in_flight >= s.parallel + s.queue:
                self.rejected += 1
                wait = self.scheduler.mean_duration() * (1 + self.in_flight - s.parallel) / s.parallel
                retry = max(1, min(60, math.ceil(wait)))
                raise APIError(
                    503, f"the server is busy: {self.in_flight} requests in progress or waiting for "
                    f"{s.parallel} sequences (queue of {s.queue}); retry in {retry} s",
                    code="server_busy", type="server_error", headers={"Retry-After": str(retry)},
                )
            self.in_flight += 1
        return _Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # --- requests -------------------------------------------------------------------

    def _prepare(self, req: ChatRequest) -> _Prepared:
        """Messages -> prompt segments, audio decoded (or found in the cache) and measured; worker thread."""
        clips: list[_Clip] = []
        turns: list[Message] = []
        for m in recent_exchanges(req.messages, self.bot.bundle.manifest.history_turns):  # before decoding audio
            if m.role != "user":
                tokens = self._answers.get(m.text) if m.role == "assistant" else None
                turns.append(Message.of(m.role, [m.text], tokens=tokens))
                continue
            spoken = [self._clip(p) for p in m.parts if p.audio is not None]
            clips += spoken
            slots = [c.embd if c.embd is not None else c.placeholder for c in spoken]
            turns.append(Message.of("user", join_lines([AUDIO if p.audio is not None else (p.text or "") for p in m.parts]), slots))
        msgs = self.bot.context_messages(turns)
        prep = _Prepared(self.bot.prompt(msgs), clips)
        if prep.positions >= self.n_ctx_seq:
            raise ContextOverflowError(
                f"the messages need {prep.positions} positions ({prep.audio_positions} of them audio) but a "
                f"conversation on this server holds {self.n_ctx_seq}, and the answer needs at least one more; "
                "send less (or start the server with a larger --ctx)"
            )
        return prep

    def _clip(self, p: Part) -> _Clip:
        key = hashlib.sha256(p.audio.encode()).hexdigest()
        hit = self._clips.get(key)
        if hit is not None:
            n, embd, heard = hit
            return _Clip(key, p.param, n, len(embd) + self.bot.markers, embd=embd, heard=heard)
        what = f"{p.param}.input_audio"
        samples = read_audio_bytes(decode_base64(p.audio, f"{what}.data"), what, self.settings.max_audio)
        positions = self.bot.audio_positions(samples.size)
        if positions >= self.n_ctx_seq:  # before spending time encoding it
            raise ContextOverflowError(
                f"{what} ({samples.size / SAMPLE_RATE:.3g} s) needs {positions} positions but a conversation on this "
                f"server holds {self.n_ctx_seq}; send a shorter clip"
            )
        placeholder = np.zeros((positions - self.bot.markers, self.batch.n_embd), dtype=np.float32)
        return _Clip(key, p.param, samples.size, positions, samples=samples, placeholder=placeholder)

    def _encode(self, prep: _Prepared) -> None:
        """Encode the clips the cache lacks; the encoder thread (the tower is not thread-safe)."""
        for clip in prep.clips:
            if clip.embd is not None:
                continue
            hit = self._clips.get(clip.key)  # another request may have brought the same clip meanwhile
            if hit is None:
                embd = self.bot.tower.encode(clip.samples)
                want = clip.positions - self.bot.markers
                if embd.shape[0] > want or (embd.shape[0] != want and not self.bot.hears_words):
                    raise LlasmError(f"the audio tower made {embd.shape[0]} embeddings for {clip.param}, "
                                     f"expected {want}")
                embd.setflags(write=False)  # shared by the cache and every prompt that holds the clip
                hit = (clip.n_samples, embd, self.bot.tower.transcript)
                self._clips.put(clip.key, hit)
            clip.embd, clip.heard, clip.samples = hit[1], hit[2], None
            clip.positions = len(clip.embd) + self.bot.markers

    def _sampling(self, req: ChatRequest) -> Sampling:
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        extra = {"top_p": req.top_p} if req.top_p is not None else {}
        return self.bot.default_sampling(req.temperature, seed=seed % (1 << 64), ignore_eos=req.ignore_eos, **extra)

    async def chat(self, request) -> object:
        """POST /v1/chat/completions."""
        body = await self._read_body(request)
        req = parse_chat_request(parse_json(body), self.settings.max_messages)
        for note in req.notes:  # text made valid (U+FFFD): the request is answered, and the log says so
            log.warning("note: %s", note)
        if req.audio_out is not None:  # a voice that is not installed: refused before any work
            await self.speaker.check(req.audio_out.voice, "audio.voice")
        ticket = self._admit()
        try:
            prep = await asyncio.to_thread(self._prepare, req)
            if any(c.embd is None for c in prep.clips):
                await asyncio.get_running_loop().run_in_executor(self._encoder, self._encode, prep)
            segments = prep.final_segments(self.bot)  # the clips in their slots: no rendering, no thread
            events: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            max_tokens = req.max_tokens or self.bot.bundle.manifest.max_tokens
            job = Job(segments, self._sampling(req), max_tokens,
                      emit=partial(loop.call_soon_threadsafe, events.put_nowait),
                      stop=[*req.stop, *self.bot.stop_texts])
            self.scheduler.submit(job)
        except BaseException:
            ticket.release()
            raise
        reply = _Reply(self, job, ticket, req, prep.audio_positions)
        heard = prep.heard_header()
        if req.stream:
            return _EventStream(reply.stream(events), on_close=reply.close, media_type="text/event-stream",
                                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **heard})
        try:
            return await reply.whole(events, request, heard)
        finally:
            reply.close()

    async def speech(self, request) -> object:
        """POST /v1/audio/speech."""
        req = parse_speech_request(parse_json(await self._read_body(request)))
        data, media = await self.speaker.file(req)
        return Response(data, media_type=media)

    async def _read_body(self, request) -> bytes:
        limit = self.settings.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise _too_large(None, limit)
                chunks.append(chunk)
        except ClientDisconnect:  # gone while sending: nobody to answer
            raise APIError(400, "the client disconnected while sending the request", code="client_disconnected") from None
        return b"".join(chunks)

    def remember(self, fin: Finished) -> None:
        """Keep an answer's ids under its text, for the history of the conversation's next turn."""
        if not fin.stopped_by_string:
            self._answers.put(fin.text, fin.tokens)

    # --- the rest -------------------------------------------------------------------

    def health(self) -> tuple[int, dict]:
        st = self.scheduler.stats()
        ok = self.scheduler.alive
        return (200 if ok else 503), {
            "status": "ok" if ok else "error", "model": self.name,
            "slots_idle": st.slots - st.busy, "slots_busy": st.busy, "queued": st.waiting,
            "requests_in_flight": self.in_flight, "requests_rejected": self.rejected,
            "requests_served": st.served, "reused_positions": st.reused_positions,
            "prefilled_positions": st.prefilled_positions, "n_ctx_per_conversation": self.n_ctx_seq,
        }

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "llasm"}

    def check_key(self, request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def close(self) -> None:
        self.scheduler.close()
        self._encoder.shutdown(wait=True)
        self.speaker.close()
        self.batch.close()


class _Ticket:
    """An admitted request's place; released exactly once."""

    def __init__(self, server: Server) -> None:
        self._server, self._done = server, False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._server._release()


def _too_large(size: int | None, limit: int) -> APIError:
    what = f"({size} bytes) " if size is not None else ""
    return APIError(413, f"the request body {what}is larger than this server's limit of {limit} bytes "
                    "(llasm serve --max-body)", code="request_too_large")


class _Reply:
    """The answer to one request, whole or streamed; ``close`` cancels a job its client left."""

    def __init__(self, server: Server, job: Job, ticket: _Ticket, req: ChatRequest, audio_positions: int) -> None:
        self.server, self.job, self.ticket, self.req = server, job, ticket, req
        self.audio_positions = audio_positions
        self.finished = False
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def _usage(self, fin: Finished) -> dict:
        return usage_body(fin.prompt_tokens, fin.completion_tokens, fin.cached_tokens, self.audio_positions)

    async def whole(self, events: asyncio.Queue, request, headers: dict | None = None) -> object:
        """Wait for the whole answer, asking every quarter second whether the client is still there."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_POLL_S
        getter = None
        try:
            while True:
                if loop.time() >= next_check:
                    if await request.is_disconnected():  # nobody to answer: free the sequence now
                        return JSONResponse(error_body("client disconnected", "invalid_request_error"), 499)
                    next_check = loop.time() + DISCONNECT_POLL_S
                if getter is None:
                    getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter}, timeout=max(0.0, next_check - loop.time()))
                if not done:
                    continue
                ev, getter = getter.result(), None
                if isinstance(ev, Finished):
                    self.finished = True
                    self.server.remember(ev)
                    audio = None
                    if self.req.audio_out is not None:
                        audio = await self.server.speaker.answer_audio(ev.text, self.req.audio_out)
                    body = completion_body(self.id, self.created, self.server.name, ev.text, ev.finish_reason,
                                           self._usage(ev), audio)
                    return JSONResponse(body, headers=headers)
                if isinstance(ev, Failed):
                    self.finished = True
                    raise as_api_error(ev.error)
        finally:
            if getter is not None:
                getter.cancel()

    async def stream(self, events: asyncio.Queue):
        name = self.server.name
        out = self.req.audio_out
        spoken = AudioDeltas(self.server.speaker, out) if out is not None else None
        yield sse(chunk_body(self.id, self.created, name, {"role": "assistant", "content": "" if spoken is None else None}))
        try:
            while True:
                ev = None
                async for delta in self._next(events, spoken):  # audio deltas ready while waiting for text
                    if isinstance(delta, dict):
                        yield sse(chunk_body(self.id, self.created, name, delta))
                    else:
                        ev = delta
                if isinstance(ev, Text):
                    delta = {"content": ev.text} if spoken is None else spoken.text(ev.text)
                    yield sse(chunk_body(self.id, self.created, name, delta))
                elif isinstance(ev, Finished):
                    self.finished = True
                    self.server.remember(ev)
                    if spoken is not None:
                        spoken.finish()
                        async for delta in spoken.rest():
                            yield sse(chunk_body(self.id, self.created, name, delta))
                    yield sse(chunk_body(self.id, self.created, name, {}, ev.finish_reason))
                    if self.req.include_usage:
                        yield sse(usage_chunk(self.id, self.created, name, self._usage(ev)))
                    yield b"data: [DONE]\n\n"
                    return
                else:
                    self.finished = True
                    yield sse(as_api_error(ev.error).body())
                    return
        except APIError as exc:  # the voice failed mid-answer
            yield sse(exc.body())
        finally:
            if spoken is not None:
                spoken.cancel()

    @staticmethod
    async def _next(events: asyncio.Queue, spoken: AudioDeltas | None):
        """The audio deltas that become ready while the next scheduler event is awaited, then that event."""
        getter = asyncio.ensure_future(events.get())
        try:
            while spoken is not None and spoken.next_spoken is not None and not getter.done():
                await asyncio.wait({getter, spoken.next_spoken}, return_when=asyncio.FIRST_COMPLETED)
                for delta in spoken.ready():
                    yield delta
            yield await getter
        finally:
            getter.cancel()

    def close(self) -> None:
        if not self.finished:
            self.server.scheduler.cancel(self.job)
        self.ticket.release()


class _EventStream(StreamingResponse):
    """Server-sent events that always clean up: the client may leave before the first byte is sent."""

    def __init__(self, content, on_close, **kw) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def as_api_error(exc: BaseException) -> APIError:
    """A request's failure as the HTTP error the client gets."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, AudioTooLongError):
        return APIError(400, str(exc), _param_of(exc), "audio_too_long")
    if isinstance(exc, AudioFileError):
        return APIError(400, str(exc), _param_of(exc), "invalid_audio")
    if isinstance(exc, TemplateError):
        return APIError(400, str(exc), "messages", "template_error")
    if isinstance(exc, BackendUnavailableError):
        return APIError(400, f"this server cannot hear audio: {exc}", "messages", "audio_unsupported")
    if isinstance(exc, LlasmError):
        return APIError(500, str(exc), None, "model_error", type="server_error")
    log.error("request failed", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}: {exc}); this is a bug in llasm", None,
                    "internal_error", type="server_error")


def _param_of(exc: BaseException) -> str | None:
    """The request field an audio error names (its message starts with it)."""
    first = str(exc).split(" ", 1)[0]
    return first if first.startswith("messages[") else None


# --- running ----------------------------------------------------------------------------


def load_server(model: str | Path | Bundle, settings: ServeSettings, backend: str = "auto", variant: str | None = None,
                n_threads: int | None = None, n_gpu_layers: int = 0) -> Server:
    """Load a bundle and start its scheduler; the audio tower is opened and warmed up now, so the
    first spoken request does not pay for it and a tower that cannot run fails here."""
    bot = Assistant(model, backend=backend, llm_variant=variant, n_ctx=None, n_threads=n_threads,
                    n_gpu_layers=n_gpu_layers)  # no context of its own: the server's is the BatchEngine's
    try:
        bot.warmup_tower()
        return Server(bot, settings, n_threads=n_threads, exact=variant == "f32")
    except BaseException:
        bot.close()
        raise


def close_server(server: Server) -> None:
    server.close()
    server.bot.close()
