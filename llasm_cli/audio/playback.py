"""Audio out: float32 mono at any rate in, the output device's native rate out, stoppable at once.

The stream runs at the device's default rate (as the microphone does, audio/mic.py): many devices refuse
other rates, so soxr resamples what is queued. The PortAudio callback only copies from a queue, so a
``stop`` (barge-in, Ctrl-C) silences the device within one callback block. ``progress`` says how many of the
clips queued have been heard whole and how much of the next: an answer that is cut knows how far it got.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from llasm_cli.audio.mic import _sounddevice
from llasm_cli.errors import MicrophoneError

BLOCK_SECONDS = 0.02  # one callback: how soon a stop is heard
PLAYED_SECONDS = 2.0  # the samples played kept for the echo canceller (audio/echo.py) between its reads
# PortAudio's output latency: its default, 40 ms here. 10 ms blocks with 20 ms of latency silenced a stop in 20-25
# ms instead of 55-70, but under load the device ran dry now and then, which shifts what was played against the
# echo canceller's reference: in CI the user's words came out of the canceller garbled.
OUTPUT_LATENCY = "high"


class Player:
    """The default (or a named) output device, fed clips in order; ``stop`` drops all that is queued."""

    def __init__(self, device: int | str | None = None) -> None:
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, "output")
        except (ValueError, sd.PortAudioError) as exc:
            raise MicrophoneError(f"no audio output device{f' {device!r}' if device is not None else ''}: {exc}") from None
        self.rate = int(info["default_samplerate"])
        self._lock = threading.Lock()
        self._queue: deque[np.ndarray] = deque()  # at the device's rate
        self._offset = 0  # samples of the queue's head already played
        self._taken = 0  # device samples played
        self._marks: deque[tuple[int, int]] = deque()  # (device sample where a queued clip starts, where it ends)
        self.clips_played = 0  # clips heard to their end
        self._played: deque[np.ndarray] = deque(maxlen=max(1, round(PLAYED_SECONDS / BLOCK_SECONDS)))
        self._idle = threading.Event()
        self._idle.set()
        try:
            self._stream = sd.OutputStream(samplerate=self.rate, channels=1, dtype="float32", device=device,
                                           blocksize=round(BLOCK_SECONDS * self.rate), callback=self._callback,
                                           latency=OUTPUT_LATENCY)
            self._stream.start()
        except sd.PortAudioError as exc:
            raise MicrophoneError(f"cannot open the audio output: {exc}") from None

    def play(self, samples: np.ndarray, rate: int) -> None:
        """Queue a clip (float32 mono at ``rate``) after whatever is playing."""
        import soxr

        x = np.clip(np.asarray(samples, np.float32).reshape(-1), -1.0, 1.0)
        y = soxr.resample(x, rate, self.rate).astype(np.float32) if rate != self.rate else x
        if not y.size:
            return
        with self._lock:
            start = self._taken + sum(len(q) for q in self._queue) - self._offset
            self._queue.append(y)
            self._marks.append((start, start + y.size))
            self._idle.clear()

    def _callback(self, out, frames, time_info, status) -> None:  # the audio thread: copies only
        out.fill(0.0)
        n = 0
        with self._lock:
            while n < frames and self._queue:
                head = self._queue[0]
                k = min(frames - n, head.size - self._offset)
                out[n : n + k, 0] = head[self._offset : self._offset + k]
                n += k
                self._offset += k
                if self._offset == head.size:
                    self._queue.popleft()
                    self._offset = 0
            self._taken += n
            while self._marks and self._marks[0][1] <= self._taken:
                self._marks.popleft()
                self.clips_played += 1
            if not self._queue:
                self._idle.set()
            self._played.append(out[:, 0].copy())  # silence included: the echo canceller pairs it sample by sample

    def progress(self) -> tuple[int, float]:
        """Clips heard to their end, and the share heard of the one playing (0 when none is)."""
        with self._lock:
            if not self._marks:
                return self.clips_played, 0.0
            start, end = self._marks[0]
            return self.clips_played, min(1.0, max(0.0, (self._taken - start) / (end - start)))

    def take_played(self) -> np.ndarray:
        """Every sample sent to the device since the last call (at its rate, at most PLAYED_SECONDS): the echo
        canceller's reference."""
        with self._lock:
            blocks = list(self._played)
            self._played.clear()
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until all that is queued has been played; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Silence now: everything queued is dropped (the device's current block still sounds)."""
        with self._lock:
            self._queue.clear()
            self._marks.clear()
            self._offset = 0
            self.clips_played = 0
            self._idle.set()

    def close(self) -> None:
        self.stop()
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # noqa: BLE001 - a device that went away while closing: nothing left to release
            pass
