"""An answer spoken aloud into a file: ``llasm ask --speech-out answer.wav``.

The voice is the one asked for (``--voice espeak-ng:en-us``, ``pico:en-GB``, ...; voices.py lists them), else
the most preferred installed voice that speaks the answer's language: Mandarin where the answer holds Han
characters, English otherwise (hibari, then Pico, flite, espeak-ng: the order bench/voices.py measured).
"""

from __future__ import annotations

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
