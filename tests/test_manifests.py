"""Corpus converters on tiny fake LibriSpeech, Common Voice and AISHELL-1 trees of real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from llasm_finetune.manifests import aishell, commonvoice, join_tokens, librispeech, main
from llasm_finetune.records import DataError, read_asr_manifest

from tests.helpers import espeak


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    wav = espeak("one two three", tmp_path_factory.mktemp("speech") / "s.wav")
    data, rate = sf.read(wav, dtype="float32")
    return data, rate


def _put(path: Path, speech, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, *speech, format=fmt)
    return path


@pytest.fixture
def libri(tmp_path, speech) -> Path:
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, ch, utts in (("19", "198", ("0000", "0001", "0002")), ("26", "495", ("0000",))):
        d = root / spk / ch
        d.mkdir(parents=True)
        lines = [f"{spk}-{ch}-{u} WORDS OF UTTERANCE {u}" for u in utts]
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
        for u in utts:
            if (spk, u) != ("19", "0001"):  # listed in the transcript, missing on disk
                _put(d / f"{spk}-{ch}-{u}.flac", speech)
    return root


def test_librispeech(libri):
    recs = librispeech(libri)
    assert [r.audio.name for r in recs] == ["19-198-0000.flac", "19-198-0002.flac", "26-495-0000.flac"]
    assert recs[0].text == "WORDS OF UTTERANCE 0000" and recs[0].lang == "en"
    assert all(0.5 < r.duration < 3 for r in recs)
    assert recs.summary.skipped == 1
    assert "19/198/19-198.trans.txt:2: audio file not found" in recs.summary.problems[0]
    with pytest.raises(DataError, match="19-198-0001.flac"):
        librispeech(libri, on_error="fail")


def test_librispeech_command(libri, tmp_path):
    out = tmp_path / "out" / "libri.jsonl"
    assert main(["librispeech", str(libri.parent), str(out)]) == 0  # the folder above the split works too
    recs = read_asr_manifest(out, on_error="fail", check_audio=True)
    assert len(recs) == 3 and recs[2].audio == libri / "26" / "495" / "26-495-0000.flac"
    assert main(["librispeech", str(tmp_path / "empty"), str(tmp_path / "x.jsonl")]) == 8


def test_commonvoice(tmp_path, speech):
    root = tmp_path / "cv" / "zh-CN"
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
    rows = [
        "c1\ta.mp3\t你好世界\t2\t0\t\t\t\tzh-CN\t",
        'c2\tb.mp3\t他说"好"\t2\t0\t\t\t\tzh-CN\t',
        "c3\tmissing.mp3\t不见了\t2\t0\t\t\t\tzh-CN\t",
    ]
    (root / "clips").mkdir(parents=True)
    (root / "train.tsv").write_text("\n".join([header, *rows]) + "\n")
    _put(root / "clips" / "a.mp3", speech, "MP3")
    _put(root / "clips" / "b.mp3", speech, "MP3")

    recs = commonvoice(root)
    assert [(r.audio.name, r.text, r.lang) for r in recs] == [("a.mp3", "你好世界", "zh-CN"), ("b.mp3", '他说"好"', "zh-CN")]
    assert all(r.duration > 0.5 for r in recs)
    assert "train.tsv:4: audio file not found" in recs.summary.problems[0]
    assert [r.lang for r in commonvoice(root / "train.tsv", lang="zh")] == ["zh", "zh"]
    with pytest.raises(DataError, match="splits here: train"):
        commonvoice(root, split="validated")
    out = tmp_path / "cv.jsonl"
    assert main(["commonvoice", str(root), str(out), "--lang", "zh"]) == 0
    assert [json.loads(line)["lang"] for line in out.read_text().splitlines()] == ["zh", "zh"]


def test_aishell(tmp_path, speech):
    root = tmp_path / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0764W0121 我 爱 NBA 的 比赛\n"
    )
    _put(root / "wav" / "train" / "S0002" / "BAC009S0002W0122.wav", speech)
    _put(root / "wav" / "train" / "S0002" / "BAC009S0002W0123.wav", speech)
    _put(root / "wav" / "dev" / "S0724" / "BAC009S0724W0121.wav", speech)
    # BAC009S0764W0121 is listed but has no audio

    recs = aishell(root)
    assert [r.text for r in recs] == ["而对楼市成交抑制作用最大的限购", "也成为地方政府的眼中钉", "甚至出现交易几乎停滞的情况"]
    assert {r.lang for r in recs} == {"zh"}
    assert recs.summary.skipped == 1 and "aishell_transcript_v0.8.txt:4" in recs.summary.problems[0]
    assert [r.audio.name for r in aishell(root, split="dev")] == ["BAC009S0724W0121.wav"]
    out = tmp_path / "aishell.jsonl"
    assert main(["aishell", str(root), str(out), "--split", "train"]) == 0
    assert len(read_asr_manifest(out, on_error="fail", check_audio=True)) == 2


def test_join_tokens():
    assert join_tokens(["我", "爱", "NBA", "的", "比赛"]) == "我爱NBA的比赛"
    assert join_tokens(["hello", "world", "你", "好"]) == "hello world你好"
