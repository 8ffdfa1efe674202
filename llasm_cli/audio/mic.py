"""Microphone capture: the device's native rate in, 16 kHz mono float32 chunks out.

The stream runs at the device's own default rate because many devices (and PulseAudio's ALSA
plugin) refuse or badly convert 16 kHz; soxr resamples in a streaming resampler so chunk
boundaries leave no clicks. The PortAudio callback only copies into a queue: resampling and
everything else happen in the reader's thread, so a slow consumer never stalls the audio thread
(when the queue is full the oldest audio is dropped and counted).

sounddevice is imported lazily: `llasm` without --mic must work on machines without PortAudio,
and a missing libportaudio (an OSError at import) becomes a MicrophoneError that says what to
install.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.errors import MicrophoneError

BLOCK_SECONDS = 0.032  # one callback's worth of audio: one Silero frame (PortAudio hands it over 64 ms after its first sample)
QUEUE_SECONDS = 10.0  # audio kept while nobody reads before the oldest is dropped
INSTALL_PORTAUDIO = (
    "install PortAudio (Debian/Ubuntu: apt-get install libportaudio2; Fedora: dnf install "
    "portaudio; macOS: brew install portaudio)"
)


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except OSError as exc:
        raise MicrophoneError(f"the PortAudio library is missing ({exc}): {INSTALL_PORTAUDIO}") from None
    except ImportError:
        raise MicrophoneError("the sounddevice package is missing: pip install sounddevice") from None
    return sounddevice


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again (it lists them once, when it initialises).

    Needed after a device was plugged in or a sound server was started while llasm ran; only
    call it while no Microphone is open.
    """
    sd = _sounddevice()
    sd._terminate()
    sd._initialize()


def list_input_devices() -> list[dict[str, Any]]:
    """Every device that can record: index, name, channels, default_samplerate, is_default."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise MicrophoneError(f"cannot list audio devices: {exc}. {INSTALL_PORTAUDIO}") from None
    return [
        {
            "index": i,
            "name": d["name"],
            "channels": int(d["max_input_channels"]),
            "default_samplerate": float(d["default_samplerate"]),
            "is_default": i == default,
        }
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


def _names(devices: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"


def resolve_device(spec: str | int | None) -> int:
    """The PortAudio index of an input device given by index, by name (case-insensitive
    substring, an exact name wins) or None for the system default."""
    devices = list_input_devices()
    if not devices:
        raise MicrophoneError(
            "no microphone found: connect one, or check that your user may use audio devices "
            "(Linux: the 'audio' group; `arecord -l` or `pactl list short sources` should list it)"
        )
    if spec is None:
        chosen = [d for d in devices if d["is_default"]] or devices[:1]
        return int(chosen[0]["index"])
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        if any(d["index"] == index for d in devices):
            return index
        raise MicrophoneError(f"there is no input device {index}; input devices: {_names(devices)}")
    wanted = str(spec).strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    matches = exact or [d for d in devices if wanted in d["name"].lower()]
    if len(matches) == 1:
        return int(matches[0]["index"])
    if not matches:
        raise MicrophoneError(f"no input device matches {spec!r}; input devices: {_names(devices)}")
    raise MicrophoneError(
        f"{spec!r} matches several input devices ({_names(matches)}): give more of the name or the index"
    )


def _open_error(name: str, exc: Exception) -> MicrophoneError:
    """Turn PortAudio's open/start failure into advice."""
    text = str(exc)
    low = text.lower()
    if "busy" in low or "unavailable" in low or "-9985" in low:
        hint = "it is busy: close the program that uses it, or choose another input device"
    elif "permission" in low or "denied" in low or "not permitted" in low:
        hint = (
            "permission denied: on Linux add your user to the 'audio' group; on macOS allow "
            "microphone access for your terminal in System Settings > Privacy & Security > Microphone"
        )
    else:
        hint = "choose another input device by index or name"
    return MicrophoneError(f"cannot open input device {name!r}: {text}. {hint.capitalize()}.")


class Microphone:
    """A running input stream as a context manager; read() returns 16 kHz mono float32 chunks.

    The stream is always stopped and closed on exit, also when the body raises.
    """

    def __init__(self, device: str | int | None = None, block_seconds: float = BLOCK_SECONDS) -> None:
        self.spec = device
        self.block_seconds = block_seconds
        self.stream: Any = None
        self.device: int | None = None
        self.name = ""
        self.samplerate = 0
        self.overflows = 0  # PortAudio reported lost input (the OS dropped audio)
        self.dropped = 0  # blocks dropped here because nobody read for QUEUE_SECONDS
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._resampler: Any = None

    @property
    def closed(self) -> bool:
        return self.stream is None or bool(self.stream.closed)

    def __enter__(self) -> Microphone:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Resolve the device and start recording at its native rate."""
        sd = _sounddevice()
        self.device = resolve_device(self.spec)
        info = sd.query_devices(self.device)
        self.name = str(info["name"])
        self.samplerate = int(round(info["default_samplerate"]))
        blocksize = max(1, int(self.samplerate * self.block_seconds))
        self._queue = queue.Queue(maxsize=max(1, int(QUEUE_SECONDS / self.block_seconds)))
        # Mono first; some hardware devices only open with their native channel count.
        options = sorted({1, min(2, int(info["max_input_channels"]))})
        for channels in options:
            try:
                self.stream = sd.InputStream(
                    device=self.device, samplerate=self.samplerate, channels=channels, dtype="float32",
                    blocksize=blocksize, callback=self._callback,
                )
                self.stream.start()
                break
            except sd.PortAudioError as exc:
                self.close()
                if "channels" not in str(exc).lower() or channels == options[-1]:
                    raise _open_error(self.name, exc) from None
            except BaseException:
                self.close()
                raise
        if self.samplerate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's audio thread: copy and return; never block here.
        if status.input_overflow:
            self.overflows += 1
        block = indata.mean(axis=1, dtype=np.float32) if indata.shape[1] > 1 else indata[:, 0].copy()
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            try:
                self._queue.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
            self._queue.put_nowait(block)

    def read(self, timeout: float = 1.0) -> np.ndarray:
        """The next 16 kHz chunk (any length); an empty array when none came within timeout."""
        if self.closed:
            raise RuntimeError("the microphone is closed")
        deadline = time.monotonic() + timeout
        while True:
            try:
                block = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if not self.stream.active:
                    raise MicrophoneError(
                        f"input device {self.name!r} stopped delivering audio (unplugged?)"
                    ) from None
                return np.zeros(0, dtype=np.float32)
            out = block if self._resampler is None else self._resampler.resample_chunk(block)
            if out.size:
                return np.asarray(out, dtype=np.float32)

    def flush(self) -> None:
        """Discard audio captured but not yet read (e.g. while an answer was being spoken)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[np.ndarray]:
        while not self.closed:
            chunk = self.read()
            if chunk.size:
                yield chunk

    def close(self) -> None:
        """Stop and close the stream; safe to call twice."""
        if self.stream is not None:
            try:
                self.stream.abort(ignore_errors=True)
            finally:
                self.stream.close(ignore_errors=True)
