"""The spoken-instruction dataset builder: text conversations in, spoken human turns out.

(One command read top to bottom: three input formats, the TTS voices and the parallel, resumable
run belong together; over 400 lines for that reason.)

    python -m llasm_finetune.build_dataset sharegpt.json data/spoken
    python -m llasm_finetune.build_dataset alpaca.json data/spoken --voices en-us,en-gb-x-rp --speed 150:180
    python -m llasm_finetune.build_dataset chats.jsonl data/spoken --tts-command "piper --model en.onnx --output_file {out}"

Input: ShareGPT (``[{"conversations": [{"from": "human"|"gpt", "value": ...}]}]``, "user"/
"assistant" accepted too, or ``{"messages": [{"role", "content"}]}``) or Alpaca
(``[{"instruction", "input", "output"}]``), as a JSON list or JSONL. System turns are dropped, a
trailing unanswered human turn too.

Output: ``OUT_DIR/audio/<id>-<turn>.wav`` (16 kHz mono PCM16) and ``OUT_DIR/conversations.json`` in
the format of ``finetune.records``: each human turn becomes
``{"from": "human", "value": "<audio>", "audio": "audio/<id>-<turn>.wav", "text": ..., "tts": {...}}``.

TTS: espeak-ng by default; the voice is chosen by script (any Han character -> a ``--zh-voices``
voice, else one of ``--voices``), voice/variant/speed/pitch are drawn per turn from a generator
seeded by (seed, id, turn), so a rerun draws the same. Any command-line TTS plugs in through a
template: ``{out}`` (the wav to write; without it the command writes the audio to stdout),
``{text}`` (without it the text goes to stdin), ``{voice}``, ``{speed}``, ``{pitch}``. The
template is split like a shell line and each placeholder becomes part of one argument; no shell
runs.

Resume: a wav that exists, reads and lasts > 0 s is kept (unless the journal says it speaks a
different text); every finished turn is appended to ``OUT_DIR/journal.jsonl`` so a killed run
continues where it stopped; ``conversations.json`` is written atomically at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.audio.decode import resample
from llasm_cli.files import atomic_path, stale_temp_files

from .records import (
    AUDIO_MARKER,
    LOG,
    DataError,
    Dialogue,
    DialogueTurn,
    OnError,
    RecordError,
    Records,
    Reporter,
    audio_duration,
    iter_json_records,
    read_conversations,
    write_conversations,
)

DEFAULT_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
DEFAULT_ZH_VOICES = ("cmn",)
DEFAULT_SPEED = (140, 190)  # espeak-ng words per minute
DEFAULT_PITCH = (30, 70)  # espeak-ng 0..99
TTS_TIMEOUT_S = 300
CONVERSATIONS_FILE = "conversations.json"
JOURNAL_FILE = "journal.jsonl"
AUDIO_DIR = "audio"
TMP_PREFIX = ".tmp-"
PLACEHOLDER = re.compile(r"\{(text|out|voice|speed|pitch)\}")
HUMAN_ROLES = {"human", "user"}
GPT_ROLES = {"gpt", "assistant"}


class TtsError(DataError):
    """A TTS engine cannot run, or failed on one text."""


# ---------------------------------------------------------------------------------------------
# Text input


@dataclass
class TextConversation:
    """One input conversation: (role, text) pairs alternating human/gpt, starting with human."""

    id: str
    turns: list[tuple[str, str]]


def _messages(obj: Any) -> list[tuple[str, str]]:
    """(role, text) pairs of one ShareGPT / messages / Alpaca item; RecordError if invalid."""
    if isinstance(obj, dict) and "instruction" in obj and "output" in obj:
        instruction, extra, output = obj["instruction"], obj.get("input") or "", obj["output"]
        if not all(isinstance(x, str) for x in (instruction, extra, output)):
            raise RecordError("Alpaca fields 'instruction', 'input', 'output' must be strings")
        human = instruction.strip() + ("\n" + extra.strip() if extra.strip() else "")
        return [("human", human), ("gpt", output)]
    if isinstance(obj, list):
        raw = obj
    elif isinstance(obj, dict) and ("conversations" in obj or "messages" in obj):
        raw = obj.get("conversations", obj.get("messages"))
    else:
        raise RecordError("expected 'conversations', 'messages', or Alpaca 'instruction'/'output'")
    if not isinstance(raw, list):
        raise RecordError("the turns must be a list")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RecordError(f"turn {i}: expected a JSON object")
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        role = role.lower() if isinstance(role, str) else role
        if role == "system":
            continue
        if role not in HUMAN_ROLES | GPT_ROLES:
            raise RecordError(f"turn {i}: unknown role {role!r} (expected human/user or gpt/assistant)")
        if not isinstance(text, str):
            raise RecordError(f"turn {i}: the text ('value' or 'content') must be a string")
        turns.append(("human" if role in HUMAN_ROLES else "gpt", text))
    return turns


def text_conversation_from_item(obj: Any, fallback_id: str, max_chars: int | None = None) -> TextConversation:
    turns = _messages(obj)
    if turns and turns[-1][0] == "human":
        turns = turns[:-1]  # an unanswered question teaches nothing
    if not turns:
        raise RecordError("no human/gpt turn pair")
    for i, (role, text) in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise RecordError(f"turn {i}: expected {expected}, got {role} (turns must alternate, human first)")
        if not text.strip():
            raise RecordError(f"turn {i}: empty text")
        if role == "gpt" and AUDIO_MARKER in text:
            raise RecordError(f"turn {i}: the answer contains the audio marker {AUDIO_MARKER}")
        if role == "human" and max_chars is not None and len(text) > max_chars:
            raise RecordError(f"turn {i}: {len(text)} characters is more than --max-chars {max_chars}")
    raw_id = obj.get("id") if isinstance(obj, dict) else None
    cid = safe_id(str(raw_id)) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else ""
    return TextConversation(id=cid or fallback_id, turns=turns)


def safe_id(raw: str) -> str:
    """An id usable in a file name: [A-Za-z0-9._-] only, at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")[:80]


def read_text_conversations(
    path: str | Path, on_error: OnError = "skip", max_chars: int | None = None
) -> Records[TextConversation]:
    """Read ShareGPT/messages/Alpaca input (JSON list or JSONL); ids are made unique and file-safe."""
    path = Path(path)
    report = Reporter(path, on_error)
    convs: list[TextConversation] = []
    seen: set[str] = set()
    for index, (where, obj) in enumerate(iter_json_records(path)):
        try:
            if isinstance(obj, RecordError):
                raise obj
            conv = text_conversation_from_item(obj, f"{index:06d}", max_chars)
        except RecordError as exc:
            report.problem(where, str(exc))
            continue
        if conv.id in seen:
            conv.id = f"{conv.id}_{index}"
        seen.add(conv.id)
        convs.append(conv)
    return report.result(convs)


# ---------------------------------------------------------------------------------------------
# TTS


def has_cjk(text: str) -> bool:
    """True if ``text`` holds a Han character (CJK Unified Ideographs and extensions)."""
    return any(
        0x4E00 <= (c := ord(ch)) <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0xF900 <= c <= 0xFAFF
        or 0x20000 <= c <= 0x2FA1F
        for ch in text
    )


def _store_wav(audio: bytes | Path, out_path: Path) -> float:
    """Read TTS output (any soundfile format), make it 16 kHz mono, write ``out_path`` atomically."""
    import soundfile as sf

    try:
        src = io.BytesIO(audio) if isinstance(audio, bytes) else str(audio)
        data, rate = sf.read(src, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad input
        raise TtsError(f"the TTS output is not readable audio: {exc}") from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if mono.size == 0 or not np.any(mono):
        raise TtsError("the TTS produced no sound")
    pcm = np.clip(resample(np.ascontiguousarray(mono, dtype=np.float32), rate), -1.0, 1.0)
    with atomic_path(out_path) as tmp:
        sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return pcm.size / SAMPLE_RATE


def _run(argv: list[str], stdin: bytes | None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=TTS_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise TtsError(f"TTS command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise TtsError(f"{Path(argv[0]).name} took more than {TTS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TtsError(f"{Path(argv[0]).name} exited with {proc.returncode}: {err[-1] if err else 'no message'}")
    return proc


def espeak_path() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TtsError("espeak-ng is not installed: apt-get install espeak-ng (or use --tts-command)")
    return exe


def speak(text: str, out_path: str | Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> float:
    """Speak ``text`` with espeak-ng into ``out_path`` (16 kHz mono PCM16 wav); return its seconds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".wav", dir=out_path.parent)
    os.close(fd)
    try:
        argv = [espeak_path(), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", raw, "--stdin"]
        _run(argv, text.encode("utf-8"))
        return _store_wav(Path(raw), out_path)
    finally:
        Path(raw).unlink(missing_ok=True)


def command_argv(template: str, values: dict[str, str]) -> list[str]:
    """Split ``template`` like a shell line, then fill ``{text}``/``{out}``/... inside each argument.

    Filling after splitting keeps every value one argument whatever it contains (quotes, spaces,
    ``{out}``), and no shell ever sees it."""
    try:
        parts = shlex.split(template)
    except ValueError as exc:
        raise TtsError(f"cannot split --tts-command {template!r}: {exc}") from None
    if not parts:
        raise TtsError("--tts-command is empty")
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], p) for p in parts]


def speak_command(
    text: str, out_path: str | Path, template: str, voice: str = "", speed: int = 0, pitch: int = 0
) -> float:
    """Speak ``text`` with a command-line TTS given by ``template``; return the wav's seconds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".wav", dir=out_path.parent)
    os.close(fd)
    try:
        values = {"text": text, "out": raw, "voice": voice, "speed": str(speed), "pitch": str(pitch)}
        argv = command_argv(template, values)
        proc = _run(argv, None if "{text}" in template else text.encode("utf-8"))
        if "{out}" in template:
            return _store_wav(Path(raw), out_path)
        if not proc.stdout:
            raise TtsError("the TTS command wrote no audio to stdout (or use {out} in the template)")
        return _store_wav(proc.stdout, out_path)
    finally:
        Path(raw).unlink(missing_ok=True)


@dataclass(frozen=True)
class TtsPlan:
    """How every turn is spoken: the engine and the ranges its settings are drawn from."""

    voices: tuple[str, ...] = DEFAULT_VOICES
    zh_voices: tuple[str, ...] = DEFAULT_ZH_VOICES
    variants: tuple[str, ...] = ()
    speed: tuple[int, int] = DEFAULT_SPEED
    pitch: tuple[int, int] = DEFAULT_PITCH
    command: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.voices or not self.zh_voices:
            raise TtsError("give at least one voice in --voices and --zh-voices")
        for name, (lo, hi) in (("speed", self.speed), ("pitch", self.pitch)):
            if lo > hi or lo < 0:
                raise TtsError(f"--{name} range {lo}:{hi} is empty or negative")

    def draw(self, key: str, text: str) -> dict[str, Any]:
        """The settings for one turn: the same for the same (seed, key, text script)."""
        rng = random.Random(f"{self.seed}:{key}")
        voice = rng.choice(self.zh_voices if has_cjk(text) else self.voices)
        variant = rng.choice(self.variants) if self.variants else None
        speed, pitch = rng.randint(*self.speed), rng.randint(*self.pitch)
        if variant:
            voice = f"{voice}+{variant}"
        if self.command is None:
            return {"engine": "espeak-ng", "voice": voice, "speed": speed, "pitch": pitch}
        params: dict[str, Any] = {"engine": "command", "command": self.command}
        for name, value in (("voice", voice), ("speed", speed), ("pitch", pitch)):
            if "{" + name + "}" in self.command:
                params[name] = value
        return params

    def check(self) -> None:
        """Fail early (before any work) when the engine cannot run at all."""
        if self.command is not None:
            exe = command_argv(self.command, dict.fromkeys(("text", "out", "voice", "speed", "pitch"), ""))[0]
            if shutil.which(exe) is None:
                raise TtsError(f"TTS command not found: {exe}")
            return
        exe = espeak_path()
        for voice in sorted(set(self.voices + self.zh_voices)):
            if subprocess.run([exe, "-q", "-v", voice, "a"], capture_output=True, check=False).returncode != 0:
                raise TtsError(f"espeak-ng has no voice {voice!r} (see: espeak-ng --voices)")

    def speak(self, text: str, out_path: Path, params: dict[str, Any]) -> float:
        if self.command is None:
            return speak(text, out_path, params["voice"], params["speed"], params["pitch"])
        return speak_command(
            text, out_path, self.command, params.get("voice", ""), params.get("speed", 0), params.get("pitch", 0)
        )


# ---------------------------------------------------------------------------------------------
# The builder


@dataclass
class Summary:
    """What one build did. ``tts_calls`` counts turns synthesised by this run."""

    out_dir: Path
    conversations: int = 0  # written to conversations.json
    skipped_input: int = 0  # input items that were invalid
    failed: int = 0  # conversations dropped because a turn could not be spoken
    tts_calls: int = 0
    reused: int = 0  # turns whose wav was already there
    audio_seconds: float = 0.0  # speech in the written conversations
    failures: list[str] = field(default_factory=list)


@dataclass
class _Job:
    conv: int  # index into the conversation list
    turn: int
    text: str
    rel: str  # audio path relative to OUT_DIR
    params: dict[str, Any]
    seconds: float = 0.0


def _prior_turns(out_dir: Path) -> dict[str, dict[str, Any]]:
    """What earlier runs recorded per audio file: {"audio/x-0.wav": {"text":..., "tts":...}}."""
    prior: dict[str, dict[str, Any]] = {}
    conversations = out_dir / CONVERSATIONS_FILE
    if conversations.is_file():
        try:
            for conv in read_conversations(conversations):
                for t in conv.turns:
                    if t.audio is not None:
                        rel = Path(os.path.relpath(t.audio, out_dir)).as_posix()
                        prior[rel] = {"text": t.text, "tts": t.tts}
        except DataError as exc:
            LOG.warning("ignoring the earlier %s: %s", CONVERSATIONS_FILE, exc)
    journal = out_dir / JOURNAL_FILE
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                prior[entry["audio"]] = {"text": entry.get("text"), "tts": entry.get("tts")}
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a killed run
    return prior


def _existing_seconds(path: Path) -> float | None:
    try:
        return audio_duration(path) if path.is_file() else None
    except RecordError:
        return None


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show,
    )


def build_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    zh_voices: Sequence[str] = DEFAULT_ZH_VOICES,
    variants: Sequence[str] = (),
    speed: tuple[int, int] = DEFAULT_SPEED,
    pitch: tuple[int, int] = DEFAULT_PITCH,
    tts_command: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    on_error: OnError = "skip",
    limit: int | None = None,
    max_chars: int | None = None,
    show_progress: bool = False,
) -> Summary:
    """Speak every human turn of ``source`` into ``out_dir``; see the module docstring."""
    plan = TtsPlan(tuple(voices), tuple(zh_voices), tuple(variants), tuple(speed), tuple(pitch),
                   tts_command, seed)
    plan.check()
    out_dir = Path(out_dir)
    audio_dir = out_dir / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*audio_dir.glob(TMP_PREFIX + "*"), *stale_temp_files(audio_dir)]:
        stale.unlink(missing_ok=True)

    convs = read_text_conversations(source, on_error, max_chars)
    summary = Summary(out_dir=out_dir, skipped_input=convs.summary.skipped)
    convs = convs[:limit] if limit is not None else convs

    prior = _prior_turns(out_dir)
    jobs: list[_Job] = []
    todo: list[_Job] = []
    for ci, conv in enumerate(convs):
        for ti, (role, text) in enumerate(conv.turns):
            if role != "human":
                continue
            rel = f"{AUDIO_DIR}/{conv.id}-{ti}.wav"
            before = prior.get(rel)
            job = _Job(ci, ti, text, rel, plan.draw(f"{conv.id}:{ti}", text))
            seconds = _existing_seconds(out_dir / rel)
            if seconds and (before is None or before["text"] in (None, text)):
                job.seconds = seconds
                job.params = (before or {}).get("tts") or job.params
                summary.reused += 1
            else:
                todo.append(job)
            jobs.append(job)
    if summary.reused:
        LOG.info("%d turns already spoken in %s, %d to go", summary.reused, out_dir, len(todo))

    failed = _synthesise(plan, todo, out_dir, convs, summary, workers, on_error, show_progress)

    by_conv: dict[int, list[_Job]] = {}
    for job in jobs:
        by_conv.setdefault(job.conv, []).append(job)
    built: list[Dialogue] = []
    for ci, conv in enumerate(convs):
        if ci in failed:
            continue
        spoken = {j.turn: j for j in by_conv.get(ci, [])}
        turns = []
        for ti, (role, text) in enumerate(conv.turns):
            if role == "gpt":
                turns.append(DialogueTurn(role="gpt", value=text))
                continue
            job = spoken[ti]
            summary.audio_seconds += job.seconds
            turns.append(DialogueTurn(role="human", value=AUDIO_MARKER, audio=out_dir / job.rel, text=text, tts=job.params))
        built.append(Dialogue(id=conv.id, turns=turns))
    write_conversations(built, out_dir / CONVERSATIONS_FILE)
    summary.conversations = len(built)
    summary.failed = len(failed)
    if not failed:
        (out_dir / JOURNAL_FILE).unlink(missing_ok=True)
    return summary


def _synthesise(
    plan: TtsPlan,
    todo: list[_Job],
    out_dir: Path,
    convs: list[TextConversation],
    summary: Summary,
    workers: int | None,
    on_error: OnError,
    show_progress: bool,
) -> set[int]:
    """Speak ``todo`` in parallel, journalling each finished turn; return the failed conversations."""
    failed: set[int] = set()
    if not todo:
        return failed
    workers = max(1, workers or os.cpu_count() or 1)
    with _progress(show_progress) as progress, (out_dir / JOURNAL_FILE).open("a", encoding="utf-8") as journal:
        task = progress.add_task("speaking", total=len(todo))
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures: dict[Future, _Job] = {
                pool.submit(plan.speak, job.text, out_dir / job.rel, job.params): job for job in todo
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = futures[fut]
                    progress.advance(task)
                    try:
                        job.seconds = fut.result()
                    except Exception as exc:  # one turn's failure never ends the run (unless asked)
                        detail = str(exc) if isinstance(exc, TtsError) else f"{type(exc).__name__}: {exc}"
                        message = f"{convs[job.conv].id} turn {job.turn}: {detail}"
                        if on_error == "fail":
                            raise TtsError(message) from None
                        failed.add(job.conv)
                        summary.failures.append(message)
                        LOG.warning("skipped conversation %s", message)
                        continue
                    summary.tts_calls += 1
                    entry = {"audio": job.rel, "text": job.text, "tts": job.params, "seconds": round(job.seconds, 3)}
                    journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    journal.flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return failed


# ---------------------------------------------------------------------------------------------
# Command line


def _range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW:HIGH, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llasm_finetune.build_dataset",
        description="Speak the human turns of text conversations (ShareGPT or Alpaca) into a spoken-"
        "instruction dataset: OUT_DIR/audio/*.wav + OUT_DIR/conversations.json. Reruns resume.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="text conversations (.json list or .jsonl)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--voices", type=_names, default=DEFAULT_VOICES,
                        help=f"espeak-ng voices for non-Chinese text (default {','.join(DEFAULT_VOICES)})")
    parser.add_argument("--zh-voices", type=_names, default=DEFAULT_ZH_VOICES,
                        help="voices for text with Han characters (default cmn)")
    parser.add_argument("--variants", type=_names, default=(),
                        help="espeak-ng variants drawn per turn, e.g. m3,f2,f4 (default none)")
    parser.add_argument("--speed", type=_range, default=DEFAULT_SPEED, help="words per minute, N or LOW:HIGH (140:190)")
    parser.add_argument("--pitch", type=_range, default=DEFAULT_PITCH, help="0-99, N or LOW:HIGH (30:70)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tts-command", help="a command-line TTS: placeholders {out} {text} {voice} {speed} {pitch}")
    parser.add_argument("--workers", type=int, default=None, help="parallel TTS calls (default: CPU count)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--max-chars", type=int, default=None, help="skip conversations with a longer human turn")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                        help="a bad input item or TTS failure: skip that conversation (default) or stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .manifests import setup_logging

    args = build_parser().parse_args(argv)
    console = setup_logging()
    try:
        s = build_dataset(
            args.source, args.out_dir, voices=args.voices, zh_voices=args.zh_voices, variants=args.variants,
            speed=args.speed, pitch=args.pitch, tts_command=args.tts_command, seed=args.seed,
            workers=args.workers, on_error=args.on_error, limit=args.limit, max_chars=args.max_chars,
            show_progress=True,
        )
        if s.conversations == 0:
            raise DataError(f"no conversation was built ({s.failed} failed, {s.skipped_input} invalid input items)")
    except DataError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print(f"interrupted: run the same command again to continue in {args.out_dir}")
        return 130
    LOG.info(
        "wrote %d conversations (%.1f min of speech) to %s: %d turns spoken, %d reused, "
        "%d conversations failed, %d input items invalid",
        s.conversations, s.audio_seconds / 60, s.out_dir / CONVERSATIONS_FILE, s.tts_calls, s.reused,
        s.failed, s.skipped_input,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
