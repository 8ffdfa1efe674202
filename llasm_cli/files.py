"""Writing files and folders so that a crash never leaves half of one where a reader would find it.

Every output file is written under a temporary name beside its target (same folder, so the same
file system), flushed to disk, and renamed over the target with ``os.replace`` only once it is
complete; on any failure the temporary goes and the target is untouched. Use:

- ``atomic_write_bytes(path, data)`` / ``atomic_write_text(path, text)`` for data in memory;
- ``atomic_file(path, "wb")`` for a file object written piece by piece;
- ``atomic_path(path)`` for writers that insist on a path of their own (safetensors, soundfile,
  llama.cpp's quantizer): they write the path it yields;
- ``write_gguf(writer, path)`` for a ``gguf.GGUFWriter`` holding its keys and tensors;
- ``atomic_folder(path)`` for a folder built as a whole.

Temporary names start with a dot and hold ``.tmp-`` (``.NAME.tmp-XXXXXXXX.EXT``: the extension is
kept, since some writers pick the format from it); ``stale_temp_files`` finds ones a killed
process left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_MARK = ".tmp-"


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.stem}{TEMP_MARK}{secrets.token_hex(4)}{target.suffix}")


def stale_temp_files(folder: str | Path) -> list[Path]:
    """Temporaries of this module's writers that a killed process left in ``folder``."""
    return sorted(Path(folder).glob(f".*{TEMP_MARK}*"))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path`` for a writer to fill; it becomes ``path`` on success.

    The file is created with the permissions a plain ``open(path, "w")`` would give (those of an
    existing target are kept), fsynced, and renamed over ``path``. On failure (an exception,
    Ctrl-C) it is removed and ``path`` keeps whatever it held before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 32 random bits
        raise FileExistsError(f"cannot create a temporary file beside {path}")
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            pass
        else:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the writer may have replaced or reopened it: sync what is there now
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_gguf(writer, path: str | Path) -> Path:
    """Write a ``gguf.GGUFWriter`` made without a path (``GGUFWriter(None, arch)``), its keys and tensors
    added, to ``path`` in the writer's fixed order (header, KV, tensors, close); llama.cpp and mtmd never
    see a half-written file. Returns ``path``."""
    with atomic_path(path) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kw) -> Iterator[IO]:
    """``open(path, mode)`` that only replaces ``path`` once the ``with`` block ends without error."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_file writes whole files (mode 'w...'), not {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kw) as f:
            yield f
            f.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, as ``Path.write_text`` would; returns ``path``."""
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def _publish(folder: Path) -> None:
    """Readable by everyone, like any installed model: mkdtemp makes the folder 0700, and
    safetensors writes its files 0600."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))


@contextmanager
def atomic_folder(out: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it goes.

    An existing ``out`` is moved aside first and deleted only once the new folder is in place; if
    that rename fails, the old folder is put back. With ``replace=False`` (a cache that several
    processes may fill at once) an ``out`` that exists by the end wins and the new folder goes.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TEMP_MARK}", dir=out.parent))
    old: Path | None = None
    try:
        yield tmp
        _publish(tmp)
        if not replace and out.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old{TEMP_MARK}", dir=out.parent))
            out.rename(old / out.name)
        try:
            tmp.rename(out)
        except OSError:
            if replace or not out.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
            return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (out.exists() or out.is_symlink()):
            (old / out.name).rename(out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


def cache_dir() -> Path:
    """$LLASM_CACHE_DIR, else $XDG_CACHE_HOME/llasm, else ~/.cache/llasm."""
    if os.environ.get("LLASM_CACHE_DIR"):
        return Path(os.environ["LLASM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llasm"


def read_json(path: Path) -> dict:
    """A small JSON cache file as a dict; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json_best_effort(path: Path, data: dict) -> None:
    """Best effort: an unwritable cache only means probing again next time."""
    try:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError:
        pass
