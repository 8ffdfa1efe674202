"""``llasm pull``: fetch a model's files from the Hugging Face hub into the standard cache.

The files land where every other Hugging Face tool looks for them (``$HF_HUB_CACHE``, by default
``$HF_HOME/hub``, ``~/.cache/huggingface/hub``), in the hub's own layout (``blobs/``,
``snapshots/COMMIT/``, ``refs/``), so ``hf cache ls``, transformers and llama.cpp's ``-hf`` see them.

How a pull goes:

1. ``model_info`` with file metadata: the commit, and each file's size and checksum (the sha256
   of an LFS file, the git blob id of a small one).
2. Files already in the snapshot are kept; the free space of the cache's disk is checked against
   what is left to fetch, before any byte is written.
3. Each missing file is streamed into ``blobs/CHECKSUM.incomplete``, resumed with an HTTP Range
   request after a dropped connection, in this run or the next one (huggingface_hub 2.x deletes
   its own partial files, so llasm keeps one of its own). Its size and checksum are verified
   before it becomes ``blobs/CHECKSUM``; a file that fails is deleted. ``hf_hub_download`` then
   links it into the snapshot as it would its own download.
4. ``refs/REVISION`` names the commit, so offline mode (``HF_HUB_OFFLINE=1``) finds it.

Every failure a user can cause is a ``PullError`` subclass (errors.py) with its own exit code (10-14).

(Over 400 lines: every step of a resumable, checked download and each way it can fail, in order.)
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llasm_cli.errors import (
    ChecksumMismatchError,
    DiskFullError,
    GatedModelError,
    ModelNotFoundError,
    NoNetworkError,
    OfflineNotCachedError,
    PullError,
)
from llasm_cli.files import atomic_write_text
from llasm_cli.hub.registry import KnownModel, by_repo, known

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHECKSUM = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # git blob id (sha1) or LFS sha256
CHUNK = 1 << 20
RETRIES = 4  # attempts in a row that bring no new byte before a download gives up
RETRY_WAIT_S = 0.5


@dataclass(frozen=True)
class Target:
    """What to pull: a repository, and the file choices of its registry entry (None: every file)."""

    repo: str
    files: tuple[tuple[str, ...], ...] | None
    model: KnownModel | None


def resolve(name_or_repo: str) -> Target:
    """A registered name (``ultravox-1b``) or a repository (``owner/name``)."""
    model = known(name_or_repo)
    if model is not None:
        return Target(model.repo, model.files, model)
    if REPO_ID.match(name_or_repo):
        model = by_repo(name_or_repo)
        return Target(name_or_repo, model.files if model else None, model)
    raise ModelNotFoundError(
        f"no model called {name_or_repo!r}: `llasm models` lists the names, or give a Hugging Face repository as owner/name"
    )


def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else $HF_HUB_CACHE, else $HF_HOME/hub."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def storage_folder(repo: str, cache_dir: str | Path | None = None) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model")


def choose(names: list[str], choices: tuple[tuple[str, ...], ...] | None) -> list[str] | None:
    """The names to fetch: for each choice, the matches of its first pattern that matches any name.

    None when a choice matches nothing (the repository lacks a part the registry expects).
    """
    from huggingface_hub.utils import filter_repo_objects

    if choices is None:
        return sorted(names) or None
    picked: list[str] = []
    for patterns in choices:
        for pattern in patterns:
            hits = list(filter_repo_objects(names, allow_patterns=[pattern]))
            if hits:
                picked += [h for h in sorted(hits) if h not in picked]
                break
        else:
            return None
    return picked


def cached_snapshot(target: Target, revision: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The snapshot folder of ``target`` at ``revision`` if every file it needs is in the cache."""
    from huggingface_hub import constants

    storage = storage_folder(target.repo, cache_dir)
    revision = revision or constants.DEFAULT_REVISION
    ref = storage / "refs" / revision
    try:
        commit = ref.read_text().strip() if ref.is_file() else revision
    except OSError:
        return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    return snapshot if choose(names, target.files) else None


def pull(
    name_or_repo: str,
    revision: str | None = None,
    progress: bool | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Fetch a model's files into the hub cache; returns its snapshot folder.

    ``progress``: a progress bar per file on stderr (None: when stderr is a terminal).
    ``endpoint`` and ``cache_dir`` default to huggingface_hub's (HF_ENDPOINT, HF_HUB_CACHE).
    """
    from huggingface_hub import constants

    target = resolve(name_or_repo)
    cache = hub_cache(cache_dir)
    if constants.is_offline_mode():
        found = cached_snapshot(target, revision, cache)
        if found is None:
            raise OfflineNotCachedError(
                f"offline (HF_HUB_OFFLINE=1) and {target.repo} is not in the cache {cache}: "
                "pull it once with a network connection, or unset HF_HUB_OFFLINE"
            )
        return found
    if progress is None:
        progress = sys.stderr.isatty()
    hub = endpoint or constants.ENDPOINT
    try:
        return _pull_online(target, revision or constants.DEFAULT_REVISION, cache, hub, token, progress)
    except PullError:
        raise
    except Exception as exc:
        mapped = _user_error(exc, target, revision, hub, cache)
        if mapped is None:
            raise
        raise mapped from None


@dataclass(frozen=True)
class _File:
    name: str
    size: int
    checksum: str  # sha256 for LFS files, git blob id (sha1) for the others
    lfs: bool


def _pull_online(target: Target, revision: str, cache: Path, endpoint: str, token, progress: bool) -> Path:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token, library_name="llasm").model_info(
        target.repo, revision=revision, files_metadata=True
    )
    commit = info.sha or ""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise NoNetworkError(f"the hub at {endpoint} answered without a commit for {target.repo}: is HF_ENDPOINT a hub?")
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = choose(list(siblings), target.files)
    if names is None:
        wanted = " and ".join("|".join(c) for c in target.files or ())
        raise ModelNotFoundError(
            f"{target.repo} at {revision} has no file matching {wanted}: the registry entry is out of date "
            f"(please report it); `llasm pull {target.repo}` fetches every file"
        )
    files = [_describe(siblings[n]) for n in names]
    storage = storage_folder(target.repo, cache)
    snapshot = storage / "snapshots" / commit
    todo = [f for f in files if not (snapshot / f.name).exists()]
    _check_space(storage, todo, target.repo)
    for f in todo:
        _fetch(target.repo, f, commit, storage, cache, endpoint, token, progress)
    if revision != commit:
        ref = storage / "refs" / revision
        if not ref.is_file() or ref.read_text() != commit:
            atomic_write_text(ref, commit)
    return snapshot


def _describe(sibling) -> _File:
    if sibling.lfs is not None:
        size, checksum, lfs = sibling.lfs.size, sibling.lfs.sha256, True
    else:
        size, checksum, lfs = sibling.size, sibling.blob_id, False
    if size is None or not isinstance(checksum, str) or not CHECKSUM.match(checksum):
        raise ChecksumMismatchError(
            f"the hub gave no usable size and checksum for {sibling.rfilename}: cannot verify it, so it is not fetched"
        )
    return _File(sibling.rfilename, int(size), checksum, lfs)


def _partial(storage: Path, f: _File) -> Path:
    return storage / "blobs" / f"{f.checksum}.incomplete"


def _check_space(storage: Path, todo: list[_File], repo: str) -> None:
    """Fail before downloading when the cache's disk cannot hold what is left to fetch."""
    need = 0
    for f in todo:
        if (storage / "blobs" / f.checksum).exists():
            continue
        part = _partial(storage, f)
        need += f.size - (part.stat().st_size if part.exists() else 0)
    if need <= 0:
        return
    where = storage
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise DiskFullError(
            f"not enough disk space: {repo} needs {_gb(need)} more and the cache's disk has {_gb(free)} free "
            f"({storage.parent}); free some space, or point HF_HOME (or HF_HUB_CACHE) at a bigger disk"
        )


def _fetch(repo: str, f: _File, commit: str, storage: Path, cache: Path, endpoint: str, token, progress: bool) -> None:
    """Download, verify and link one file into the snapshot."""
    from huggingface_hub import hf_hub_download

    blob = storage / "blobs" / f.checksum
    if not blob.exists():
        _download(repo, f, commit, storage, endpoint, token, progress)
    path = Path(hf_hub_download(repo, f.name, revision=commit, cache_dir=cache, endpoint=endpoint, token=token))
    if path.resolve() != blob.resolve():  # the hub named the blob differently: huggingface_hub fetched it itself
        _verify(path, f, repo)


def _download(repo: str, f: _File, commit: str, storage: Path, endpoint: str, token, progress: bool) -> None:
    """Stream ``f`` into its partial file (resuming one left by an earlier run), verify it, publish the blob."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.file_download import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
    from huggingface_hub.utils import tqdm as hf_tqdm

    part = _partial(storage, f)
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and part.stat().st_size > f.size:
        part.unlink()
    url = hf_hub_url(repo, f.name, revision=commit, endpoint=endpoint)
    headers = build_hf_headers(token=token, library_name="llasm")
    headers["Accept-Encoding"] = "identity"
    hasher = _hasher(f)
    done = _hash_file(part, hasher) if part.exists() else 0
    bar = hf_tqdm(total=f.size, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=f.name,
                  disable=not progress, leave=False)
    fails = 0
    try:
        with open(part, "ab") as out:
            while done < f.size:
                before = done
                try:
                    ranged = {**headers, "Range": f"bytes={done}-"} if done else headers
                    with get_session().stream("GET", url, headers=ranged, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                        hf_raise_for_status(r)
                        if done and r.status_code != 206:  # the server ignored the Range: start again
                            out.truncate(0)
                            hasher, done = _hasher(f), 0
                            bar.reset(total=f.size)
                        for chunk in r.iter_bytes():  # as they arrive: a cut loses nothing
                            out.write(chunk)
                            hasher.update(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
                            if done > f.size:
                                break
                    if done < f.size:
                        raise httpx2.RemoteProtocolError("the server closed the connection early")
                except httpx2.TransportError as exc:
                    fails = 1 if done > before else fails + 1
                    if fails >= RETRIES:
                        out.flush()
                        raise NoNetworkError(
                            f"the download of {f.name} stopped at {_gb(done)} of {_gb(f.size)} ({_reason(exc)}): "
                            f"run `llasm pull` again to resume it"
                        ) from None
                    time.sleep(RETRY_WAIT_S)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"the disk filled up while fetching {f.name} ({_gb(done)} of {_gb(f.size)} kept in {part.parent}): "
                "free some space and run `llasm pull` again to resume, or point HF_HOME at a bigger disk"
            ) from None
        raise
    finally:
        bar.close()
    got = hasher.hexdigest()
    if done != f.size or got != f.checksum:
        part.unlink(missing_ok=True)
        what = f"{done} bytes, the hub says {f.size}" if done != f.size else f"{_kind(f)} {got}, the hub says {f.checksum}"
        raise ChecksumMismatchError(
            f"{f.name} from {repo} arrived corrupt ({what}): it was deleted; run `llasm pull` again "
            "(if it happens again, a proxy or mirror is changing the bytes)"
        )
    part.replace(storage / "blobs" / f.checksum)


def _verify(path: Path, f: _File, repo: str) -> None:
    """Check a file huggingface_hub downloaded itself; a bad one is removed from the cache."""
    hasher = _hasher(f)
    size = _hash_file(path, hasher)
    if size != f.size or hasher.hexdigest() != f.checksum:
        target = path.resolve()
        path.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{f.name} from {repo} arrived corrupt ({_kind(f)} {hasher.hexdigest()}, the hub says {f.checksum}): "
            "it was deleted; run `llasm pull` again"
        )


def _hasher(f: _File):
    """sha256 of the bytes for LFS files; git's blob id (sha1 of a header and the bytes) for the others."""
    if f.lfs:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % f.size)
    return h


def _hash_file(path: Path, hasher) -> int:
    n = 0
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
            n += len(chunk)
    return n


def _kind(f: _File) -> str:
    return "sha256" if f.lfs else "git blob id"


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _user_error(exc: Exception, target: Target, revision: str | None, endpoint: str, cache: Path) -> PullError | None:
    """The PullError for a failure huggingface_hub or the network reported; None for a bug."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = target.repo
    if isinstance(exc, GatedRepoError):
        return GatedModelError(
            f"{repo} is gated: accept its license on {endpoint}/{repo} and log in with `hf auth login` "
            "(or set HF_TOKEN), then pull again"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"{repo} has no revision {revision!r} (a branch, tag or commit on the hub)")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"no repository {repo} on the hub ({endpoint}): check the name; a private one needs `hf auth login`"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return ModelNotFoundError(f"a file of {repo} listed by the hub is missing there: try again later")
    if isinstance(exc, (httpx2.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled, FileMetadataError)):
        return NoNetworkError(
            f"cannot reach the Hugging Face hub at {endpoint} ({_reason(exc)}): check the connection "
            "(HF_ENDPOINT, proxy), or set HF_HUB_OFFLINE=1 to use what is cached"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return ModelNotFoundError(
                f"the hub refused access to {repo} (HTTP {status}): log in with `hf auth login` or check HF_TOKEN"
            )
        return NoNetworkError(f"the hub at {endpoint} answered HTTP {status} for {repo}: try again later")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFullError(f"the disk of the cache {cache} is full: free some space or point HF_HOME at a bigger disk")
    return None
