"""The bench's utterances: espeak-ng questions of about 2, 5, 10 and 25 s, measured to their voiced frames."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.assets import SENTENCES
from bench.latency_common import ESPEAK_SPEED
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE

# --------------------------------------------------------------------------------------------
# utterances


@dataclass
class Utterance:
    target_s: float
    text: str
    audio: np.ndarray = field(repr=False)
    speech_s: float  # first to last voiced 10 ms frame

    @property
    def label(self) -> str:
        return f"{self.speech_s:.1f}s"




def _espeak(text: str, path: Path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    subprocess.run(["espeak-ng", "-v", "en", "-s", str(ESPEAK_SPEED), "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


def speech_bounds(x: np.ndarray, frame: int = SAMPLE_RATE // 100, floor_db: float = -40.0) -> tuple[int, int]:
    """Sample range from the first to the last 10 ms frame within ``floor_db`` of the loudest."""
    n = x.size // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    voiced = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    return int(voiced[0] * frame), int((voiced[-1] + 1) * frame)


def make_utterances(targets: tuple[float, ...], workdir: Path, keep: Path | None = None) -> list[Utterance]:
    """For each target, the run of consecutive sentences whose speech length comes closest.
    ``keep``: a folder where the clips are saved (``u<target>.wav`` + ``.txt``) and read back on the
    next run, so a machine without espeak-ng can time the same speech."""
    if keep is not None and all((keep / f"u{t:g}.wav").is_file() for t in targets):
        out = []
        for t in targets:
            clip = load_audio(keep / f"u{t:g}.wav")
            a, b = speech_bounds(clip)
            out.append(Utterance(t, (keep / f"u{t:g}.txt").read_text(), clip, (b - a) / SAMPLE_RATE))
        return out
    single = []
    for i, s in enumerate(SENTENCES):
        a, b = speech_bounds(_espeak(s, workdir / f"s{i}.wav"))
        single.append((b - a) / SAMPLE_RATE)
    out = []
    for target in targets:
        best = min(
            ((i, j) for i in range(len(SENTENCES)) for j in range(i + 1, len(SENTENCES) + 1)),
            key=lambda ij: (abs(sum(single[ij[0] : ij[1]]) + 0.35 * (ij[1] - ij[0] - 1) - target), ij),
        )
        text = " ".join(SENTENCES[best[0] : best[1]])
        audio = _espeak(text, workdir / f"u{target:g}.wav")
        a, b = speech_bounds(audio)
        margin = SAMPLE_RATE // 10  # 100 ms around the speech, as an endpointer's pre-roll/hang-over
        clip = np.ascontiguousarray(audio[max(0, a - margin) : b + margin], dtype=np.float32)
        out.append(Utterance(target, text, clip, (b - a) / SAMPLE_RATE))
    if keep is not None:
        import soundfile as sf

        keep.mkdir(parents=True, exist_ok=True)
        for u in out:
            sf.write(keep / f"u{u.target_s:g}.wav", u.audio, SAMPLE_RATE)
            (keep / f"u{u.target_s:g}.txt").write_text(u.text)
    return out


