"""Acoustic echo cancellation: the microphone with the assistant's own voice taken out.

Without headphones the microphone hears every spoken answer. WebRTC's AEC3 (the canceller in Chrome and
every WebRTC call; ``pywebrtc-audio``, Apache-2.0) subtracts it, given the exact samples the speaker played
(audio/playback.Player.take_played). Its adaptive filter finds the delay from speaker to microphone itself;
what it needs from us is the two streams in step and the reference never *later* than its echo.

Both devices run on their own clocks from the moment they start, so the two streams are paired sample for
sample from a common start (``resync``: the played audio so far and the microphone's backlog dropped) and
microphone audio waits for its reference rather than being paired with invented silence. The echo's path
then stays a fixed delay (the output and input latencies plus the room's), which AEC3 tracks.

That pairing is made once, when the chat opens its microphone (EchoCancelledMicrophone), and kept by a
thread that cleans the microphone's audio as it comes, also while the chat is busy generating an answer:
pairing anew at each turn shifted the delay by a few milliseconds each time, AEC3 had to find it again,
and the echo it let through meanwhile sounded like the user cutting in.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque

import numpy as np

SAMPLE_RATE = 16000
FRAME = SAMPLE_RATE // 100  # AEC3 works on 10 ms frames
MAX_WAIT_SECONDS = 0.5  # microphone audio held for its reference at most this long (a stalled player: pass it on)
START_WAIT_SECONDS = 2.0  # how long a pairing waits for the player's first block (a device that starts slowly)
CLEANED_SECONDS = 10.0  # cleaned audio kept for a reader that is busy (the chat while it answers)


def echo_canceller_available() -> str | None:
    """None when AEC can run here, else the one-line reason it cannot."""
    try:
        import pywebrtc_audio  # noqa: F401
    except ImportError as exc:
        return f"no echo cancellation (pip install pywebrtc-audio): {exc}"
    return None


class EchoCanceller:
    """The microphone's 16 kHz blocks in, the same audio with the player's echo removed out (10 ms later
    at most: a block is cut into whole frames, the rest waits for the next)."""

    def __init__(self, player) -> None:
        import soxr
        from pywebrtc_audio import EchoCanceller as Aec3

        self.player = player
        self._aec = Aec3(sample_rate=SAMPLE_RATE, num_channels=1)
        self._soxr = soxr
        self._resampler = None
        self._far: deque[np.ndarray] = deque()  # played audio at 16 kHz, not yet paired
        self._far_n = 0
        self._near = np.zeros(0, np.float32)  # microphone audio not yet paired
        self.frames = 0  # frames cancelled
        self.unpaired = 0  # frames passed on without a reference (the player stalled)
        self.resync()

    def resync(self) -> None:
        """Pair the two streams from now: call when the microphone's backlog has just been flushed. Waits for
        the player's device to have asked for its first block (up to START_WAIT_SECONDS), so that a slow start
        is not mistaken for a fixed delay."""
        deadline = time.monotonic() + START_WAIT_SECONDS
        while not self.player.take_played().size and time.monotonic() < deadline:
            time.sleep(0.005)
        rate = self.player.rate
        self._resampler = (None if rate == SAMPLE_RATE
                           else self._soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"))
        self._far.clear()
        self._far_n = 0
        self._near = np.zeros(0, np.float32)

    def _pull_far(self) -> None:
        played = self.player.take_played()
        if played.size:
            y = played if self._resampler is None else self._resampler.resample_chunk(played)
            if y.size:
                self._far.append(np.asarray(y, np.float32))
                self._far_n += y.size

    def _take_far(self, n: int) -> np.ndarray:
        out = np.empty(n, np.float32)
        got = 0
        while got < n:
            head = self._far[0]
            k = min(n - got, head.size)
            out[got : got + k] = head[:k]
            got += k
            if k == head.size:
                self._far.popleft()
            else:
                self._far[0] = head[k:]
        self._far_n -= n
        return out

    def clean(self, near: np.ndarray) -> np.ndarray:
        """The echo-free audio of the microphone so far (possibly empty: it waits for its reference)."""
        self._near = np.concatenate([self._near, np.asarray(near, np.float32).reshape(-1)])
        self._pull_far()
        frames = self._near.size // FRAME
        paired = min(frames, self._far_n // FRAME)
        out: list[np.ndarray] = []
        if paired:
            n = paired * FRAME
            out.append(self._aec.process(self._near[:n], self._take_far(n)))
            self._near = self._near[n:]
            self.frames += paired
        if self._near.size > MAX_WAIT_SECONDS * SAMPLE_RATE:  # no reference comes: the player is not running
            n = (self._near.size // FRAME) * FRAME
            out.append(self._near[:n])
            self._near = self._near[n:]
            self.unpaired += n // FRAME
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class EchoCancelledMicrophone:
    """A microphone (audio/mic.Microphone) read through an EchoCanceller on a thread of its own: ``read``
    and ``flush`` as the microphone's, the audio without the player's echo. Closing it closes the microphone."""

    def __init__(self, mic, player) -> None:
        self.mic = mic
        self.name = mic.name
        self.canceller = EchoCanceller(player)
        self._out: queue.Queue[np.ndarray] = queue.Queue()
        self._kept = 0  # samples in _out
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        # Paired again, after the constructor's pairing: that one can fall in the output's start-up burst of
        # blocks, and pairing once they come steadily is what holds the echo down (paired only once, the
        # loopback test heard "what is the capital on japan" twice in two runs).
        mic.flush()
        self.canceller.resync()
        mic.flush()  # what came while the player started
        self._thread = threading.Thread(target=self._run, name="llasm-echo", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._stop.is_set() or self.mic.closed

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                clean = self.canceller.clean(self.mic.read(timeout=0.05))
                if clean.size:
                    with self._lock:
                        self._out.put(clean)
                        self._kept += clean.size
                        while self._kept > CLEANED_SECONDS * SAMPLE_RATE:  # nobody reads: the oldest goes
                            self._kept -= self._out.get_nowait().size
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who reports it
            self._error = exc

    def read(self, timeout: float = 1.0) -> np.ndarray:
        """The next cleaned chunk (any length); empty when none came within ``timeout``."""
        if self._error is not None:
            raise self._error
        try:
            chunk = self._out.get(timeout=timeout)
        except queue.Empty:
            return np.zeros(0, np.float32)
        with self._lock:
            self._kept -= chunk.size
        return chunk

    def flush(self) -> None:
        """Drop what was heard and not read; the pairing of the two streams is kept."""
        with self._lock:
            while True:
                try:
                    self._kept -= self._out.get_nowait().size
                except queue.Empty:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.mic.close()
