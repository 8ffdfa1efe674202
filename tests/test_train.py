"""The training recipe on tiny data: losses fall, frozen weights stay, resume and DDP agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llasm_finetune.train import TrainConfig, train
from safetensors.torch import load_file

from tests.helpers import espeak

SENTENCES = ["what is seven plus five", "hello world", "the weather is nice today", "repeat after me please"]


@pytest.fixture(scope="module")
def asr_data(workdir) -> Path:
    folder = workdir / "asr"
    folder.mkdir(exist_ok=True)
    lines = []
    for i, text in enumerate(SENTENCES):
        espeak(text, folder / f"{i}.wav", speed=170 + 5 * i)
        lines.append(json.dumps({"audio": f"{i}.wav", "text": text, "lang": "en"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


@pytest.fixture(scope="module")
def dialogues(workdir, asr_data) -> Path:
    folder = asr_data.parent
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "<audio>", "audio": "0.wav"}, {"from": "gpt", "value": "twelve"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "answer in Chinese\n<audio>", "audio": "0.wav"},
                                      {"from": "gpt", "value": "十二"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "<audio>", "audio": "1.wav"}, {"from": "gpt", "value": "hi"},
                                      {"from": "human", "value": "and this?\n<audio>", "audio": "2.wav"},
                                      {"from": "gpt", "value": "nice weather"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "what did I say?"}, {"from": "gpt", "value": "nothing"}]},
    ]
    (folder / "conv.json").write_text(json.dumps(convs, ensure_ascii=False))
    return folder / "conv.json"


@pytest.fixture(scope="module")
def base(workdir) -> Path:
    from llasm_finetune.tiny import build_tiny

    return build_tiny(workdir / "train-base", seed=5)


def cfg(**kw) -> TrainConfig:
    defaults = dict(batch_size=4, grad_accum=1, warmup_steps=2, eval_fraction=0.0, log_every=1, eval_every=1000,
                    save_every=1000, lr=3e-3, llm_lr=1e-3, device="cpu")
    c = TrainConfig(**(defaults | kw))
    c.check()
    return c


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt: Path, part: str) -> dict[str, torch.Tensor]:
    files = {"llm": "llm/model.safetensors", "whisper": "whisper/model.safetensors", "adaptor": "adaptor.safetensors"}
    return load_file(str(ckpt / files[part]))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_trains_only_the_adaptor(base, asr_data, tmp_path):
    final = train(cfg(stage=1, init=str(base), data=str(asr_data), out=str(tmp_path / "s1"), steps=12), progress=False)
    curve = losses(tmp_path / "s1")
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    assert same(weights(final, "llm"), weights(base, "llm"))
    assert same(weights(final, "whisper"), weights(base, "whisper"))
    assert not same(weights(final, "adaptor"), weights(base, "adaptor"))


def test_stage2_trains_adaptor_and_llm(base, dialogues, tmp_path):
    final = train(cfg(stage=2, init=str(base), data=str(dialogues), out=str(tmp_path / "s2"), steps=10,
                      train_llm="full"), progress=False)
    curve = losses(tmp_path / "s2")
    assert curve[-1] < curve[0], curve
    assert same(weights(final, "whisper"), weights(base, "whisper"))
    assert not same(weights(final, "llm"), weights(base, "llm"))
    assert not same(weights(final, "adaptor"), weights(base, "adaptor"))


def test_resume_equals_uninterrupted(base, dialogues, tmp_path):
    common = dict(stage=2, init=str(base), data=str(dialogues), steps=8, train_llm="full", grad_accum=2, batch_size=2)
    whole = train(cfg(out=str(tmp_path / "whole"), **common), progress=False)
    part = cfg(out=str(tmp_path / "parts"), stop_at=3, **common)
    stopped = train(part, progress=False)
    assert stopped.name == "state-0000003" and not (tmp_path / "parts" / "final").exists()
    part.stop_at = None
    resumed = train(part, resume=True, progress=False)
    for p in ("llm", "adaptor"):
        a, b = weights(whole, p), weights(resumed, p)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "whole")), torch.tensor(losses(tmp_path / "parts")))


def test_two_processes_match_one(base, dialogues, tmp_path):
    """torchrun with 2 CPU processes (gloo) follows the 1-process loss curve at the same global batch."""
    args = ["stage=2", f"init={base}", f"data={dialogues}", "steps=5", "train_llm=full", "batch_size=4",
            "eval_fraction=0.0", "log_every=1", "warmup_steps=2", "lr=0.003", "llm_lr=0.001", "device=cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "llasm_finetune.train", *args, f"out={tmp_path / 'one'}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
                          "-m", "llasm_finetune.train", *args, f"out={tmp_path / 'two'}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")),
                               rtol=1e-4, atol=1e-4)


def test_bad_records_are_reported_and_skipped(base, asr_data, tmp_path, caplog):
    """A corrupt clip and a malformed line cost one warning each (file and line), not the run."""
    import logging
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(asr_data.parent, folder)
    (folder / "1.wav").write_bytes(b"RIFF not really a wav")
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines.insert(2, '{"audio": "2.wav", "text": ')  # truncated JSON on line 3
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="llasm.data"):
        final = train(cfg(stage=1, init=str(base), data=str(folder / "train.jsonl"), out=str(tmp_path / "o"), steps=3,
                          batch_size=2), progress=False)
    assert (final / "llasm.json").is_file()
    text = caplog.text
    assert "train.jsonl:3" in text and "1.wav" in text

    with pytest.raises(Exception, match=r"train.jsonl:2: corrupt"):  # the first bad record stops it
        train(cfg(stage=1, init=str(base), data=str(folder / "train.jsonl"), out=str(tmp_path / "p"), steps=3,
                  batch_size=2, on_error="fail"), progress=False)


def test_worker_processes_give_the_same_run(base, dialogues, tmp_path):
    """Batches collated in DataLoader worker processes train exactly like inline ones."""
    common = dict(stage=2, init=str(base), data=str(dialogues), steps=4, train_llm="full", batch_size=2, grad_accum=2)
    train(cfg(out=str(tmp_path / "inline"), **common), progress=False)
    train(cfg(out=str(tmp_path / "workers"), num_workers=2, **common), progress=False)
    assert losses(tmp_path / "workers") == losses(tmp_path / "inline")


def test_bfloat16_features_are_close_and_cached_apart(base, asr_data, tmp_path):
    """bfloat16 features (the fast path) stay near float32's and never share a cache file with them."""
    import numpy as np
    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import FeatureStore

    model, _, _ = load_checkpoint(base)
    clip = str(asr_data.parent / "0.wav")
    for mode in ("padded", "unpadded"):
        f32 = FeatureStore(model.tower, mode, tmp_path)
        bf16 = FeatureStore(model.tower, mode, tmp_path, dtype="bfloat16")
        assert f32.tag != bf16.tag
        a, b = np.concatenate(f32.get(clip)).astype(np.float32), np.concatenate(bf16.get(clip)).astype(np.float32)
        assert a.shape == b.shape and a.shape[0] == f32.count(clip) * model.tower.cfg.stack_factor
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert 0 < rel < 0.1, rel  # not the same numbers, but the same features
    assert len(list(tmp_path.glob("*.npz"))) == 4
    # the store's pre-cast bfloat16 weights give exactly what autocast gives with the float32 tower
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.audio.geometry import unpadded_frames
    from llasm_cli.audio.mel import log_mel_spectrogram

    x = load_audio(clip)
    mel = torch.from_numpy(log_mel_spectrogram(x, model.tower.n_mels)[:, : unpadded_frames(x.size, model.tower.cfg.stack_factor)])[None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        direct = model.tower.features(mel)[0].float().numpy().astype(np.float16)
    fresh = FeatureStore(model.tower, "unpadded", dtype="bfloat16").get(clip)[0]
    assert np.array_equal(direct[: len(fresh)], fresh)
    assert next(model.tower.encoder.parameters()).dtype == torch.float32  # the tower itself is untouched
    with pytest.raises(ValueError, match="bfloat16"):
        FeatureStore(model.tower, "padded", dtype="float16")


def test_feature_perturbation_changes_only_training_features():
    from llasm_finetune.train import perturb

    f = torch.randn(40, 8)
    batch = {"input_ids": torch.zeros(1, 3), "feats": [(0, 1, f)]}
    assert perturb(batch, cfg(stage=2, init="x", data="x", out="x")) is batch  # off by default
    torch.manual_seed(0)
    out = perturb(batch, cfg(stage=2, init="x", data="x", out="x", feature_dropout=0.5, feature_noise=0.1))
    g = out["feats"][0][2]
    assert g.shape == f.shape and out["feats"][0][:2] == (0, 1)
    zeroed = (g == 0).float().mean().item()
    assert 0.3 < zeroed < 0.7, zeroed
    kept = g != 0
    assert torch.allclose(g[kept] * 0.5, f[kept], atol=0.1 * 5 * float(f.std()))  # scaled by 1/(1-p), noise under 5 std
    assert torch.equal(batch["feats"][0][2], f)  # the cached features themselves are untouched
    with pytest.raises(SystemExit):
        cfg(stage=2, init="x", data="x", out="x", feature_dropout=1.0)


def test_encoder_input_share_trains_a_mode_on_a_stable_subset(base, asr_data, tmp_path):
    """padded features on half the clips, unpadded on all: the same clips in every stage, and only
    their padded features are ever computed."""
    import shutil

    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import DialogueDataset, FeatureStore, asr_sample

    from llasm_cli.prompt import DEFAULT_TEMPLATE

    model, tok, _ = load_checkpoint(base)
    clips = []
    for i in range(40):
        clips.append(str(tmp_path / f"c{i}.wav"))
        shutil.copy(asr_data.parent / f"{i % 4}.wav", clips[-1])
    ids = (model.audio_start_id, model.audio_end_id)
    stores = [FeatureStore(model.tower, "padded"), FeatureStore(model.tower, "unpadded")]
    asr = [asr_sample(f"a{i}", c, "hello world", "Transcribe:") for i, c in enumerate(clips)]
    data = DialogueDataset(asr, tok, DEFAULT_TEMPLATE, ids, stores, shares=[0.5, 1.0])
    padded = {data.samples[j].audio[0] for k, j in data.items if k == 0}
    # half of 40 clips, by a hash of their paths (pytest's folder among them): 5..35 fails once in ~10^6 runs
    # (10..30 failed a CI run: 10)
    assert 5 < len(padded) < 35 and len(data) == 40 + len(padded)
    assert {j for k, j in data.items if k == 1} == set(range(40))
    answers = [asr_sample(f"b{i}", c, "twelve", "What is it?") for i, c in enumerate(reversed(clips))]
    again = DialogueDataset(answers, tok, DEFAULT_TEMPLATE, ids, stores, shares=[0.5, 1.0])
    assert {again.samples[j].audio[0] for k, j in again.items if k == 0} == padded  # stage 2 picks the same clips
    data.precompute()
    assert set(stores[0].mem) == padded and set(stores[1].mem) == set(clips)
    tokens = sum(t >= 0 for t in data.encoded[0].labels)
    assert data.answer_tokens(0) == tokens > 0
    with pytest.raises(SystemExit, match="encoder_input_share"):
        cfg(stage=1, init="x", data="x", out="x", encoder_input=["padded", "unpadded"], encoder_input_share=[0.5])


def test_chunked_input_trains_and_exports_a_streaming_model(base, asr_data, tmp_path):
    """encoder_input chunked: the features are the runtime's chunk-by-chunk encoding (one array per
    clip, as many embeddings as the clip has), a stage trains on them beside unpadded ones, and the
    exported bundle is a chunked model the ONNX tower streams."""
    from llasm_export.bundle import export_bundle
    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import FeatureStore

    from llasm_cli.audio.decode import load_audio
    from llasm_cli.formats.bundle import load_bundle

    model, _, _ = load_checkpoint(base)
    clip = str(asr_data.parent / "0.wav")
    store, unpadded = FeatureStore(model.tower, "chunked"), FeatureStore(model.tower, "unpadded")
    (feats,) = store.get(clip)
    with torch.no_grad():
        ref = model.tower.chunked_features(load_audio(clip)).numpy()
    assert feats.shape == ref.shape and abs(feats.astype("float32") - ref).max() <= 1e-2 * max(1.0, abs(ref).max())
    assert store.count(clip) == unpadded.count(clip) == feats.shape[0] // model.tower.cfg.stack_factor
    assert store.tag != unpadded.tag
    final = train(cfg(stage=1, init=str(base), data=str(asr_data), out=str(tmp_path / "c1"), steps=24,
                      encoder_input=["unpadded", "chunked"]), progress=False)
    curve = losses(tmp_path / "c1")
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    bundle = tmp_path / "bundle"
    export_bundle(final, bundle, ("f16",))
    m = load_bundle(bundle).manifest
    assert {"chunked", "unpadded"} <= set(m.encoder_input) and m.onnx_tower  # (+ padded: the base's own)
    from llasm_cli.towers import open_tower

    tower = open_tower(load_bundle(bundle), "onnx", None, n_threads=1)
    assert tower.chunked and tower.stream() is not None  # encodes while the user speaks
    tower.close()
    with pytest.raises(SystemExit, match="encoder_input"):
        cfg(stage=1, init="x", data="x", out="x", encoder_input=["sideways"])
