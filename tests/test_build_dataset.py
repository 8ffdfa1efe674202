"""The spoken-instruction dataset builder: espeak-ng and command TTS, resume, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from llasm_finetune.build_dataset import JOURNAL_FILE, build_dataset, main, read_text_conversations
from llasm_finetune.records import DataError, read_conversations
from llasm_finetune.voices import DEFAULT_ZH_VOICES, TtsError, command_argv, has_cjk, speak

SHORT = "What time is it?"
LONG = "Please tell me three interesting facts about the planet Jupiter and its many moons."
CONVERSATIONS = [
    {"id": "short", "conversations": [{"from": "human", "value": SHORT}, {"from": "gpt", "value": "Noon."}]},
    {"id": "multi", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": LONG}, {"role": "assistant", "content": "It is big."},
        {"role": "user", "content": "And Saturn?"}, {"role": "assistant", "content": "Rings."},
    ]},
    {"id": "zh", "conversations": [{"from": "user", "value": "今天天气怎么样"}, {"from": "assistant", "value": "晴天。"}]},
]

TTS_SCRIPT = """#!/bin/sh
# usage: tts.sh OUT  (text on stdin); fails on purpose for texts that say "explode"
text=$(cat)
case "$text" in *explode*) echo "cannot say that" >&2; exit 3;; esac
printf '%s' "$text" | espeak-ng --stdin -v en -w "$1"
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    src = root / "sharegpt.json"
    src.write_text(json.dumps(CONVERSATIONS, ensure_ascii=False))
    summary = build_dataset(src, root / "out", workers=2, seed=3)
    return src, root / "out", summary


def _wav(path: Path) -> float:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "WAV")
    return info.duration


def test_builds_spoken_conversations(built):
    _, out, summary = built
    assert (summary.conversations, summary.tts_calls, summary.reused, summary.failed) == (3, 4, 0, 0)
    convs = read_conversations(out / "conversations.json", on_error="fail", check_audio=True)
    assert [c.id for c in convs] == ["short", "multi", "zh"]
    multi = convs[1]
    assert [t.role for t in multi.turns] == ["human", "gpt", "human", "gpt"]  # the system turn is dropped
    assert multi.turns[0].value == "<audio>" and multi.turns[0].text == LONG
    assert multi.turns[2].audio == out / "audio" / "multi-2.wav"
    raw = json.loads((out / "conversations.json").read_text())
    assert raw[0]["conversations"][0]["audio"] == "audio/short-0.wav"
    assert raw[2]["conversations"][0]["tts"]["voice"] == DEFAULT_ZH_VOICES[0]  # Han characters: the Mandarin voice
    for conv in convs:
        tts = conv.turns[0].tts
        assert 140 <= tts["speed"] <= 190 and 30 <= tts["pitch"] <= 70
    assert convs[0].turns[0].tts["voice"] != DEFAULT_ZH_VOICES[0]

    short, long_ = _wav(out / "audio" / "short-0.wav"), _wav(out / "audio" / "multi-0.wav")
    for text, seconds in ((SHORT, short), (LONG, long_)):
        assert 0.04 * len(text) < seconds < 0.25 * len(text), (text, seconds)
    assert long_ > 2 * short
    assert 0.5 < _wav(out / "audio" / "zh-0.wav") < 0.5 * 7
    assert abs(summary.audio_seconds - sum(_wav(p) for p in (out / "audio").glob("*.wav"))) < 1e-3
    assert not (out / JOURNAL_FILE).exists() and not list((out / "audio").glob(".tmp-*"))


def test_resume_only_speaks_what_is_missing(built):
    src, out, _ = built
    before = json.loads((out / "conversations.json").read_text())
    (out / "audio" / "multi-2.wav").unlink()
    summary = build_dataset(src, out, workers=2, seed=3)
    assert (summary.tts_calls, summary.reused, summary.conversations) == (1, 3, 3)
    assert (out / "audio" / "multi-2.wav").is_file()
    assert json.loads((out / "conversations.json").read_text()) == before  # same voices drawn again
    again = build_dataset(src, out, workers=2, seed=99)
    assert again.tts_calls == 0  # existing audio keeps the settings it was spoken with
    assert json.loads((out / "conversations.json").read_text()) == before


def test_speak_and_voice_choice(tmp_path):
    assert has_cjk("answer in Chinese: 你好") and not has_cjk("hello, ok") and not has_cjk("こんにちは")
    slow = speak("one two three four", tmp_path / "slow.wav", "en", speed=120)
    fast = speak("one two three four", tmp_path / "fast.wav", "en", speed=300)
    assert fast < slow and abs(_wav(tmp_path / "slow.wav") - slow) < 1e-6
    with pytest.raises(TtsError, match="no sound"):
        speak("...", tmp_path / "silent.wav")


def test_command_template_failures_and_journal(tmp_path):
    script = tmp_path / "tts.sh"
    script.write_text(TTS_SCRIPT)
    items = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Translate", "input": "good morning", "output": "早上好"},
        {"instruction": "Now explode, please.", "output": "No."},
    ]
    src = tmp_path / "alpaca.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "out"
    template = f"sh {script} {{out}}"

    summary = build_dataset(src, out, tts_command=template, workers=2)
    assert (summary.conversations, summary.failed, summary.tts_calls) == (2, 1, 2)
    assert summary.failures == ["000002 turn 0: sh exited with 3: cannot say that"]
    convs = read_conversations(out / "conversations.json", on_error="fail", check_audio=True)
    assert convs[1].turns[0].text == "Translate\ngood morning"
    assert convs[1].turns[0].tts == {"engine": "command", "command": template}
    assert (out / JOURNAL_FILE).is_file()  # kept while something failed

    with pytest.raises(TtsError, match="exited with 3"):
        build_dataset(src, out, tts_command=template, workers=1, on_error="fail")

    items[2]["instruction"] = "Now stop, please."
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    summary = build_dataset(src, out, tts_command=template, workers=1)
    assert (summary.conversations, summary.failed, summary.tts_calls, summary.reused) == (3, 0, 1, 2)
    assert not (out / JOURNAL_FILE).exists()


def test_command_placeholders_are_single_arguments(tmp_path):
    text = "it's \"quoted\" $(touch pwned) ; echo {out}"
    argv = command_argv("espeak-ng -w {out} -- {text}", {"text": text, "out": "a b.wav", "voice": "",
                                                           "speed": "0", "pitch": "0"})
    assert argv == ["espeak-ng", "-w", "a b.wav", "--", text]
    src = tmp_path / "in.json"
    src.write_text(json.dumps([{"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "ok"}]}]))
    summary = build_dataset(src, tmp_path / "out", tts_command="espeak-ng -v {voice} -s {speed} -w {out} {text}",
                            voices=["en-us"], speed=(150, 150), workers=1)
    assert summary.conversations == 1 and not (tmp_path / "pwned").exists()
    turn = read_conversations(tmp_path / "out" / "conversations.json")[0].turns[0]
    assert turn.tts["voice"] == "en-us" and turn.tts["speed"] == 150 and "pitch" not in turn.tts
    # no {out}: the command writes the audio to stdout; no {text}: it reads the text from stdin
    shutil.rmtree(tmp_path / "out")
    assert build_dataset(src, tmp_path / "out", tts_command="espeak-ng --stdout").tts_calls == 1


def test_input_formats_and_errors(tmp_path, caplog):
    items = [
        {"id": "a/b c", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                                         {"from": "human", "value": "unanswered"}]},
        [{"role": "user", "content": "list form"}, {"role": "assistant", "content": "fine"}],
        {"id": "a/b c", "conversations": [{"from": "human", "value": "dup id"}, {"from": "gpt", "value": "ok"}]},
        {"conversations": [{"from": "gpt", "value": "gpt first"}, {"from": "human", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "an <audio> tag"}]},
        {"prompt": "unknown layout"},
        {"conversations": [{"from": "human", "value": "x" * 50}, {"from": "gpt", "value": "long"}]},
    ]
    src = tmp_path / "mixed.json"
    src.write_text(json.dumps(items))
    convs = read_text_conversations(src, max_chars=40)
    assert [c.id for c in convs] == ["a_b_c", "000001", "a_b_c_2"]
    assert convs[0].turns == [("human", "hi"), ("gpt", "yo")]
    problems = convs.summary.problems
    assert len(problems) == 4 and "record 3: turn 0: expected human" in problems[0]
    assert "audio marker" in problems[1] and "expected 'conversations'" in problems[2] and "max-chars" in problems[3]
    with pytest.raises(DataError, match="record 3"):
        read_text_conversations(src, on_error="fail")
    with pytest.raises(TtsError, match="no voice 'xx-nope'"):
        build_dataset(src, tmp_path / "out", voices=["xx-nope"])
    with pytest.raises(TtsError, match="not found: no-such-tts"):
        build_dataset(src, tmp_path / "out", tts_command="no-such-tts {out}")


def test_command_line(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(CONVERSATIONS[:1]))
    assert main([str(src), str(tmp_path / "out"), "--speed", "170", "--pitch", "40:45", "--workers", "1"]) == 0
    turn = read_conversations(tmp_path / "out" / "conversations.json", on_error="fail")[0].turns[0]
    assert turn.tts["speed"] == 170 and 40 <= turn.tts["pitch"] <= 45
    assert main([str(tmp_path / "missing.json"), str(tmp_path / "out2")]) == 8
