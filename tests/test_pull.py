"""`llasm pull` and `llasm models` against a real HTTP server on 127.0.0.1 that answers as the hub.

No mock of huggingface_hub: the CLI runs as a subprocess with HF_ENDPOINT pointing at the server
(tests/fake_hub.py, which lists what it answers) and HF_HOME at a temp folder.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.hub.pull import storage_folder

from .fake_hub import COMMIT, LLM, MMPROJ, ULTRAVOX, FakeHub, Repo, hf_env
from .helpers import assert_clean_error, run_llasm


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture(scope="module")
def hub():
    server = FakeHub()
    server.repos[ULTRAVOX] = Repo(
        files={LLM: random_bytes(300_000, 1), "Llama-3.2-1B-Instruct-Q8_0.gguf": random_bytes(5000, 2),
               MMPROJ: random_bytes(200_000, 3), "README.md": b"# ultravox\n"},
        lfs={LLM, "Llama-3.2-1B-Instruct-Q8_0.gguf", MMPROJ},
    )
    server.repos["test/plain"] = Repo(
        files={"config.json": b'{"a": 1}\n', "weights/model.safetensors": random_bytes(50_000, 4)},
        lfs={"weights/model.safetensors"},
    )
    server.repos["test/resume"] = Repo(files={"big.gguf": random_bytes(2_000_000, 5)}, lfs={"big.gguf"})
    server.repos["test/corrupt"] = Repo(files={"bad.gguf": random_bytes(100_000, 6)}, lfs={"bad.gguf"},
                                        corrupt={"bad.gguf"})
    server.repos["test/huge"] = Repo(files={"huge.gguf": random_bytes(1000, 7)}, lfs={"huge.gguf"},
                                     advertised_size={"huge.gguf": 1 << 60})
    server.repos["test/gated"] = Repo(files={"x.gguf": b"x"}, lfs={"x.gguf"}, gated=True)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def pull(env: dict[str, str], *args: str):
    return run_llasm("pull", *args, env=env)


def test_pull_fetches_the_registered_files_once(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    res = pull(env, "ultravox-1b")
    assert res.returncode == 0, res.stderr
    snapshot = Path(res.stdout.strip())
    assert snapshot == storage_folder(ULTRAVOX, tmp_path / "hf" / "hub") / "snapshots" / COMMIT
    files = hub.repos[ULTRAVOX].files
    assert sorted(p.name for p in snapshot.iterdir()) == sorted([LLM, MMPROJ])  # the Q4_K_M and the projector
    for name in (LLM, MMPROJ):
        assert (snapshot / name).read_bytes() == files[name]
    assert "llasm ask question.wav -m ultravox-1b" in res.stderr  # it runs (test_published runs a pulled pair)
    assert (snapshot.parent.parent / "refs" / "main").read_text() == COMMIT
    assert not list((snapshot.parent.parent / "blobs").glob("*.incomplete"))

    gets = len([r for r in hub.requests if r[0] == "GET"])
    again = pull(env, "ultravox-1b")
    assert again.returncode == 0 and again.stdout == res.stdout, again.stderr
    new_gets = [r for r in hub.requests if r[0] == "GET"][gets:]
    assert all(path.startswith("/api/") for _, path, _ in new_gets), new_gets  # metadata only, no bytes

    offline = pull({**env, "HF_HUB_OFFLINE": "1"}, "ultravox-1b")
    assert offline.returncode == 0 and offline.stdout == res.stdout, offline.stderr

    listing = run_llasm("models", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.startswith("  ") and line[2] != " "}
    assert {"ultravox-1b", "ultravox-8b", "voxtral-3b", "qwen2.5-omni-3b", "llasm-cllama2", "whisper-large-v2"} <= set(rows)
    assert rows["ultravox-1b"].split()[3] == "cached" and rows["voxtral-3b"].split()[3] == "-"
    assert rows["ultravox-1b"].rstrip().endswith("runs") and rows["qwen2.5-omni-3b"].rstrip().endswith("runs")


def test_pull_a_repo_gets_every_file_and_checks_git_blob_ids(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    res = pull(env, "test/plain", "--revision", COMMIT)
    assert res.returncode == 0, res.stderr
    snapshot = Path(res.stdout.strip())
    for name, data in hub.repos["test/plain"].files.items():
        assert (snapshot / name).read_bytes() == data


def test_an_interrupted_download_resumes(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    data = hub.repos["test/resume"].files["big.gguf"]
    hub.cut_after["big.gguf"] = 700_000
    hub.unavailable.add("big.gguf")  # the connection drops, then the server is busy: this run gives up
    first = pull(env, "test/resume")
    hub.unavailable.discard("big.gguf")
    assert_clean_error(first, 12, "503")
    blobs = storage_folder("test/resume", tmp_path / "hf" / "hub") / "blobs"
    partial = blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete"
    assert partial.stat().st_size == 700_000

    second = pull(env, "test/resume")
    assert second.returncode == 0, second.stderr
    got = (Path(second.stdout.strip()) / "big.gguf").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert hub.file_gets("big.gguf")[-1] == "bytes=700000-"
    assert not partial.exists()


def test_a_dropped_connection_resumes_in_the_same_run(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    before = len(hub.file_gets("big.gguf"))
    hub.cut_after["big.gguf"] = 1_234_567
    res = pull(env, "test/resume")
    assert res.returncode == 0, res.stderr
    assert hub.file_gets("big.gguf")[before:] == [None, "bytes=1234567-"]
    got = (Path(res.stdout.strip()) / "big.gguf").read_bytes()
    assert got == hub.repos["test/resume"].files["big.gguf"]


def test_checksum_mismatch_leaves_nothing_in_the_cache(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    assert_clean_error(pull(env, "test/corrupt"), 14, "bad.gguf", "sha256", "deleted")
    storage = storage_folder("test/corrupt", tmp_path / "hf" / "hub")
    left = [p for p in storage.rglob("*") if p.is_file() or p.is_symlink()] if storage.exists() else []
    assert not [p for p in left if "blobs" in p.parts or "snapshots" in p.parts], left


def test_not_enough_disk_space_fails_before_downloading(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url)
    assert_clean_error(pull(env, "test/huge"), 13, "disk space", "HF_HOME")
    assert hub.file_gets("huge.gguf") == []


@pytest.mark.parametrize("name", ["test/no-such-repo", "no-such-model"])
def test_missing_repo_or_name(hub, tmp_path, name):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), name), 10, name)


def test_missing_revision(hub, tmp_path):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), "test/plain", "--revision", "v9"), 10, "v9")


def test_gated_repo(hub, tmp_path):
    assert_clean_error(pull(hf_env(tmp_path / "hf", hub.url), "test/gated"), 11, "accept its license", "hf auth login")


def test_no_network(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_clean_error(pull(hf_env(tmp_path / "hf", closed), "ultravox-1b"), 12, "cannot reach", "HF_HUB_OFFLINE")


def test_offline_and_not_cached(hub, tmp_path):
    env = hf_env(tmp_path / "hf", hub.url, HF_HUB_OFFLINE="1")
    n = len(hub.requests)
    assert_clean_error(pull(env, "ultravox-1b"), 12, "offline", "not in the cache")
    assert len(hub.requests) == n


def test_choose_takes_the_first_pattern_that_matches_in_each_choice():
    from llasm_cli.hub.pull import choose

    names = ["m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf", "README.md"]
    assert choose(names, (("*Q4_K_M.gguf", "*Q8_0.gguf"), ("mmproj-*Q8_0.gguf", "mmproj-*f16.gguf"))) == [
        "m-Q4_K_M.gguf", "mmproj-m-Q8_0.gguf"]
    assert choose(names, (("*Q5_K_M.gguf",),)) is None  # a part the repository lacks
    assert choose(names, None) == sorted(names)
