"""A bundle read back into a training checkpoint: the weights it was exported from, to the file's precision."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from llasm_finetune.checkpoint import load_checkpoint
from llasm_finetune.from_bundle import import_bundle

from llasm_cli.errors import CheckpointError


def _llm_diff(a, b) -> float:
    sa, sb = a.llm.state_dict(), b.llm.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_f32_bundle_reads_back_to_the_exported_weights(swiglu, tmp_path):
    ckpt, bundle = swiglu
    out = import_bundle(bundle, ckpt, tmp_path / "back", llm_type="f32",
                        adaptor={"encoder_input": ["unpadded", "chunked"], "chunk_seconds": 0.5, "context_seconds": 1.0})
    orig, _, _ = load_checkpoint(ckpt)
    back, tok, meta = load_checkpoint(out)
    assert _llm_diff(orig, back) == 0.0  # q/k un-permuted exactly (GQA: 4 heads, 2 kv heads)
    for k, v in orig.tower.adaptor.state_dict().items():
        assert torch.equal(v, back.tower.adaptor.state_dict()[k]), k
    assert meta.adaptor.encoder_input == ["unpadded", "chunked"]
    assert (meta.adaptor.chunk_seconds, meta.adaptor.context_seconds) == (0.5, 1.0)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert torch.equal(orig.llm(ids).logits, back.llm(ids).logits)


def test_f16_bundle_reads_back_to_half_precision(swiglu, tmp_path):
    ckpt, bundle = swiglu
    orig, _, _ = load_checkpoint(ckpt)
    back, _, _ = load_checkpoint(import_bundle(bundle, ckpt, tmp_path / "back16", llm_type="f16"))
    diff = _llm_diff(orig, back)
    assert 0 < diff < 2e-3  # the matrices went through float16 (weights ~N(0, 0.2))


def test_bundle_without_torch_tower_is_refused(swiglu, tmp_path):
    ckpt, bundle = swiglu
    copy = tmp_path / "no-torch"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "llasm-bundle.json").read_text())
    shutil.rmtree(copy / manifest["torch_tower"])
    manifest["torch_tower"] = None
    (copy / "llasm-bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no torch tower"):
        import_bundle(copy, ckpt, tmp_path / "x")
    assert not (tmp_path / "x").exists()
