"""``llasm serve`` speaks: answers with ``modalities: ["text", "audio"]`` and ``POST /v1/audio/speech``.

The voices are llasm's offline ones (voices/). OpenAI's voice names ("alloy", ...) all mean llasm's default,
the best installed voice for the answer's language (Mandarin for Han characters); ``ENGINE:VOICE`` names one.
Speech is synthesized on one thread of its own (a voice is not thread-safe, and synthesis is CPU work that
must not hold up the event loop or the LLM's scheduler), 24 kHz as OpenAI's.

A streamed answer speaks clause by clause while the text is generated (speech_out.Clauses): the transcript
goes out as ``delta.audio.transcript`` pieces as the tokens come, and each clause's samples as a
``delta.audio.data`` delta (base64 pcm16) as soon as it is synthesized, in order.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llasm_cli.errors import LlasmError, VoiceError
from llasm_cli.serving.json_fields import APIError
from llasm_cli.serving.openai_audio import OPENAI_VOICES, AudioOut, SpeechRequest, audio_body
from llasm_cli.speech_out import SPEECH_FORMATS, Clauses, at_speech_rate, encode_speech, speakable, voice_for_answer
from llasm_cli.voices.base import has_cjk

AUDIO_LIFETIME_S = 3600  # what ``expires_at`` says: llasm keeps no audio, the id only names this answer's


class Speaker:
    """The server's voices, opened once each, and the thread that speaks with them."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llasm-speak")
        self._voices: dict[str, object] = {}  # ENGINE:VOICE, or "en"/"zh" for the default -> the opened voice

    def _voice(self, name: str, text: str, param: str):
        key = name if name not in OPENAI_VOICES else ("zh" if has_cjk(text) else "en")
        voice = self._voices.get(key)
        if voice is None:
            try:
                voice = voice_for_answer("中" if key == "zh" else "", None if name in OPENAI_VOICES else name)
            except (VoiceError, LlasmError) as exc:
                raise APIError(400, f"{param} {name!r}: {exc}", param, "voice_unavailable") from None
            self._voices[key] = voice
        return voice

    def speak(self, text: str, name: str, speed: float = 1.0, param: str = "voice") -> np.ndarray:
        """``text`` spoken at 24 kHz (on the speaker's thread only)."""
        voice = self._voice(name, text, param)
        voice.set_rate(speed, "speed")
        try:
            return at_speech_rate(voice.speak_native(text), voice.native_rate)
        except VoiceError as exc:
            raise APIError(500, f"the voice {voice.spec} failed: {exc}", param, "voice_failed",
                           type="server_error") from None

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def check(self, name: str, param: str) -> None:
        """Open a named voice now: a voice that is not installed is a 400 before any answer is generated."""
        await self.run(self._voice, name, "", param)

    async def file(self, req: SpeechRequest) -> tuple[bytes, str]:
        """POST /v1/audio/speech: the whole file and its media type."""
        said = speakable(req.input)
        if not said:
            raise APIError(400, "input holds no words to speak", "input", "invalid_value")
        audio = await self.run(self.speak, said, req.voice, req.speed, "voice")
        return await self.run(encode_speech, audio, req.format), SPEECH_FORMATS[req.format][2]

    async def answer_audio(self, text: str, out: AudioOut) -> dict:
        """``message.audio`` of a whole answer (its transcript as written, its audio without Markdown's marks)."""
        said = speakable(text)
        audio = await self.run(self.speak, said, out.voice, 1.0, "audio.voice") if said else np.zeros(0, np.float32)
        data = await self.run(encode_speech, audio, out.format)
        return audio_body(new_audio_id(), data, text, int(time.time()) + AUDIO_LIFETIME_S)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def new_audio_id() -> str:
    return "audio_" + secrets.token_hex(12)


class AudioDeltas:
    """A streamed answer's audio deltas: transcript pieces at once, each clause's samples once spoken."""

    def __init__(self, speaker: Speaker, out: AudioOut) -> None:
        self.speaker, self.out = speaker, out
        self.id = new_audio_id()
        self._clauses = Clauses()
        self._spoken: deque[asyncio.Future] = deque()  # clauses being synthesized, in order

    def text(self, piece: str) -> dict:
        """The delta for a piece of the answer's text; its complete clauses start being spoken."""
        for clause in self._clauses.feed(piece):
            self._say(clause)
        return {"audio": {"id": self.id, "transcript": piece}}

    def finish(self) -> None:
        for clause in self._clauses.rest():
            self._say(clause)

    def _say(self, clause: str) -> None:
        said = speakable(clause)
        if not said:
            return
        job = self.speaker.run(self.speaker.speak, said, self.out.voice, 1.0, "audio.voice")
        self._spoken.append(asyncio.ensure_future(job))

    @property
    def next_spoken(self) -> asyncio.Future | None:
        return self._spoken[0] if self._spoken else None

    def ready(self) -> list[dict]:
        """The deltas of the clauses spoken so far, in order (a failed voice raises its APIError)."""
        out = []
        while self._spoken and self._spoken[0].done():
            audio = self._spoken.popleft().result()
            out.append({"audio": {"id": self.id, "data": _b64(encode_speech(audio, self.out.format))}})
        return out

    async def rest(self) -> AsyncIterator[dict]:
        """After ``finish``: the deltas of every clause still being spoken, as each is done."""
        while self._spoken:
            await asyncio.wait({self._spoken[0]})
            for delta in self.ready():
                yield delta

    def cancel(self) -> None:
        for job in self._spoken:
            job.cancel()
        self._spoken.clear()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
