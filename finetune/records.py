"""The two on-disk training formats, their robust readers and atomic writers.

ASR manifest (stage 1, adaptor pre-training), JSONL, one record a line::

    {"audio": "clips/a.flac", "text": "hello world", "lang": "en", "duration": 1.9}

Instruction conversations (stage 2, LLaSM-Audio-Instructions style), a JSON list or JSONL::

    {"id": "q1", "conversations": [
        {"from": "human", "value": "answer in Chinese\\n<audio>", "audio": "audio/q1-0.wav"},
        {"from": "gpt", "value": "..."}]}

``<audio>`` marks where the speech goes in a human turn (exactly once when ``audio`` is given;
the rest of ``value`` is typed text). Turns alternate human/gpt, start with human and end with
gpt. Relative audio paths are relative to the data file's folder; the readers return absolute
paths and the writers store paths inside the data file's folder as relative ones again.

One bad record never stops a long run: with ``on_error="skip"`` it is logged (logger
``llasm.data``) with file and line (JSONL) or record index (JSON list), skipped and counted in
the ``summary`` attached to the returned list; with ``on_error="fail"`` it raises ``DataError``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from llasm_cli.errors import LlasmError
from llasm_cli.files import atomic_write_text

LOG = logging.getLogger("llasm.data")
AUDIO_MARKER = "<audio>"
ROLES = ("human", "gpt")
MAX_LOGGED = 100  # problems logged one by one per file; the rest only counted in the summary

OnError = Literal["skip", "fail"]
T = TypeVar("T")


class DataError(LlasmError):
    """A data file (manifest, conversations, transcript) or one of its audio files is unusable."""

    exit_code = 8


class RecordError(ValueError):
    """One record is invalid; the readers turn it into a logged skip or a DataError."""


@dataclass
class AsrRecord:
    """One ASR pair; ``audio`` is absolute after reading."""

    audio: Path
    text: str
    lang: str
    duration: float | None = None


@dataclass
class DialogueTurn:
    """One conversation turn. ``role`` is "human" or "gpt"; only human turns carry audio.

    ``text`` (optional) is what the audio says, as the dataset builder spoke it; ``tts`` (optional)
    the TTS settings it used. Neither is needed for training.
    """

    role: Literal["human", "gpt"]
    value: str
    audio: Path | None = None
    text: str | None = None
    tts: dict[str, Any] | None = None


@dataclass
class Dialogue:
    id: str
    turns: list[DialogueTurn]


@dataclass
class ReadSummary:
    """What a reader kept and what it skipped (each problem as "file:line: message")."""

    path: Path
    kept: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


class Records(list, Generic[T]):
    """A plain list of records with the reader's ``summary`` attached."""

    summary: ReadSummary


# ---------------------------------------------------------------------------------------------
# Problem reporting


class Reporter:
    """Collects per-record problems for one file: log and count ("skip") or raise ("fail")."""

    def __init__(self, path: Path, on_error: OnError) -> None:
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.on_error = on_error
        self.summary = ReadSummary(path=path)

    def problem(self, where: str, message: str) -> None:
        text = f"{self.summary.path}{where}: {message}"
        if self.on_error == "fail":
            raise DataError(text)
        self.summary.skipped += 1
        self.summary.problems.append(text)
        if len(self.summary.problems) <= MAX_LOGGED:
            LOG.warning("skipped %s", text)
        elif len(self.summary.problems) == MAX_LOGGED + 1:
            LOG.warning("%s: more problems are not logged one by one (see the summary)", self.summary.path)

    def result(self, items: list) -> Records:
        out: Records = Records(items)
        self.summary.kept = len(items)
        out.summary = self.summary
        if self.summary.skipped:
            LOG.warning("%s: kept %d records, skipped %d", self.summary.path, len(items), self.summary.skipped)
        return out


# ---------------------------------------------------------------------------------------------
# Raw records: JSONL lines or JSON list items, each with its location


def iter_json_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed object or RecordError) for a JSON list or a JSONL file.

    Location is ":<line>" for JSONL and ": record <index>" for a JSON list. A JSONL line that is
    not valid JSON yields a RecordError in place of the object; a JSON list that does not parse
    as a whole raises DataError (no record in it can be located).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.lstrip()[:1] == b"[":
        try:
            items = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a valid JSON list: {exc}") from None
        for index, item in enumerate(items):
            yield f": record {index}", item
        return
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f":{number}", json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield f":{number}", RecordError(f"not UTF-8 text: {exc}")
        except json.JSONDecodeError as exc:
            yield f":{number}", RecordError(f"malformed JSON: {exc.msg} (column {exc.colno})")


def _str_field(obj: dict, key: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise RecordError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(f"field {key!r} is empty")
    return value


def _resolve(base: Path, value: str) -> Path:
    return Path(os.path.abspath(base / Path(value).expanduser()))


def audio_duration(path: Path) -> float:
    """Duration in seconds of a readable, non-empty audio file; RecordError otherwise."""
    import soundfile as sf

    if not path.exists():
        raise RecordError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise RecordError(f"corrupt or unreadable audio file {path}: {exc}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise RecordError(f"audio file {path} holds no samples")
    return info.frames / info.samplerate


# ---------------------------------------------------------------------------------------------
# ASR manifest


def asr_record_from_dict(obj: Any, base: Path, check_audio: bool = False) -> AsrRecord:
    """Validate one manifest object; raise RecordError naming the problem."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    audio = _resolve(base, _str_field(obj, "audio"))
    text = _str_field(obj, "text")
    lang = _str_field(obj, "lang")
    duration = obj.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise RecordError(f"field 'duration' must be a number, got {duration!r}")
        if not math.isfinite(duration) or duration < 0:
            raise RecordError(f"field 'duration' must be a finite number >= 0, got {duration!r}")
        duration = float(duration)
    if check_audio:
        measured = audio_duration(audio)
        duration = measured if duration is None else duration
    return AsrRecord(audio=audio, text=text, lang=lang, duration=duration)


def read_asr_manifest(
    path: str | Path, on_error: OnError = "skip", check_audio: bool = False
) -> Records[AsrRecord]:
    """Read an ASR manifest (JSONL). ``check_audio`` opens every audio file's header (and fills a
    missing duration). The returned list has ``.summary`` (a ReadSummary)."""
    path = Path(path)
    report = Reporter(path, on_error)
    base = Path(os.path.abspath(path)).parent
    records: list[AsrRecord] = []
    for where, obj in iter_json_records(path):
        try:
            if isinstance(obj, RecordError):
                raise obj
            records.append(asr_record_from_dict(obj, base, check_audio))
        except RecordError as exc:
            report.problem(where, str(exc))
    return report.result(records)


# ---------------------------------------------------------------------------------------------
# Conversations


def turn_from_dict(obj: Any, index: int, base: Path, check_audio: bool) -> DialogueTurn:
    if not isinstance(obj, dict):
        raise RecordError(f"turn {index}: expected a JSON object, got {type(obj).__name__}")
    try:
        role = _str_field(obj, "from")
        value = _str_field(obj, "value", allow_empty=True)
    except RecordError as exc:
        raise RecordError(f"turn {index}: {exc}") from None
    expected = ROLES[index % 2]
    if role != expected:
        raise RecordError(
            f"turn {index}: expected 'from': {expected!r}, got {role!r} "
            "(turns alternate human/gpt, starting with human)"
        )
    audio = obj.get("audio")
    marks = value.count(AUDIO_MARKER)
    if audio is not None:
        if role != "human":
            raise RecordError(f"turn {index}: only human turns may carry audio")
        if not isinstance(audio, str) or not audio.strip():
            raise RecordError(f"turn {index}: field 'audio' must be a non-empty string")
        if marks != 1:
            raise RecordError(f"turn {index}: value must contain {AUDIO_MARKER} exactly once, found {marks}")
        audio = _resolve(base, audio)
        if check_audio:
            try:
                audio_duration(audio)
            except RecordError as exc:
                raise RecordError(f"turn {index}: {exc}") from None
    elif marks:
        raise RecordError(f"turn {index}: value contains {AUDIO_MARKER} but the turn has no 'audio'")
    elif not value.strip():
        raise RecordError(f"turn {index}: field 'value' is empty")
    text = obj.get("text")
    tts = obj.get("tts")
    if text is not None and not isinstance(text, str):
        raise RecordError(f"turn {index}: field 'text' must be a string")
    if tts is not None and not isinstance(tts, dict):
        raise RecordError(f"turn {index}: field 'tts' must be an object")
    return DialogueTurn(role=role, value=value, audio=audio, text=text, tts=tts)  # type: ignore[arg-type]


def conversation_from_dict(obj: Any, base: Path, check_audio: bool = False) -> Dialogue:
    """Validate one conversation object; raise RecordError naming the problem."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise RecordError("missing field 'id'")
    cid = obj["id"]
    if isinstance(cid, bool) or not isinstance(cid, (str, int)) or not str(cid).strip():
        raise RecordError(f"field 'id' must be a non-empty string, got {cid!r}")
    if "conversations" not in obj:
        raise RecordError("missing field 'conversations'")
    raw_turns = obj["conversations"]
    if not isinstance(raw_turns, list) or not raw_turns:
        raise RecordError("field 'conversations' must be a non-empty list of turns")
    turns = [turn_from_dict(t, i, base, check_audio) for i, t in enumerate(raw_turns)]
    if turns[-1].role != "gpt":
        raise RecordError("the last turn must be a gpt answer")
    return Dialogue(id=str(cid), turns=turns)


def read_conversations(
    path: str | Path, on_error: OnError = "skip", check_audio: bool = False
) -> Records[Dialogue]:
    """Read instruction conversations (JSON list or JSONL). ``check_audio`` opens every audio
    file's header. The returned list has ``.summary`` (a ReadSummary)."""
    path = Path(path)
    report = Reporter(path, on_error)
    base = Path(os.path.abspath(path)).parent
    convs: list[Dialogue] = []
    seen: set[str] = set()
    for where, obj in iter_json_records(path):
        try:
            if isinstance(obj, RecordError):
                raise obj
            conv = conversation_from_dict(obj, base, check_audio)
            if conv.id in seen:
                raise RecordError(f"duplicate id {conv.id!r}")
            seen.add(conv.id)
            convs.append(conv)
        except RecordError as exc:
            report.problem(where, str(exc))
    return report.result(convs)


# ---------------------------------------------------------------------------------------------
# Writers


def _store_path(audio: Path, base: Path) -> str:
    """Relative to ``base`` when the file lies inside it, absolute otherwise."""
    audio = Path(os.path.abspath(audio))
    try:
        return audio.relative_to(base).as_posix()
    except ValueError:
        return str(audio)


def asr_record_to_dict(rec: AsrRecord, base: Path) -> dict:
    out: dict[str, Any] = {"audio": _store_path(rec.audio, base), "text": rec.text, "lang": rec.lang}
    if rec.duration is not None:
        out["duration"] = round(float(rec.duration), 4)
    return out


def conversation_to_dict(conv: Dialogue, base: Path) -> dict:
    turns = []
    for t in conv.turns:
        d: dict[str, Any] = {"from": t.role, "value": t.value}
        if t.audio is not None:
            d["audio"] = _store_path(t.audio, base)
        if t.text is not None:
            d["text"] = t.text
        if t.tts is not None:
            d["tts"] = t.tts
        turns.append(d)
    return {"id": conv.id, "conversations": turns}


def write_asr_manifest(records: Iterable[AsrRecord], path: str | Path) -> Path:
    """Write an ASR manifest (JSONL) atomically."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    lines = [json.dumps(asr_record_to_dict(r, base), ensure_ascii=False) + "\n" for r in records]
    return atomic_write_text(path, "".join(lines))


def write_conversations(convs: Iterable[Dialogue], path: str | Path) -> Path:
    """Write conversations atomically: JSONL when ``path`` ends in .jsonl, else a JSON list."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    items = [conversation_to_dict(c, base) for c in convs]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
    else:
        text = json.dumps(items, ensure_ascii=False, indent=1) + "\n"
    return atomic_write_text(path, text)
