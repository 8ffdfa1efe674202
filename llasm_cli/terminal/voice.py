"""The chat's spoken answers: the output device, the voice, the answer playing now, ``/mute`` and ``/voice``.

Each answer is spoken while it is generated (speech_out.SpokenAnswer: clause by clause, the first audio after
the first clause). The microphone stays open meanwhile: the chat holds its blocks back from the endpointer
until the user's voice is clearly over the answer's echo (turn_taking.BargeIn), then stops the answer and
keeps it in the conversation as far as it was heard, marked as cut.
"""

from __future__ import annotations

from llasm_cli.errors import LlasmError, MicrophoneError, VoiceError
from llasm_cli.speech_out import SpokenAnswer, voice_for_answer


class ChatVoice:
    """Speech out for one chat; ``start`` an answer, ``cut`` it when the user cuts in."""

    def __init__(self, spec: str | None = None, device: int | str | None = None) -> None:
        from llasm_cli.audio.playback import Player

        self.spec = spec
        self.voice = voice_for_answer("", spec) if spec else None  # a bad --voice fails before the chat starts
        self.player = Player(device)
        self.muted = False
        self.answer: SpokenAnswer | None = None
        self._by_language: dict[bool, object] = {}  # has Han characters -> the voice opened for such answers
        if self.voice is None:  # English opened now: the first answer does not wait for a voice to load
            self._by_language[False] = voice_for_answer("")

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
            if chinese not in self._by_language:
                self._by_language[chinese] = voice_for_answer(first)
            voice = self._by_language[chinese]
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
        self.voice = voice_for_answer("", spec)
        self.spec = spec
        return self.voice.spec

    def close(self) -> None:
        if self.answer is not None:
            self.answer.close()
            self.answer = None
        self.player.close()


def open_chat_voice(spec: str | None, device: int | str | None = None) -> tuple[ChatVoice | None, str | None]:
    """The chat's voice, or None and the one-line reason it cannot speak here (no output device, no voice)."""
    try:
        return ChatVoice(spec, device), None
    except (MicrophoneError, VoiceError, LlasmError) as exc:
        return None, str(exc)
