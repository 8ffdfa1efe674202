"""An answer spoken aloud into a file: ``llasm ask --speech-out answer.wav``.

The voice is the one asked for (``--voice espeak-ng:en-us``, ``pico:en-GB``, ...; voices.py lists them), else
the most preferred installed voice that speaks the answer's language: Mandarin where the answer holds Han
characters, English otherwise (hibari, then Pico, flite, espeak-ng: the order bench/voices.py measured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llasm_cli.errors import LlasmError, VoiceError
from llasm_cli.files import atomic_path

if TYPE_CHECKING:
    from llasm_cli.voices import Voice


def voice_for_answer(text: str, spec: str | None = None) -> Voice:
    """``spec``'s voice, else the preferred installed one for the answer's language (the voices' registry is
    imported here, so a question that is not to be spoken never loads it)."""
    from llasm_cli.voices import open_voice, voice_for
    from llasm_cli.voices.base import has_cjk

    if spec:
        return open_voice(spec)
    return voice_for("zh" if has_cjk(text) else "en")


def write_speech(text: str, path: str | Path, voice: Voice) -> float:
    """``text`` spoken by ``voice`` into the wav ``path`` (the voice's own rate, 16-bit), written atomically;
    its seconds."""
    import soundfile as sf

    said = speakable(text)
    if not said:
        raise VoiceError("the answer holds no words: nothing to speak")
    audio = np.clip(voice.speak_native(said), -1.0, 1.0)
    with atomic_path(Path(path)) as tmp:
        sf.write(tmp, audio, voice.native_rate, subtype="PCM_16", format="WAV")
    return audio.size / voice.native_rate


def check_speech_out(path: Path | None, spec: str | None, aloud: bool = False, rate: float = 1.0) -> Voice | None:
    """``llasm ask [--speak] [--speech-out PATH] [--voice SPEC] [--rate R]`` checked before any work: a folder
    that exists, and the voice asked for (opened now; None: chosen for the answer's language once it is known)."""
    if (spec or rate != 1.0) and path is None and not aloud:
        raise LlasmError("--voice and --rate are for a spoken answer: give --speak or --speech-out FILE.wav too")
    if path is not None and not Path(path).parent.is_dir():
        raise LlasmError(f"--speech-out {path}: the folder {Path(path).parent} does not exist")
    if not spec:
        return None
    voice = voice_for_answer("", spec)
    voice.set_rate(rate)
    return voice


def speak_into(path: Path | None, answer: str, voice: Voice | None, rate: float = 1.0) -> dict:
    """The answer spoken into ``path`` (nothing without one) by ``voice``, else the best installed voice for its
    language; what ``--json`` adds: the file, the voice and its seconds."""
    if path is None:
        return {}
    if voice is None:
        voice = voice_for_answer(answer)
        voice.set_rate(rate)
    seconds = write_speech(answer, path, voice)
    return {"speech_out": {"path": str(path), "voice": voice.spec, "seconds": round(seconds, 3)}}


def spoken_aloud(pieces: Iterable[str], player, voice: Voice | None, rate: float = 1.0) -> Iterator[str]:
    """``llasm ask --speak``: the answer's pieces passed on as they come while each clause is spoken on
    ``player``; at the end it waits until the last clause has been heard. The voice is ``voice``, else the
    best installed one for the language of the answer's first piece."""
    answer = None
    try:
        for piece in pieces:
            if answer is None:
                if voice is None:
                    voice = voice_for_answer(piece)
                    voice.set_rate(rate)
                answer = SpokenAnswer(voice, player)
            answer.feed(piece)
            yield piece
        if answer is not None:
            answer.finish()
            answer.wait()
            if answer.error is not None:
                raise VoiceError(f"the voice failed: {answer.error}")
    finally:
        if answer is not None:
            answer.close()


# --- speech as bytes (llasm serve) ---------------------------------------------------------------------------

SPEECH_RATE = 24000  # OpenAI's audio out: 24 kHz mono, and raw pcm16 is little-endian 16-bit at this rate
SPEECH_FORMATS = {  # response format -> (soundfile format, subtype, media type); "pcm"/"pcm16": raw samples
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
    "pcm": (None, None, "audio/pcm"),
    "pcm16": (None, None, "audio/pcm"),
}


def at_speech_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """A voice's audio at SPEECH_RATE, clipped to [-1, 1]."""
    import soxr

    x = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
    return np.clip(soxr.resample(x, rate, SPEECH_RATE), -1.0, 1.0).astype(np.float32) if rate != SPEECH_RATE else x


def encode_speech(audio: np.ndarray, fmt: str) -> bytes:
    """24 kHz float32 speech as a file of ``fmt`` (SPEECH_FORMATS), in memory."""
    import io

    import soundfile as sf

    container, subtype, _ = SPEECH_FORMATS[fmt]
    if container is None:
        return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    buf = io.BytesIO()
    sf.write(buf, audio, SPEECH_RATE, subtype=subtype, format=container)
    return buf.getvalue()


# --- an answer spoken while it is generated (llasm chat) --------------------------------------------------

CLAUSE_END = re.compile(r"[.!?;:。！？；]+[\"')\]]*(?=\s)|\n+")  # where a clause ends: the audio can start there
FIRST_CLAUSE_COMMA_WORDS = 4  # the first clause may end at a comma once it has this many words: audio sooner


MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
MARKUP = re.compile(r"[*_`#>|~]+")  # emphasis, code, headings, quotes, tables: shown, never spoken


def speakable(text: str) -> str:
    """What a voice should say of a piece of an answer: Markdown's marks dropped (a link says its text), and
    nothing at all when no word is left ("**", "---")."""
    said = " ".join(MARKUP.sub(" ", MARKDOWN_LINK.sub(r"\1", text)).split())
    return said if re.search(r"\w", said) else ""


class Clauses:
    """An answer's text in as it is generated, its complete clauses out as soon as each ends: where a voice
    can start speaking without waiting for the rest (the chat's speaker, the API's audio deltas)."""

    def __init__(self) -> None:
        self.pending = ""  # text not yet given out as a clause
        self.count = 0  # clauses given out

    def feed(self, piece: str) -> list[str]:
        """More of the answer; the clauses it completes (possibly none)."""
        self.pending += piece
        done: list[str] = []
        while (cut := self._end(self.pending)) is not None:
            clause, self.pending = self.pending[:cut], self.pending[cut:]
            if clause.strip():
                done.append(clause)
                self.count += 1
        return done

    def rest(self) -> list[str]:
        """The answer is complete: its last words, if any."""
        clause, self.pending = self.pending, ""
        if clause.strip():
            self.count += 1
            return [clause]
        return []

    def _end(self, text: str) -> int | None:
        m = CLAUSE_END.search(text)
        if m is not None:
            return m.end()
        if not self.count:  # the first clause: a comma will do once it holds a few words
            for comma in re.finditer(r",(?=\s)", text):
                if len(text[: comma.start()].split()) >= FIRST_CLAUSE_COMMA_WORDS:
                    return comma.end()
        return None


class SpokenAnswer:
    """Text pieces in as they are generated; each clause spoken as soon as it is complete, in order.

    A worker thread synthesizes clause after clause while the LLM goes on and the device plays the ones
    before (audio/playback.Player), so the first audio starts after the first clause, not the whole answer.
    ``stop`` silences it at once (barge-in, Ctrl-C) and ``spoken`` is the text heard so far: whole clauses,
    and the words of the clause that was cut, in proportion to how much of it played.
    """

    def __init__(self, voice: Voice, player) -> None:
        import queue
        import threading

        self.voice, self.player = voice, player
        self._split = Clauses()
        self.clauses: list[str] = []  # sent for speaking, in order
        self.first_audio: float | None = None  # perf_counter when the first clause was queued for playing
        self.error: Exception | None = None
        self._todo: queue.Queue[str | None] = queue.Queue()
        self._stopped = threading.Event()
        self._worker = threading.Thread(target=self._speak, name="llasm-speak", daemon=True)
        self._worker.start()

    def feed(self, piece: str) -> None:
        """More of the answer; complete clauses go to the voice now."""
        if not self._stopped.is_set():
            self._send(self._split.feed(piece))

    def _send(self, clauses: list[str]) -> None:
        for clause in clauses:
            self.clauses.append(clause)
            self._todo.put(clause)

    def finish(self) -> None:
        """The answer is complete: its last words go to the voice too."""
        if not self._stopped.is_set():
            self._send(self._split.rest())
        self._todo.put(None)

    def _speak(self) -> None:
        import time

        while True:
            clause = self._todo.get()
            if clause is None or self._stopped.is_set():
                return
            said = speakable(clause)
            if not said:
                continue
            try:
                audio = self.voice.speak_native(said)
            except Exception as exc:  # noqa: BLE001 - a voice that fails mid-answer: the text is still on screen
                self.error = exc
                return
            if self._stopped.is_set():
                return
            self.player.play(audio, self.voice.native_rate)
            if self.first_audio is None:
                self.first_audio = time.perf_counter()

    @property
    def speaking(self) -> bool:
        return not self._stopped.is_set() and (self.player.busy or self._worker.is_alive())

    def wait(self, timeout: float | None = None) -> None:
        """Until every clause has been spoken (or ``stop``)."""
        self._worker.join(timeout)
        if not self._stopped.is_set():
            self.player.wait(timeout)

    def tee(self, pieces: Iterable[str]) -> Iterator[str]:
        """The answer's pieces as they come, each also given to the voice."""
        for piece in pieces:
            self.feed(piece)
            yield piece

    def close(self, timeout: float = 10.0) -> None:
        """Stop, and wait for the worker: a voice's native library must not be mid-call when the process exits."""
        self.stop()
        self._worker.join(timeout)

    def stop(self) -> str:
        """Silence now; the text the listener heard (see the class)."""
        done, share = self.player.progress()
        self._stopped.set()
        self.player.stop()
        self._todo.put(None)
        heard = "".join(self.clauses[:done])
        if done < len(self.clauses) and share > 0:
            words = self.clauses[done].split(" ")
            heard += " ".join(words[: round(share * len(words))])
        return heard.strip()
