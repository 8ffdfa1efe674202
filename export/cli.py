"""``llasm export``: the exporter's command, registered into the ``llasm`` app by its entry point.

The runtime never imports the exporter: ``pyproject.toml`` names ``register`` under the
``llasm.commands`` entry-point group, and ``llasm_cli.cli`` calls every function registered there
with its Typer app (as simonw/llm's ``register_commands`` hook does). The training stack this
command needs is imported only when it runs, so ``llasm --help`` lists it on a runtime-only install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llasm_cli.errors import LlasmError


def export(
    checkpoint: Path = typer.Argument(
        ..., help="llasm checkpoint directory (llasm.json, llm/, whisper/, adaptor), or a Hugging Face Ultravox checkpoint."
    ),
    out: Path = typer.Argument(..., help="Bundle directory to create."),
    types: list[str] = typer.Option(
        ["f16"], "--type", help="LLM precision(s): f32, f16, q8_0, q5_k_m, q4_k_m (repeat for several)."
    ),
    tower_types: Optional[list[str]] = typer.Option(
        None, "--tower-type", help="Tower precision(s): f32, f16, q8_0 (default: follows --type)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Model name stored in the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    llm: Optional[Path] = typer.Option(
        None, "--llm", help="Ultravox: the LLM, a GGUF file or a Llama folder (default: the config's text_model_id, "
        "from the Hugging Face cache)."
    ),
    whisper: Optional[Path] = typer.Option(
        None, "--whisper", help="Original LLaSM: its Whisper folder (default: openai/whisper-large-v2 from the Hugging "
        "Face cache, as `llasm pull whisper-large-v2` puts it)."
    ),
) -> None:
    """Convert a training checkpoint into a runnable bundle (GGUF LLM + audio tower + manifest).

    A Hugging Face Ultravox checkpoint becomes an LLM GGUF + audio mmproj GGUF folder (as llama.cpp
    publishes them), which runs with `llasm ask -m OUT`. The original LLaSM release (LinkSoul/LLaSM-Cllama2,
    model_type llaaa) becomes a bundle with its Whisper encoder-decoder tower and its own prompt.

    Examples:

      llasm export runs/stage2/final my-bundle --type f16 --type f32

      llasm export ultravox-checkpoint my-ultravox --llm Llama-3.2-1B-Instruct-Q4_K_M.gguf

      llasm export "$(llasm pull llasm-cllama2)" cllama2 --type q4_k_m
    """
    try:
        from llasm_export.bundle import export_bundle
        from llasm_export.llasm_v1 import export_llasm_v1, is_llasm_v1
        from llasm_export.ultravox import export_ultravox, is_ultravox
    except ImportError as exc:
        raise LlasmError(f"exporting needs the training extras ({exc.name} is missing): pip install 'llasm[train]'") from None
    from llasm_cli.terminal.ui import err_console

    if is_llasm_v1(checkpoint):
        with err_console.status("exporting") as status:
            manifest = export_llasm_v1(checkpoint, out, whisper, tuple(types), (tower_types or ["f16"])[0], name=name,
                                       overwrite=force, progress=status.update)
        err_console.print(f"wrote {out}: " + ", ".join([*manifest.llm_files.values(), manifest.torch_tower or ""]))
        return
    if is_ultravox(checkpoint):
        with err_console.status("exporting") as status:
            written = export_ultravox(checkpoint, out, llm, tuple(types), (tower_types or ["f16"])[0], name=name,
                                      overwrite=force, progress=status.update)
        err_console.print(f"wrote {out}: " + ", ".join(f.name for f in written))
        return

    with err_console.status("exporting") as status:
        manifest = export_bundle(
            checkpoint, out, tuple(types), name=name, overwrite=force, progress=status.update,
            tower_types=tuple(tower_types) if tower_types else None,
        )
    files = [*manifest.llm_files.values(), *manifest.tower_files.values(), manifest.torch_tower or ""]
    err_console.print(f"wrote {out}: " + ", ".join(f for f in files if f))


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``llasm`` command."""
    app.command()(export)
