"""The spoken-instruction dataset builder: text conversations in, spoken human turns out.

(One command read top to bottom: three input formats and the parallel, resumable run belong
together; over 400 lines for that reason. The voices are voices.py's.)

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
import json
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llasm_cli.files import stale_temp_files

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
from .voices import (
    DEFAULT_PITCH,
    DEFAULT_SPEED,
    DEFAULT_VOICES,
    DEFAULT_ZH_VOICES,
    TMP_PREFIX,
    TtsError,
    TtsPlan,
)

CONVERSATIONS_FILE = "conversations.json"
JOURNAL_FILE = "journal.jsonl"
AUDIO_DIR = "audio"
HUMAN_ROLES = {"human", "user"}
GPT_ROLES = {"gpt", "assistant"}


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
                        help="voices for text with Han characters (default cmn-latn-pinyin: Debian's plain cmn reads Han characters as English)")
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
