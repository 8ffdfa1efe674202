"""Checkpoint -> bundle: layout, precision, vocabulary, template, and no half-written output."""

from __future__ import annotations

import json

import pytest
from llasm_export.bundle import export_bundle
from llasm_finetune.checkpoint import load_checkpoint

from llasm_cli.errors import CheckpointError
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle
from llasm_cli.formats.gguf_check import read_gguf
from llasm_cli.llm.engine import Engine


def test_bundle_layout_and_manifest(swiglu):
    ckpt, bundle = swiglu
    b = load_bundle(bundle)
    m = b.manifest
    assert (m.adaptor, m.llm_dim, m.stack_factor, m.tokens_per_window) == ("stack-swiglu", 64, 5, 300)
    assert set(m.llm_files) == set(m.tower_files) == {"f32", "f16"}
    assert json.loads((bundle / MANIFEST_FILE).read_text())["format"] == "llasm-bundle"
    assert b.llm_path().name == "llm.f16.gguf"  # smallest precision runs by default
    assert b.llm_path("f16").stat().st_size < 0.6 * b.llm_path("f32").stat().st_size


def test_llasm_v1_bundle_has_no_ggml_tower(llasm_v1):
    _, bundle = llasm_v1
    m = load_bundle(bundle).manifest
    assert m.adaptor == "llasm-v1" and m.tower_files == {} and m.tokens_per_window == 64


def test_tensor_types(swiglu):
    _, bundle = swiglu
    llm = read_gguf(bundle / "llm.f16.gguf")
    assert llm.types["blk.0.attn_q.weight"] == "F16" and llm.types["blk.0.attn_norm.weight"] == "F32"
    tower = read_gguf(bundle / "tower.f16.gguf")
    assert tower.types["a.blk.0.ffn_up.weight"] == "F16"
    assert tower.types["a.conv1d.1.bias"] == "F32" and tower.tensors["a.conv1d.1.bias"] == (64, 1)
    assert tower.fields["clip.projector_type"] == "ultravox"
    assert tower.fields["clip.audio.projector.stack_factor"] == 5


def test_vocabulary_and_template_survive(swiglu):
    """llama.cpp tokenizes like the Hugging Face tokenizer, and the GGUF holds the chat template."""
    ckpt, bundle = swiglu
    _, tokenizer, _ = load_checkpoint(ckpt)
    with Engine(bundle / "llm.f32.gguf", n_ctx=256) as engine:
        for text in ["what is seven plus five?", "今天天气很好。", "translate: 你好, world"]:
            assert engine.tokenize(text) == tokenizer(text, add_special_tokens=False).input_ids, text
        assert engine.token_id("<au_start>") == tokenizer.convert_tokens_to_ids("<au_start>")
        assert engine.token_id("<au_end>") == tokenizer.convert_tokens_to_ids("<au_end>")
        assert engine.meta("tokenizer.chat_template") == tokenizer.chat_template
        assert engine.n_vocab == len(tokenizer)


def test_failed_export_leaves_nothing(swiglu, tmp_path):
    import shutil

    ckpt, _ = swiglu
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "adaptor.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        export_bundle(broken, tmp_path / "out", ("f16",))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken"]


def test_unmappable_tensor_is_named(swiglu, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt, _ = swiglu
    broken = tmp_path / "extra"
    shutil.copytree(ckpt, broken)
    state = load_file(str(broken / "llm" / "model.safetensors"))
    state["model.layers.0.mystery.weight"] = state["model.norm.weight"].clone()
    save_file(state, str(broken / "llm" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="can not map tensor 'model.layers.0.mystery.weight'"):
        export_bundle(broken, tmp_path / "out", ("f16",))
    assert not (tmp_path / "out").exists()


def test_quantized_bundle_runs(swiglu, question_audio, tmp_path):
    """q8_0 / q4_k_m LLMs from llama.cpp's quantizer and a Q8_0 tower load, validate and stay close."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.conversation import answer
    from tests.reference import rel_err

    ckpt, _ = swiglu
    m = export_bundle(ckpt, tmp_path / "q", ("q8_0", "q4_k_m"))
    assert m.llm_files == {"q8_0": "llm.q8_0.gguf", "q4_k_m": "llm.q4_k_m.gguf"} and m.tower_files == {"q8_0": "tower.q8_0.gguf"}
    tower = read_gguf(tmp_path / "q" / "tower.q8_0.gguf")
    assert tower.types["a.blk.0.ffn_up.weight"] == "Q8_0" and tower.types["a.conv1d.1.weight"] == "F16"
    assert read_gguf(tmp_path / "q" / "llm.q8_0.gguf").types["blk.0.ffn_up.weight"] == "Q8_0"
    ggml = Assistant(tmp_path / "q", backend="ggml", llm_variant="q8_0")
    exact = Assistant(tmp_path / "q", backend="torch", llm_variant="q8_0")
    try:
        assert rel_err(ggml.tower.encode(question_audio), exact.tower.encode(question_audio)) < 0.05
        assert answer(ggml, question_audio, max_tokens=4)
    finally:
        ggml.close()
        exact.close()
