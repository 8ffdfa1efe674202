"""bench/eval_quant_default.py builds its variants from the demo bundle's shipped Q8_0: F32 of it,
that F32's quantizations, and the shipped file as one more variant (byte-identical to the rebuilt Q8_0)."""

from __future__ import annotations

import pytest

from llasm_cli.formats.built_in import demo_bundle_path
from llasm_cli.formats.bundle import load_bundle

pytestmark = pytest.mark.skipif(demo_bundle_path() is None, reason="no packaged demo model")


def test_demo_variants_from_the_shipped_q8_0(tmp_path):
    from bench.eval_quant_default import FTYPES, build_bundle, same_tensors, shipped_llm, tensor_types

    demo = demo_bundle_path()
    assert shipped_llm(load_bundle(demo))[0] == "q8_0"
    out, shipped, name = build_bundle(tmp_path, demo)
    assert (shipped, name) == ("q8_0", "q8_0-shipped")
    bundle = load_bundle(out)
    assert set(bundle.variants()) == {*FTYPES, "q8_0-shipped"}
    sizes = [bundle.llm_path(v).stat().st_size for v in FTYPES]
    assert sizes == sorted(sizes, reverse=True)  # f32 > q8_0 > q6_k > q5_k_m > q4_k_m
    same, total = same_tensors(out / "llm.q8_0.gguf", bundle.llm_path("q8_0-shipped"))
    assert same == total > 0
    assert set(tensor_types(out / "llm.f32.gguf")) == {"F32"}
    assert "Q4_K" in tensor_types(out / "llm.q4_k_m.gguf")
