"""One exception per failure a user can cause.

The library raises these; only the CLI turns them into a one-line message and an exit code.
Each message says what went wrong and what to do about it.
"""

from __future__ import annotations


class LlasmError(Exception):
    """Base of every error a user can cause; the CLI prints it without a traceback."""

    exit_code = 1


class AudioFileError(LlasmError):
    """An audio file is missing, unreadable, corrupt or silent-empty."""

    exit_code = 2


class InvalidValueError(LlasmError):
    """An option or request field out of its range (``--temperature nan``, ``"max_tokens": -5``);
    the rules are in inputs.py. ``param``: the option or field, as the person wrote it."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BundleError(LlasmError):
    """A bundle directory or its manifest cannot be read."""

    exit_code = 3


class ModelFileError(BundleError):
    """A GGUF file in a bundle does not match what the manifest and llama.cpp expect."""


class TowerMismatchError(BundleError):
    """The audio tower's output width differs from the LLM's embedding width."""


class BackendUnavailableError(LlasmError):
    """The requested audio-tower backend cannot run here (missing package or unsupported model)."""

    exit_code = 4


class CheckpointError(LlasmError):
    """A training checkpoint directory cannot be exported."""

    exit_code = 5


class ContextOverflowError(LlasmError):
    """The conversation does not fit into the LLM context window."""

    exit_code = 6


class MicrophoneError(LlasmError):
    """No usable microphone: none found, busy, not permitted, or PortAudio missing."""

    exit_code = 7


class NoSpeechError(AudioFileError):
    """The voice-activity detector heard no speech in the audio (``--force`` sends it anyway)."""

    exit_code = 8


class TemplateError(LlasmError):
    """The model's chat template refused the conversation (its own ``raise_exception``)."""

    exit_code = 9


class AudioTooLongError(AudioFileError):
    """Audio longer than the length limit (the CLI's --max-audio); found from the header when it can be."""

    def __init__(self, message: str, seconds: float | None = None, limit: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds  # the length the header announces, None when only decoding found it
        self.limit = limit


class PullError(LlasmError):
    """Base of the errors of ``llasm pull``."""

    exit_code = 10


class ModelNotFoundError(PullError):
    """No such model name, repository, revision or file on the hub."""

    exit_code = 10


class GatedModelError(PullError):
    """The repository is gated: its license must be accepted on the hub, and the user logged in."""

    exit_code = 11


class NoNetworkError(PullError):
    """The hub cannot be reached, answered with a server error, or a download broke off."""

    exit_code = 12


class OfflineNotCachedError(NoNetworkError):
    """Offline mode (HF_HUB_OFFLINE=1) and the model is not in the cache."""


class DiskFullError(PullError):
    """Not enough free space for the files still to fetch."""

    exit_code = 13


class ChecksumMismatchError(PullError):
    """A downloaded file's size or checksum differs from the hub's metadata (the file is deleted)."""

    exit_code = 14


class ServeError(LlasmError):
    """``llasm serve`` cannot listen: the address is taken, not local, or not permitted."""

    exit_code = 15


class VoiceError(LlasmError):
    """A text-to-speech voice cannot speak: its engine is not installed (the message says what to install),
    no such voice, or the engine failed on a text."""

    exit_code = 16


def show_value(value: object, limit: int = 60) -> str:
    """repr() for an error message, cut short (a hostile manifest or header may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
