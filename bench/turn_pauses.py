"""Ten questions with a pause in the middle, for the turn detector's test (tests/test_turn_end.py) and the
spoken-chat bench (bench/speech_chat.py).

Each first half is a sentence broken off, each pause 0.5-0.8 s: longer than the 0.6 s of silence that ends a
turn otherwise, for most. Voices that install offline (hibari, SVOX Pico, flite), each half spoken on its own
and its silent edges cut, so the pause is exactly what is listed.
"""

from __future__ import annotations

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE

# (voice, the words before the pause, after it, the pause in seconds)
PAUSED = [
    ("hibari:heart", "What language is spoken", "in Brazil?", 0.7),
    ("pico:en-US", "What is the capital", "of Australia?", 0.6),
    ("flite:slt", "How many days are there", "in a week?", 0.8),
    ("pico:en-GB", "Who wrote the play", "Romeo and Juliet?", 0.5),
    ("flite:awb", "What is the largest", "ocean on Earth?", 0.7),
    ("hibari:heart", "Can you tell me how to make", "a cup of tea?", 0.6),
    ("flite:kal", "What is the boiling point of", "water?", 0.8),
    ("pico:en-US", "Give me three tips for", "sleeping better.", 0.7),
    ("flite:rms", "Which planet is closest", "to the sun?", 0.5),
    ("hibari:heart", "What is the tallest mountain", "in the world?", 0.8),
]

_voices: dict[str, object] = {}


def said(spec: str, text: str) -> np.ndarray:
    """``text`` in voice ``spec`` at 16 kHz, its silent edges cut."""
    from llasm_cli.voices import open_voice

    voice = _voices.get(spec) or _voices.setdefault(spec, open_voice(spec))
    x = voice.speak(text)
    loud = np.nonzero(np.abs(x) > 0.01)[0]
    return x[loud[0] : loud[-1] + 1]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def paused(spec: str, first: str, rest: str, pause: float, lead: float = 0.4, tail: float = 0.0) -> np.ndarray:
    """The question with its pause, ``lead`` and ``tail`` seconds of silence around it."""
    return np.concatenate([silence(lead), said(spec, first), silence(pause), said(spec, rest), silence(tail)])
