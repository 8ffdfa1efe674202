"""The training data formats: readers on good and bad input, writers round-trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from llasm_finetune.records import (
    AsrRecord,
    DataError,
    Dialogue,
    DialogueTurn,
    read_asr_manifest,
    read_conversations,
    write_asr_manifest,
    write_conversations,
)

from llasm_cli.errors import LlasmError
from tests.helpers import espeak


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("records")
    (root / "clips").mkdir()
    espeak("hello world", root / "clips" / "a.wav")
    espeak("你好", root / "clips" / "b.wav", voice="cmn")
    (root / "clips" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    return root


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines))
    return path


def test_data_error_is_a_user_error():
    assert issubclass(DataError, LlasmError) and DataError.exit_code == 8


def test_asr_manifest_good(data):
    path = _jsonl(data / "good.jsonl", [
        {"audio": "clips/a.wav", "text": "hello world", "lang": "en", "duration": 1.0},
        "",
        {"audio": str(data / "clips" / "b.wav"), "text": "你好", "lang": "zh"},
    ])
    recs = read_asr_manifest(path, check_audio=True)
    assert [r.audio for r in recs] == [data / "clips" / "a.wav", data / "clips" / "b.wav"]
    assert recs[0].duration == 1.0  # given durations are kept
    assert 0.2 < recs[1].duration < 3  # missing ones are measured when the audio is checked
    assert recs.summary.kept == 2 and recs.summary.skipped == 0


def test_asr_manifest_bad_lines_skip_or_fail(data, caplog):
    path = _jsonl(data / "bad.jsonl", [
        {"audio": "clips/a.wav", "text": "hello", "lang": "en"},
        '{"audio": "clips/a.wav", "text": "cut sh',
        {"audio": "clips/a.wav", "lang": "en"},
        {"audio": "clips/a.wav", "text": "x", "lang": "en", "duration": "long"},
        ["not", "an", "object"],
    ])
    with caplog.at_level(logging.WARNING, logger="llasm.data"):
        recs = read_asr_manifest(path)
    assert len(recs) == 1 and recs.summary.skipped == 4
    assert "bad.jsonl:2: malformed JSON" in caplog.text
    assert "bad.jsonl:3: missing field 'text'" in caplog.text
    assert any("bad.jsonl:4" in p and "duration" in p for p in recs.summary.problems)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        read_asr_manifest(path, on_error="fail")


def test_asr_manifest_missing_and_corrupt_audio(data):
    path = _jsonl(data / "audio.jsonl", [
        {"audio": "clips/a.wav", "text": "hello", "lang": "en"},
        {"audio": "clips/gone.wav", "text": "gone", "lang": "en"},
        {"audio": "clips/corrupt.wav", "text": "broken", "lang": "en"},
    ])
    assert len(read_asr_manifest(path)) == 3  # the audio is only opened when asked
    recs = read_asr_manifest(path, check_audio=True)
    assert [r.text for r in recs] == ["hello"]
    assert "audio.jsonl:2: audio file not found" in recs.summary.problems[0]
    assert "audio.jsonl:3: corrupt or unreadable audio file" in recs.summary.problems[1]
    with pytest.raises(DataError, match=r"audio\.jsonl:2: audio file not found"):
        read_asr_manifest(path, on_error="fail", check_audio=True)


def test_missing_file_and_broken_json_list(data):
    with pytest.raises(DataError, match="not found"):
        read_asr_manifest(data / "nope.jsonl")
    (data / "broken.json").write_text('[{"id": "a", ')
    with pytest.raises(DataError, match="not a valid JSON list"):
        read_conversations(data / "broken.json")


def _conv(cid, *turns):
    return {"id": cid, "conversations": list(turns)}


H = {"from": "human", "value": "<audio>", "audio": "clips/a.wav"}
G = {"from": "gpt", "value": "Hi there."}


def test_conversations_good_and_bad(data, caplog):
    items = [
        _conv("ok", H, G, {"from": "human", "value": "answer in Chinese\n<audio>", "audio": "clips/b.wav"}, G),
        _conv("typed", {"from": "human", "value": "typed question"}, G),
        _conv("order", G, H),
        _conv("two-marks", {"from": "human", "value": "<audio><audio>", "audio": "clips/a.wav"}, G),
        _conv("no-audio", {"from": "human", "value": "<audio>"}, G),
        _conv("unanswered", H),
        {"conversations": [H, G]},
        _conv("gone", {"from": "human", "value": "<audio>", "audio": "clips/gone.wav"}, G),
        _conv("corrupt", {"from": "human", "value": "<audio>", "audio": "clips/corrupt.wav"}, G),
        _conv("ok", H, G),
    ]
    path = data / "convs.json"
    path.write_text(json.dumps(items, ensure_ascii=False))
    with caplog.at_level(logging.WARNING, logger="llasm.data"):
        convs = read_conversations(path, check_audio=True)
    assert [c.id for c in convs] == ["ok", "typed"]
    assert convs[0].turns[2].audio == data / "clips" / "b.wav"
    assert convs[0].turns[2].value == "answer in Chinese\n<audio>"
    problems = convs.summary.problems
    assert len(problems) == 8
    assert "convs.json: record 2: turn 0: expected 'from': 'human'" in problems[0]
    assert "record 3" in problems[1] and "exactly once" in problems[1]
    assert "record 4" in problems[2] and "has no 'audio'" in problems[2]
    assert "record 5" in problems[3] and "last turn" in problems[3]
    assert "record 6" in problems[4] and "missing field 'id'" in problems[4]
    assert "record 7" in problems[5] and "not found" in problems[5]
    assert "record 8" in problems[6] and "corrupt" in problems[6]
    assert "record 9" in problems[7] and "duplicate id" in problems[7]
    assert "convs.json: record 2" in caplog.text
    with pytest.raises(DataError, match=r"convs\.json: record 2: turn 0"):
        read_conversations(path, on_error="fail")


def test_conversations_jsonl_lines(data):
    path = _jsonl(data / "convs.jsonl", [_conv("a", H, G), "{oops", _conv("b", H, G)])
    convs = read_conversations(path)
    assert [c.id for c in convs] == ["a", "b"]
    assert convs.summary.problems[0].endswith("convs.jsonl:2: malformed JSON: Expecting property name "
                                              "enclosed in double quotes (column 2)")


def test_writers_round_trip(data, tmp_path):
    outside = data / "clips" / "a.wav"
    (tmp_path / "audio").mkdir()
    inside = espeak("inside", tmp_path / "audio" / "x.wav")
    recs = [AsrRecord(inside, "inside", "en", 0.5), AsrRecord(outside, "hello world", "en")]
    write_asr_manifest(recs, tmp_path / "m.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines[0] == {"audio": "audio/x.wav", "text": "inside", "lang": "en", "duration": 0.5}
    assert lines[1]["audio"] == str(outside) and "duration" not in lines[1]
    assert read_asr_manifest(tmp_path / "m.jsonl", on_error="fail") == recs

    convs = [Dialogue("c1", [DialogueTurn("human", "<audio>", inside, text="inside", tts={"voice": "en"}),
                                 DialogueTurn("gpt", "答")])]
    for name in ("c.json", "c.jsonl"):
        write_conversations(convs, tmp_path / name)
        assert read_conversations(tmp_path / name, on_error="fail", check_audio=True) == convs
    assert json.loads((tmp_path / "c.json").read_text())[0]["conversations"][0]["audio"] == "audio/x.wav"
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
