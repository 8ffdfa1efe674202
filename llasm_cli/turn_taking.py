"""Turn-taking without a screen: microphone blocks in, a spoken turn streamed into the conversation
while it is heard, and the finished turn out when the endpointer confirms its end.

``llasm chat`` (terminal/chat.py) draws its meter around this loop and the benchmarks drive the
very same one, so what the bench times is what the chat does.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from llasm_cli.audio.endpoint import Endpointer, SpeechEnd
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.conversation import Conversation
from llasm_cli.errors import LlasmError
from llasm_cli.spoken_turn import AudioTurnStream

WHOLE_SHARE = 0.75  # of the silence left at a pause that a whole-clip encode may take (its cost is estimated)
# The turn detector: at a pause, the LLM's probability that the user's turn ends after the words heard so far
# (turn_end.py, measured there)
END_LIKELY = 0.3  # at or above: the turn ends at this pause, without waiting for the trailing silence
END_UNLIKELY = 0.003  # at or below: a sentence broken off, waited through ...
MID_SENTENCE_WAIT = 2.0  # ... for this many times the trailing silence; in between, a wait graded on log(p)


def pause_wait(p_end: float) -> float:
    """How many times the trailing silence a pause is waited through, given the LLM's probability that the
    turn ends there: 1 at END_LIKELY, MID_SENTENCE_WAIT at END_UNLIKELY and below, log-linear between. A
    question that could stop where the pause is ("What is the tallest mountain" ... "in the world?") scores in
    between, and is given a little longer than a plain silence."""
    lo, hi = math.log(END_UNLIKELY), math.log(END_LIKELY)
    share = (hi - math.log(max(p_end, 1e-12))) / (hi - lo)
    return 1.0 + (MID_SENTENCE_WAIT - 1.0) * min(1.0, max(0.0, share))


class LiveTurn:
    """A spoken turn fed to the conversation while it is heard. A refusal (the context cannot hold
    it) is kept in ``error`` to show at the end of speech; the rest of the audio is then dropped."""

    def __init__(self, conv: Conversation, text: str | None) -> None:
        self.fed = 0  # samples fed so far
        self.error: LlasmError | None = None
        self.stream: AudioTurnStream | None = None
        try:
            self.stream = conv.begin_audio(text=text)
        except LlasmError as exc:
            self.error = exc

    def feed(self, samples: np.ndarray) -> None:
        if samples.size and self.stream is not None:
            try:
                self.stream.feed(samples)
            except LlasmError as exc:  # the stream has taken the turn back already
                self.error, self.stream = exc, None
        self.fed += samples.size

    def speculate(self, budget_s: float) -> float | None:
        """The speaker has paused: prefill the turn as it stands (AudioTurnStream.speculate), encoded
        whole if that likely takes at most WHOLE_SHARE of the ``budget_s`` left before the end. The probability
        that the turn ends here, when this ran and the model scores it (None otherwise)."""
        if self.stream is not None:
            try:
                if self.stream.speculate(budget_ms=WHOLE_SHARE * budget_s * 1e3):
                    return self.stream.end_probability
            except LlasmError as exc:
                self.error, self.stream = exc, None
        return None

    def reconsider(self) -> float | None:
        """The pause goes on after ``speculate``: where the LLM's choice among Whisper's n-best changed the words,
        the turn is prefilled again with them (AudioTurnStream.reconsider); the new probability that the turn
        ends here, else None."""
        if self.stream is not None:
            try:
                if self.stream.reconsider():
                    return self.stream.end_probability
            except LlasmError as exc:
                self.error, self.stream = exc, None
        return None

    def prefetch(self) -> None:
        """The speaker has just gone quiet (AudioTurnStream.prefetch)."""
        if self.stream is not None:
            try:
                self.stream.prefetch()
            except LlasmError as exc:
                self.error, self.stream = exc, None

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None


class HandsFree:
    """The hands-free loop: each microphone block goes through the voice-activity endpointer; from the
    start of speech (with the pre-roll it keeps) the turn streams into the conversation, at a pause it
    is prefilled as it stands (``LiveTurn.speculate``), and ``push`` returns it once the trailing
    silence confirms the end. ``cancel`` takes back a turn that was never returned.

    Where the model hears words, the pause is also judged by what was said (END_LIKELY, END_UNLIKELY): a
    finished question ends the turn at once, a sentence broken off waits up to MID_SENTENCE_WAIT times longer.
    While it waits, the LLM chooses among Whisper's n-best of the same words (``LiveTurn.reconsider``): off the way
    to the answer's first word, which a finished question never waits for."""

    def __init__(self, conv: Conversation, endpointer: Endpointer, text: str | None = None) -> None:
        self.conv, self.endpointer, self.text = conv, endpointer, text
        self._quiet: int | None = None  # the pause whose last words are being decoded (Endpointer.quiet_since)
        self.turn: LiveTurn | None = None  # the turn being heard

    def push(self, block: np.ndarray) -> tuple[LiveTurn, np.ndarray] | None:
        """The next block of 16 kHz audio; the finished turn and its whole clip once the end is confirmed."""
        ep = self.endpointer
        for ev in ep.push(block):
            if isinstance(ev, SpeechEnd):  # the rest of the turn, then it is handed over
                turn = self.turn or LiveTurn(self.conv, self.text)
                turn.feed(ev.audio[turn.fed :])
                self.turn = None
                return turn, ev.audio
            self.turn = LiveTurn(self.conv, self.text)  # speech started: the pre-roll and speech so far
        if self.turn is not None:
            self.turn.feed(ep.committed(self.turn.fed))
            quiet = ep.quiet_since()
            if quiet is not None and quiet != self._quiet:  # a pause begins: the last words decoded meanwhile
                self._quiet = quiet
                self.turn.prefetch()
            if ep.settled():  # a pause long enough to act on: the end of the turn is likely
                ends = self.turn.speculate(ep.confirm_seconds)
                if ends is None:  # speculated already: the words may be chosen anew while the pause lasts
                    ends = self.turn.reconsider()
                if ends is not None and ends >= END_LIKELY and (end := ep.end_now()) is not None:
                    turn, self.turn = self.turn, None
                    turn.feed(end.audio[turn.fed :])
                    return turn, end.audio
                if ends is not None:
                    ep.wait_for(pause_wait(ends) * ep.trailing / SAMPLE_RATE)
        return None

    def cancel(self) -> None:
        if self.turn is not None:
            self.turn.cancel()
            self.turn = None


BARGE_IN_DB = 8.0  # how far above the answer's own echo (its loud blocks) the microphone must be to be the user
BARGE_IN_FLOOR_DB = -55.0  # ... and above this: what AEC3 leaves of the echo (~-80 dBFS, bursts while it adapts) is not a voice
BARGE_IN_SECONDS = 0.096  # ... for this long in a row (3 microphone blocks of 32 ms)
CANCELLED_SECONDS = 0.064  # ... or this long where an echo canceller took the answer out (its residue is ~60 dB down)
ECHO_SECONDS = 3.0  # the echo's level: the ECHO_PERCENTILE of the blocks heard in the last ~3 s while audio played
ECHO_PERCENTILE = 95  # speech is loud in its syllables and quiet between them: the reference is its loud part
LEARN_SECONDS = 0.5  # heard while audio played before any barge-in (the device's and the room's delay; behind the
# canceller too: at an answer's first syllables what AEC3 let through reached -48 dBFS, over a floor)
HELD_SECONDS = 1.0  # the last second held back: the first syllables of a barge-in are heard too


class BargeIn:
    """While an answer is spoken aloud, the microphone hears it too. Its blocks are held back from the
    endpointer (silence goes in their place) unless they are clearly louder than the answer's own echo,
    whose level is learnt while it plays: the user's voice over it, for BARGE_IN_SECONDS in a row, cuts
    in. Then the held blocks go to the endpointer, so the turn starts with the user's first syllables.
    With headphones the echo is the room's noise, and the user's voice cuts in at once. Behind an echo
    canceller (``cancelled``) a shorter run of loud blocks (CANCELLED_SECONDS) cuts in. Blocks of any size."""

    def __init__(self, cancelled: bool = False) -> None:
        # loud audio in a row that cuts in (``cancelled``: an echo canceller took the answer out, audio/echo.py)
        self.loud_needed = round((CANCELLED_SECONDS if cancelled else BARGE_IN_SECONDS) * SAMPLE_RATE)
        self.levels: deque[tuple[float, int]] = deque()  # (dB, samples) of the echo's blocks, ECHO_SECONDS of them
        self.learnt = 0  # samples heard while audible
        self.held: deque[np.ndarray] = deque()  # the last HELD_SECONDS of blocks
        self.loud = 0  # samples loud in a row

    @staticmethod
    def _keep(blocks: deque, size, seconds: float) -> None:
        """Drop the oldest blocks while the rest still cover ``seconds``."""
        total = sum(size(b) for b in blocks)
        while blocks and total - size(blocks[0]) >= seconds * SAMPLE_RATE:
            total -= size(blocks.popleft())

    def hold(self, block: np.ndarray, db: float, audible: bool = True) -> list[np.ndarray] | None:
        """None while the block is the answer's echo (or not yet clearly the user); the blocks to hear once
        the user has cut in (those held and this one). ``audible``: the answer's audio is playing now (not
        between two clauses still being synthesized): only then is the block's level the echo's."""
        self.held.append(block)
        self._keep(self.held, len, HELD_SECONDS)
        over = None  # the echo is not known yet
        if self.learnt >= LEARN_SECONDS * SAMPLE_RATE:
            echo = float(np.percentile([level for level, _ in self.levels], ECHO_PERCENTILE))
            over = max(echo + BARGE_IN_DB, BARGE_IN_FLOOR_DB)
        if over is not None and db > over:
            self.loud += block.size
        else:
            self.loud = 0
            if audible:
                self.levels.append((db, block.size))
                self.learnt += block.size
                self._keep(self.levels, lambda level: level[1], ECHO_SECONDS)
        if self.loud < self.loud_needed:
            return None
        heard = list(self.held)
        self.held.clear()
        self.loud = 0
        return heard
