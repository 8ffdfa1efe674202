"""`llasm eval-quant`: each LLM quantization of a bundle scored against f32 on the same prompts.

A tiny random bundle is exported at test time with f32, q8_0 and q4_k_m LLMs from llama.cpp's
quantizer (width 256, so the k-quant rows are real 4-bit blocks, not a fallback type).
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from llasm_cli.cli import app
from llasm_cli.errors import BundleError
from llasm_cli.eval_quant import eval_quant, pick_reference, text_prompts
from llasm_cli.formats.bundle import MANIFEST_FILE
from llasm_cli.formats.gguf_check import read_gguf

TEXTS = ("what is seven plus five?", "please translate this sentence to chinese.", "今天天气很好。")


@pytest.fixture(scope="module")
def quant_bundle(tmp_path_factory):
    from llasm_export.bundle import export_bundle
    from llasm_finetune.tiny import build_tiny

    root = tmp_path_factory.mktemp("eval-quant")
    ckpt = build_tiny(root / "ckpt", seed=2, llm_dim=256)
    export_bundle(ckpt, root / "bundle", ("f32", "q8_0", "q4_k_m"), tower_types=("f32",))
    assert read_gguf(root / "bundle" / "llm.q4_k_m.gguf").types["blk.0.ffn_up.weight"] == "Q4_K"
    return root / "bundle"


def test_scores_against_f32(quant_bundle, question_audio):
    from llasm_cli.eval_quant import Prompt

    prompts = [Prompt("question.wav", samples=question_audio), *text_prompts(TEXTS)]
    report = eval_quant(quant_bundle, prompts, max_tokens=16, backend="ggml")
    by = {s.variant: s for s in report.scores}
    assert [s.variant for s in report.scores] == ["f32", "q8_0", "q4_k_m"] and report.reference == "f32"
    ref, q8, q4 = by["f32"], by["q8_0"], by["q4_k_m"]
    assert ref.reference and ref.top1 == 1.0 and ref.identical_answers == 1.0 and abs(ref.mean_kl) < 1e-6
    assert ref.positions == q8.positions == q4.positions >= report.answer_tokens > 0
    assert q8.top1 >= q4.top1 and q8.mean_kl < q4.mean_kl
    assert ref.size_bytes > q8.size_bytes > q4.size_bytes
    assert all(s.tokens_per_s > 0 for s in report.scores)


def test_cli_json(quant_bundle, question_wav, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(question_wav, clips / "question.wav")
    res = CliRunner().invoke(app, ["eval-quant", str(quant_bundle), "--audio", str(clips), "--text", TEXTS[0],
                                   "--variants", "q8_0", "--max-tokens", "8", "--backend", "ggml", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    data = json.loads(res.stdout)
    assert data["reference"] == "f32" and data["prompts"] == ["question.wav", f"text: {TEXTS[0]}"]
    assert [s["variant"] for s in data["scores"]] == ["f32", "q8_0"]
    for s in data["scores"]:
        assert {"top1", "mean_kl", "identical_answers", "tokens_per_s", "size_bytes", "file"} <= set(s)
    assert data["scores"][0]["top1"] == 1.0


def test_without_f32_the_most_precise_variant_is_the_reference(quant_bundle, tmp_path):
    assert pick_reference(["q4_k_m", "f16", "q8_0"])[0] == "f16"
    copy = tmp_path / "no-f32"
    shutil.copytree(quant_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    del manifest["llm_files"]["f32"]
    (copy / "llm.f32.gguf").unlink()
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    report = eval_quant(copy, text_prompts(TEXTS[:1]), max_tokens=6, backend="ggml")
    assert report.reference == "q8_0" and "no f32" in report.note
    assert [s.variant for s in report.scores] == ["q8_0", "q4_k_m"] and report.scores[0].top1 == 1.0
    with pytest.raises(BundleError, match="no LLM variant"):
        eval_quant(copy, text_prompts(TEXTS[:1]), variants=["f16"])
