"""What ``llasm info`` shows: a model's files, each checked as it would be loaded (GGUF headers and shapes, the ONNX
tower's widths, the ears' weights)."""

from __future__ import annotations

from pathlib import Path


def describe(model: str | Path) -> list[str]:
    """Rich-markup lines: the model's name and kind, then one line per file, each checked ("ok") or an error."""
    from rich.markup import escape

    from llasm_cli.formats.gguf_check import validate_audio_mmproj, validate_llm, validate_tower
    from llasm_cli.formats.published import PublishedPair, open_model

    bundle = open_model(model)
    check_tower = validate_audio_mmproj if isinstance(bundle, PublishedPair) else validate_tower
    m = bundle.manifest
    kind = f"published {bundle.family.name} pair" if isinstance(bundle, PublishedPair) else f"adaptor {m.adaptor}"
    hears = "hears Whisper's transcript as its own input rows" if m.adaptor == "transcript" else \
        f"{m.tokens_per_window} embeddings / 30 s"
    lines = [f"[bold]{escape(m.name)}[/]  {kind}, LLM width {m.llm_dim}, {hears}"]
    for variant in bundle.variants():  # carried, or named in an installed package or elsewhere
        path = bundle.llm_path(variant)
        validate_llm(path)
        where = "" if variant in m.llm_files else f"  ({escape(str(path))})"
        lines.append(f"  llm   {escape(variant):5} {escape(path.name):24} {path.stat().st_size / 1e6:9.1f} MB  ok{where}")
    for variant in m.tower_files:
        path = bundle.tower_path(variant)
        check_tower(path, m.llm_dim)
        lines.append(f"  tower {variant:5} {path.name:24} {path.stat().st_size / 1e6:9.1f} MB  ok")
    if m.onnx_tower:
        from llasm_cli.towers.onnx import OnnxTower

        files = bundle.onnx_tower_files()
        path, size = files[0], sum(p.stat().st_size for p in files)
        OnnxTower(bundle, n_threads=1).close()  # loads it and checks its input and output widths
        lines.append(f"  tower onnx  {path.name:24} {size / 1e6:9.1f} MB  ok")
    if m.torch_tower:
        lines.append(f"  tower torch {bundle.torch_tower_path().name}/")
    if m.adaptor == "transcript":
        from llasm_cli.audio.ears import WhisperEars
        from llasm_cli.towers.transcript import ears_folder

        folder = ears_folder(bundle)
        WhisperEars(folder, n_threads=1)  # loads it: CTranslate2 reads every weight
        size = (folder / "model.bin").stat().st_size
        lines.append(f"  ears  {escape(m.ears):29} {size / 1e6:9.1f} MB  ok  ({escape(str(folder))})")
    return lines
