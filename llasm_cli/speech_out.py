"""An answer spoken aloud into a file: ``llasm ask --speech-out answer.wav``.

The voice is the one asked for (``--voice espeak-ng:en-us``, ``pico:en-GB``, ...; voices.py lists them), else
the most preferred installed voice that speaks the answer's language: Mandarin where the answer holds Han
characters, English otherwise (hibari, then Pico, flite, espeak-ng: the order bench/voices.py measured).
"""

from __future__ import annotations

import re
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

    if not text.strip():
        raise VoiceError("the answer is empty: nothing to speak")
    audio = np.clip(voice.speak_native(text), -1.0, 1.0)
    with atomic_path(Path(path)) as tmp:
        sf.write(tmp, audio, voice.native_rate, subtype="PCM_16", format="WAV")
    return audio.size / voice.native_rate


def check_speech_out(path: Path | None, spec: str | None) -> Voice | None:
    """``llasm ask --speech-out PATH [--voice SPEC]`` checked before any work: a folder that exists, and the
    voice asked for (opened now; None: chosen for the answer's language once it is known)."""
    if spec and path is None:
        raise LlasmError("--voice is the voice of --speech-out: give --speech-out FILE.wav too")
    if path is None:
        return None
    if not Path(path).parent.is_dir():
        raise LlasmError(f"--speech-out {path}: the folder {Path(path).parent} does not exist")
    return voice_for_answer("", spec) if spec else None


def speak_into(path: Path | None, answer: str, voice: Voice | None) -> dict:
    """The answer spoken into ``path`` (nothing without one) by ``voice``, else the best installed voice for its
    language; what ``--json`` adds: the file, the voice and its seconds."""
    if path is None:
        return {}
    voice = voice or voice_for_answer(answer)
    seconds = write_speech(answer, path, voice)
    return {"speech_out": {"path": str(path), "voice": voice.spec, "seconds": round(seconds, 3)}}


# --- an answer spoken while it is generated (llasm chat) --------------------------------------------------

CLAUSE_END = re.compile(r"[.!?;:。！？；]+[\"')\]]*(?=\s)|\n+")  # where a clause ends: the audio can start there
FIRST_CLAUSE_COMMA_WORDS = 4  # the first clause may end at a comma once it has this many words: audio sooner


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
        self.pending = ""  # text not yet sent as a clause
        self.clauses: list[str] = []  # sent for speaking, in order
        self.first_audio: float | None = None  # perf_counter when the first clause was queued for playing
        self.error: Exception | None = None
        self._todo: queue.Queue[str | None] = queue.Queue()
        self._stopped = threading.Event()
        self._worker = threading.Thread(target=self._speak, name="llasm-speak", daemon=True)
        self._worker.start()

    def feed(self, piece: str) -> None:
        """More of the answer; complete clauses go to the voice now."""
        if self._stopped.is_set():
            return
        self.pending += piece
        while True:
            cut = self._clause_end(self.pending)
            if cut is None:
                return
            self._send(self.pending[:cut])
            self.pending = self.pending[cut:]

    def _clause_end(self, text: str) -> int | None:
        m = CLAUSE_END.search(text)
        if m is not None:
            return m.end()
        if not self.clauses:  # the first clause: a comma will do once it holds a few words
            for comma in re.finditer(r",(?=\s)", text):
                if len(text[: comma.start()].split()) >= FIRST_CLAUSE_COMMA_WORDS:
                    return comma.end()
        return None

    def _send(self, clause: str) -> None:
        if clause.strip():
            self.clauses.append(clause)
            self._todo.put(clause)

    def finish(self) -> None:
        """The answer is complete: its last words go to the voice too."""
        if not self._stopped.is_set():
            self._send(self.pending)
            self.pending = ""
        self._todo.put(None)

    def _speak(self) -> None:
        import time

        while True:
            clause = self._todo.get()
            if clause is None or self._stopped.is_set():
                return
            try:
                audio = self.voice.speak_native(clause.strip())
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
