"""The chat's spoken answers: the output device, the voice, the answer playing now, ``/mute`` and ``/voice``.

Each answer is spoken while it is generated (speech_out.SpokenAnswer: clause by clause, the first audio after
the first clause). The microphone stays open meanwhile: its audio goes through an echo canceller fed with the
exact samples played (audio/echo.py), and the chat holds it back from the endpointer until the user's voice
is clearly over what is left of the answer's echo (turn_taking.BargeIn), then stops the answer and keeps it
in the conversation as far as it was heard, marked as cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llasm_cli.audio.echo import EchoCancelledMicrophone, echo_canceller_available
from llasm_cli.errors import LlasmError, MicrophoneError, VoiceError
from llasm_cli.speech_out import SpokenAnswer, voice_for_answer

if TYPE_CHECKING:
    from llasm_cli.voices import Voice


class ChatVoice:
    """Speech out for one chat; ``start`` an answer, ``cut`` it when the user cuts in."""

    def __init__(self, voice: Voice | None = None, rate: float = 1.0, device: int | str | None = None) -> None:
        from llasm_cli.audio.playback import Player

        self.voice = voice  # None: the best installed voice for each answer's language
        self.rate = rate
        if voice is not None:
            voice.set_rate(rate)
        self.player = Player(device)
        self.echo_note = echo_canceller_available()  # None: the microphone is heard without the answers' echo
        self.muted = False
        self.answer: SpokenAnswer | None = None
        self._by_language: dict[bool, object] = {}  # has Han characters -> the voice opened for such answers
        if self.voice is None:  # English opened now: the first answer does not wait for a voice to load
            self._open_for(False)

    @property
    def spec(self) -> str | None:
        return self.voice.spec if self.voice is not None else None

    def _open_for(self, chinese: bool):
        voice = self._by_language[chinese] = voice_for_answer("中" if chinese else "")
        voice.set_rate(self.rate)
        return voice

    def hear_through(self, mic):
        """The microphone as the chat should read it: through the echo canceller, fed with what this voice
        plays (the microphone itself where the canceller is missing)."""
        return mic if self.echo_note is not None else EchoCancelledMicrophone(mic, self.player)

    @property
    def playing(self) -> bool:
        """An answer is being spoken (its audio playing, or its next clause being synthesized)."""
        return self.answer is not None and self.answer.speaking

    @property
    def audible(self) -> bool:
        """Its audio is coming out of the device now."""
        return self.playing and self.player.busy

    def start(self, first: str) -> SpokenAnswer | None:
        """A new answer, its first piece ``first`` (the voice is chosen by its language unless one was named)."""
        self.cut()
        if self.muted:
            return None
        from llasm_cli.voices.base import has_cjk

        voice = self.voice
        if voice is None:
            chinese = has_cjk(first)
            voice = self._by_language.get(chinese) or self._open_for(chinese)
        self.answer = SpokenAnswer(voice, self.player)
        return self.answer

    def cut(self) -> str | None:
        """Stop the answer playing now; the text the listener heard (None when nothing was playing)."""
        answer, self.answer = self.answer, None
        if answer is None or not answer.speaking:
            return None
        return answer.stop()

    def toggle_mute(self) -> bool:
        self.muted = not self.muted
        if self.muted:
            self.cut()
        return self.muted

    def set_voice(self, spec: str) -> str:
        """``/voice SPEC``: the voice from the next answer on; its spec."""
        voice = voice_for_answer("", spec)
        voice.set_rate(self.rate)
        self.voice = voice
        return voice.spec

    def close(self) -> None:
        if self.answer is not None:
            self.answer.close()
            self.answer = None
        self.player.close()


def open_chat_voice(voice: Voice | None, rate: float = 1.0,
                    device: int | str | None = None) -> tuple[ChatVoice | None, str | None]:
    """The chat's voice, or None and the one-line reason it cannot speak here (no output device, no voice)."""
    try:
        return ChatVoice(voice, rate, device), None
    except (MicrophoneError, VoiceError, LlasmError) as exc:
        return None, str(exc)
