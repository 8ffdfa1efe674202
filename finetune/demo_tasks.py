"""The demo model's task domain: spoken arithmetic, "repeat after me", answers in English or Chinese.

What the demo understands (and nothing else):
- "what is A plus|minus|times B" (also "how much is", "calculate") with A, B from 0 to 20,
  answered in English words ("twelve", "minus four", "one hundred twenty");
- the same question with the typed instruction "answer in Chinese" -> "十二", "负四", "一百二十";
- "repeat after me: SENTENCE" for short sentences built from a small vocabulary -> SENTENCE.
"""

from __future__ import annotations

import itertools
import random

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ZH_DIGITS = "零一二三四五六七八九"
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
QUESTION_FORMS = ["what is {a} {op} {b}", "how much is {a} {op} {b}", "calculate {a} {op} {b}"]
ZH_INSTRUCTION = "answer in Chinese"
SUBJECTS = ["the cat", "my friend", "the teacher", "a little dog", "the old man", "my sister", "the bird", "our team"]
VERBS = ["likes", "sees", "wants", "finds", "opens", "paints", "needs", "carries"]
OBJECTS = ["the red box", "a green apple", "the big window", "a blue car", "the small garden", "a warm coat",
           "the new book", "a yellow flower"]

# espeak-ng voices: training and held-out sets share nothing (language variant, voice variant,
# speed and pitch are all disjoint)
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
TRAIN_VARIANTS = ["", "+m1", "+m3", "+m4", "+m6", "+m7", "+m8", "+f1", "+f3", "+f4", "+f5", "+Alex", "+david",
                  "+adam", "+Andy", "+aunty", "+belinda", "+benjamin", "+caleb", "+ed", "+edward", "+Gene", "+iven",
                  "+john", "+linda", "+max", "+Michael", "+Mike", "+paul", "+quincy", "+rob", "+robert", "+steph",
                  "+travis", "+victor", "+grandpa", "+grandma", "+klatt", "+klatt3", "+norbert", "+shelby", "+zac"]
TRAIN_SPEEDS = [130, 150, 170, 190, 210]
TRAIN_PITCHES = [25, 45, 65, 85]
EVAL_VOICES = ["en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd"]
EVAL_VARIANTS = ["", "+m2", "+f2", "+m5", "+Annie", "+boris"]
EVAL_SPEEDS = [140, 160, 180, 200]
EVAL_PITCHES = [35, 55, 75]


def en_words(n: int) -> str:
    """0..400 (and negatives) in English words."""
    if n < 0:
        return "minus " + en_words(-n)
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + en_words(rest))


def zh_words(n: int) -> str:
    """0..400 (and negatives) in Chinese numerals."""
    if n < 0:
        return "负" + zh_words(-n)
    if n < 10:
        return ZH_DIGITS[n]
    if n < 20:
        return "十" + ("" if n == 10 else ZH_DIGITS[n - 10])
    if n < 100:
        return ZH_DIGITS[n // 10] + "十" + ("" if n % 10 == 0 else ZH_DIGITS[n % 10])
    rest = n % 100
    head = ZH_DIGITS[n // 100] + "百"
    if rest == 0:
        return head
    if rest < 10:
        return head + "零" + ZH_DIGITS[rest]
    return head + (ZH_DIGITS[rest // 10] + "十" + ("" if rest % 10 == 0 else ZH_DIGITS[rest % 10]))


def problems() -> list[tuple[int, str, int]]:
    return [(a, op, b) for a in range(21) for op in OPS for b in range(21)]


def question(a: int, op: str, b: int, form: int) -> str:
    return QUESTION_FORMS[form].format(a=en_words(a), op=op, b=en_words(b))


def answer(a: int, op: str, b: int, chinese: bool = False) -> str:
    value = OPS[op](a, b)
    return zh_words(value) if chinese else en_words(value)


def sentences() -> list[str]:
    return [f"{s} {v} {o}" for s, v, o in itertools.product(SUBJECTS, VERBS, OBJECTS)]


def voice(rng: random.Random, held_out: bool) -> dict:
    voices, variants = (EVAL_VOICES, EVAL_VARIANTS) if held_out else (TRAIN_VOICES, TRAIN_VARIANTS)
    speeds, pitches = (EVAL_SPEEDS, EVAL_PITCHES) if held_out else (TRAIN_SPEEDS, TRAIN_PITCHES)
    return {"voice": rng.choice(voices) + rng.choice(variants), "speed": rng.choice(speeds), "pitch": rng.choice(pitches)}
