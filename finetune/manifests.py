"""Converters from the ASR corpora people have on disk to the ASR manifest of ``records``.

    python -m llasm_finetune.manifests librispeech LibriSpeech/train-clean-100 train.jsonl
    python -m llasm_finetune.manifests commonvoice cv-corpus-17.0/zh-CN cv.jsonl --split validated --lang zh
    python -m llasm_finetune.manifests aishell data_aishell aishell-train.jsonl --split train

Layouts:
- LibriSpeech: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` (``UTTID TEXT`` lines) next to
  ``UTTID.flac``; SRC may be one split or the folder holding several (searched recursively).
- Common Voice: ``<split>.tsv`` (columns include ``path`` and ``sentence``; ``locale`` gives the
  language when present) with clips in ``clips/``. SRC is the folder or the .tsv itself.
- AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` (``UTTID w o r d s``; the tokens are
  joined) and ``wav/<split>/<speaker>/<UTTID>.wav`` (the speaker tarballs extracted).

Every record's audio header is opened (to fill ``duration``); a file a transcript lists that is
missing or unreadable is reported with the transcript's file and line and skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from .records import (
    LOG,
    AsrRecord,
    DataError,
    OnError,
    RecordError,
    Records,
    Reporter,
    audio_duration,
    write_asr_manifest,
)

AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
T = TypeVar("T")


def _track(items: list[T], description: str, show: bool) -> Iterator[T]:
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=description, total=len(items), console=Console(stderr=True))


def _record(audio: Path, text: str, lang: str) -> AsrRecord:
    return AsrRecord(audio=audio, text=text, lang=lang, duration=round(audio_duration(audio), 4))


def join_tokens(tokens: Iterable[str]) -> str:
    """Join AISHELL's space-separated tokens: no space between Chinese tokens, one between two
    Latin words ("我 爱 NBA 的 比赛" -> "我爱NBA的比赛", "hello world" stays)."""
    out = ""
    for tok in tokens:
        if out and out[-1].isascii() and out[-1].isalnum() and tok[0].isascii() and tok[0].isalnum():
            out += " "
        out += tok
    return out


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


# ---------------------------------------------------------------------------------------------


def librispeech(
    src: str | Path, lang: str = "en", on_error: OnError = "skip", show_progress: bool = False
) -> Records[AsrRecord]:
    """Records of every ``*.trans.txt`` under ``src`` (sorted by utterance id)."""
    src = Path(src)
    transcripts = sorted(src.rglob("*.trans.txt"))
    if not transcripts:
        raise DataError(f"no LibriSpeech transcripts (SPEAKER/CHAPTER/*.trans.txt) under {src}")
    report = Reporter(src, on_error)
    records: list[AsrRecord] = []
    for trans in _track(transcripts, "LibriSpeech", show_progress):
        for number, line in _lines(trans):
            where = f"/{trans.relative_to(src).as_posix()}:{number}"
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                report.problem(where, "expected 'UTTID TEXT'")
                continue
            uttid, text = parts
            try:
                records.append(_record(trans.parent / f"{uttid}.flac", text.strip(), lang))
            except RecordError as exc:
                report.problem(where, str(exc))
    return report.result(records)


def _commonvoice_tsv(src: Path, split: str) -> Path:
    if src.is_file():
        return src
    tsv = src / f"{split}.tsv"
    if not tsv.is_file():
        have = sorted(p.stem for p in src.glob("*.tsv"))
        raise DataError(f"{tsv} not found; splits here: {', '.join(have) or 'none'} (use --split)")
    return tsv


def commonvoice(
    src: str | Path,
    lang: str | None = None,
    split: str = "train",
    on_error: OnError = "skip",
    show_progress: bool = False,
) -> Records[AsrRecord]:
    """Records of one Common Voice split. ``lang`` defaults to each row's ``locale`` column."""
    tsv = _commonvoice_tsv(Path(src), split)
    clips = tsv.parent / "clips"
    with tsv.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        fields = set(rows[0]) if rows else set()
    missing = {"path", "sentence"} - fields if rows else set()
    if missing:
        raise DataError(f"{tsv}: missing column(s) {sorted(missing)}; found {sorted(fields)}")
    if lang is None and rows and "locale" not in fields:
        raise DataError(f"{tsv} has no 'locale' column: give the language with --lang")
    report = Reporter(tsv, on_error)
    records: list[AsrRecord] = []
    for number, row in enumerate(_track(rows, "Common Voice", show_progress), start=2):
        where = f":{number}"
        name, text = (row.get("path") or "").strip(), (row.get("sentence") or "").strip()
        row_lang = lang or (row.get("locale") or "").strip()
        if not name or not text or not row_lang:
            report.problem(where, "empty 'path', 'sentence' or 'locale'")
            continue
        try:
            records.append(_record(clips / name, text, row_lang))
        except RecordError as exc:
            report.problem(where, str(exc))
    return report.result(records)


def aishell(
    src: str | Path,
    lang: str = "zh",
    split: str | None = None,
    on_error: OnError = "skip",
    show_progress: bool = False,
) -> Records[AsrRecord]:
    """Records of AISHELL-1: every split, or only ``split`` (train/dev/test)."""
    src = Path(src)
    transcript = src / AISHELL_TRANSCRIPT
    if not transcript.is_file():
        raise DataError(f"AISHELL transcript not found: {transcript}")
    wav_root = src / "wav"
    wavs = {p.stem: p for p in sorted(wav_root.glob("*/*/*.wav"))}
    if not wavs:
        hint = " (extract the speaker tarballs in wav/ first)" if any(wav_root.glob("*.tar.gz")) else ""
        raise DataError(f"no wav files under {wav_root}/<split>/<speaker>/{hint}")
    if split is not None and not (wav_root / split).is_dir():
        have = sorted(p.name for p in wav_root.iterdir() if p.is_dir())
        raise DataError(f"{wav_root / split} not found; splits here: {', '.join(have)}")
    report = Reporter(transcript, on_error)
    records: list[AsrRecord] = []
    for number, line in _track(_lines(transcript), "AISHELL-1", show_progress):
        where = f":{number}"
        parts = line.split()
        if len(parts) < 2:
            report.problem(where, "expected 'UTTID w o r d s'")
            continue
        wav = wavs.get(parts[0])
        if wav is None:
            report.problem(where, f"audio file not found: {wav_root}/*/*/{parts[0]}.wav")
            continue
        if split is not None and wav.parent.parent.name != split:
            continue
        try:
            records.append(_record(wav, join_tokens(parts[1:]), lang))
        except RecordError as exc:
            report.problem(where, str(exc))
    return report.result(records)


# ---------------------------------------------------------------------------------------------


EXAMPLES = """examples:
  python -m llasm_finetune.manifests librispeech LibriSpeech/train-clean-100 train.jsonl
  python -m llasm_finetune.manifests commonvoice cv-corpus-17.0/zh-CN cv.jsonl --split validated --lang zh
  python -m llasm_finetune.manifests aishell data_aishell aishell-train.jsonl --split train
"""

CONVERTERS: dict[str, Callable[..., Records[AsrRecord]]] = {
    "librispeech": librispeech,
    "commonvoice": commonvoice,
    "aishell": aishell,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llasm_finetune.manifests",
        description="Write an ASR manifest (JSONL) from a LibriSpeech, Common Voice or AISHELL-1 tree.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", choices=sorted(CONVERTERS))
    parser.add_argument("src", type=Path, help="corpus folder (Common Voice: folder or .tsv)")
    parser.add_argument("out", type=Path, help="manifest to write (.jsonl)")
    parser.add_argument("--lang", help="language code (default: en, zh, Common Voice's locale column)")
    parser.add_argument("--split", help="Common Voice: tsv name (default train); AISHELL: train/dev/test")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                        help="a missing/unreadable file: report and skip (default) or stop")
    return parser


def convert(corpus: str, src: Path, lang: str | None, split: str | None, on_error: OnError,
            show_progress: bool = False) -> Records[AsrRecord]:
    kwargs: dict = {"on_error": on_error, "show_progress": show_progress}
    if lang is not None:
        kwargs["lang"] = lang
    if corpus == "commonvoice":
        kwargs["split"] = split or "train"
    elif corpus == "aishell":
        kwargs["split"] = split
    elif split is not None:
        raise DataError("--split is not used for LibriSpeech: point SRC at the split's folder")
    return CONVERTERS[corpus](src, **kwargs)


def setup_logging():
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    return console


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = setup_logging()
    try:
        records = convert(args.corpus, args.src, args.lang, args.split, args.on_error, show_progress=True)
        write_asr_manifest(records, args.out)
    except DataError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    hours = sum(r.duration or 0.0 for r in records) / 3600
    LOG.info("wrote %d records (%.2f h) to %s; skipped %d", len(records), hours, args.out, records.summary.skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
