"""Bad input: one clear error line and a non-zero exit, never a traceback or a native abort."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.formats.bundle import MANIFEST_FILE
from tests.helpers import assert_clean_error, run_llasm, speech_of_length


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def patch_u32(path: Path, key: str, value: int) -> None:
    """Rewrite one UINT32 key in a GGUF header in place (a file that disagrees with itself)."""
    data = bytearray(path.read_bytes())
    needle = struct.pack("<Q", len(key)) + key.encode()
    at = data.index(needle) + len(needle)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF value type UINT32
    struct.pack_into("<I", data, at + 4, value)
    path.write_bytes(bytes(data))


def rename_tensor(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old.encode()) == 1
    path.write_bytes(data.replace(old.encode(), new.encode()))


@pytest.fixture(scope="module")
def bundle(swiglu) -> Path:
    return swiglu[1]


def test_missing_audio(bundle, tmp_path):
    assert_clean_error(run_llasm("ask", str(tmp_path / "nope.wav"), "-m", str(bundle)), 2, "not found")


def test_corrupt_audio(bundle, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000))
    assert_clean_error(run_llasm("ask", str(bad), "-m", str(bundle)), 2, "cannot read audio")


def test_empty_audio(bundle, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    assert_clean_error(run_llasm("ask", str(empty), "-m", str(bundle)), 2, "no samples")


def test_no_model_uses_the_default_or_says_what_to_do(question_wav, monkeypatch):
    from llasm_cli.formats.built_in import default_bundle_path

    monkeypatch.delenv("LLASM_MODEL", raising=False)
    res = run_llasm("ask", str(question_wav), "--max-tokens", "8", "--stats")
    if default_bundle_path() is None:
        assert_clean_error(res, 1, "--model")
    else:
        assert res.returncode == 0 and "heard" in res.stdout and "whisper" in res.stdout, res.stderr


def test_not_a_bundle(question_wav, tmp_path):
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(tmp_path)), 3, MANIFEST_FILE)


def test_malformed_manifest(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    (b / MANIFEST_FILE).write_text("{not json")
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "cannot read")


def test_missing_llm_file(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    (b / "llm.f16.gguf").unlink()
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "llm.f16.gguf is missing")


def test_truncated_llm(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    data = (b / "llm.f16.gguf").read_bytes()
    (b / "llm.f16.gguf").write_bytes(data[: len(data) // 2])
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "llm.f16.gguf")


def test_junk_llm(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    (b / "llm.f16.gguf").write_bytes(b"GGUF" + bytes(100))
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "not a readable GGUF")


def test_llm_tensor_name_mismatch(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    rename_tensor(b / "llm.f16.gguf", "blk.1.ffn_up.weight", "blk.1.ffn_xx.weight")
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "'blk.1.ffn_up.weight' is missing")


def test_llm_shape_mismatch(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    patch_u32(b / "llm.f16.gguf", "llama.feed_forward_length", 96)
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "has shape", "expected")


def test_tower_shape_mismatch(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    patch_u32(b / "tower.f16.gguf", "clip.audio.feed_forward_length", 96)
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "ggml")
    assert_clean_error(res, 3, "tower.f16.gguf", "has shape")


def test_tower_stack_factor_that_would_abort(bundle, question_wav, tmp_path):
    """k = 8 does not divide 1500: mtmd would abort the process; we refuse first."""
    b = copy_bundle(bundle, tmp_path / "b")
    patch_u32(b / "tower.f16.gguf", "clip.audio.projector.stack_factor", 8)
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "ggml")
    assert_clean_error(res, 3, "stack factor 8")


def test_manifest_width_disagrees_with_llm(bundle, question_wav, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    manifest = json.loads((b / MANIFEST_FILE).read_text())
    manifest["llm_dim"] = 48
    (b / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert_clean_error(run_llasm("ask", str(question_wav), "-m", str(b)), 3, "48", "64")


def test_tower_width_differs_from_llm(bundle, question_wav, tmp_path, workdir):
    """A tower exported from a 48-wide model next to a 64-wide LLM."""
    from llasm_export.bundle import export_bundle
    from llasm_finetune.tiny import build_tiny

    other = export_bundle(build_tiny(tmp_path / "ck48", llm_dim=48), tmp_path / "b48", ("f16",))
    assert other.llm_dim == 48
    b = copy_bundle(bundle, tmp_path / "b")
    shutil.copy(tmp_path / "b48" / "tower.f16.gguf", b / "tower.f16.gguf")
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "ggml")
    assert_clean_error(res, 3, "48-wide", "expects 64")
    shutil.rmtree(b / "tower-torch")
    shutil.copytree(tmp_path / "b48" / "tower-torch", b / "tower-torch")
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--backend", "torch")
    assert_clean_error(res, 3, "48-wide", "expects 64")


def test_unknown_backend(bundle, question_wav):
    res = run_llasm("ask", str(question_wav), "-m", str(bundle), "--backend", "cuda-magic")
    assert_clean_error(res, 4, "unknown backend")


def test_export_errors(tmp_path, swiglu):
    ckpt, bundle = swiglu
    assert_clean_error(run_llasm("export", str(tmp_path / "nope"), str(tmp_path / "out")), 5, "not found")
    assert_clean_error(run_llasm("export", str(ckpt), str(bundle)), 5, "already exists")
    assert not (tmp_path / "out").exists()


def _tone_wav(path: Path, seconds: float = 1.0, lie: bool = False) -> Path:
    """A 440 Hz tone; with ``lie`` the WAV header claims ten times more data than the file holds."""
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
    if lie:
        data = bytearray(path.read_bytes())
        at = data.index(b"data") + 4
        struct.pack_into("<I", data, at, struct.unpack_from("<I", data, at)[0] * 10)
        path.write_bytes(bytes(data))
    return path


def test_no_speech_is_not_answered(bundle, tmp_path, question_wav):
    """A tone (its header lying about its length) and a 1 ms clip: exit 8 unless --force."""
    tone = _tone_wav(tmp_path / "tone.wav", lie=True)
    assert_clean_error(run_llasm("ask", str(tone), "-m", str(bundle)), 8, "no speech detected", "--force")
    short = tmp_path / "short.wav"
    sf.write(short, np.full(16, 0.1, dtype=np.float32), 16000)
    assert_clean_error(run_llasm("ask", str(short), "-m", str(bundle)), 8, "no speech detected")
    forced = run_llasm("ask", str(tone), "-m", str(bundle), "--force", "--max-tokens", "3", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["timings"]["audio_seconds"] > 0.9


def test_ten_minute_recording_names_ctx(bundle, tmp_path, question_audio):
    """Ten minutes of speech: a clear context error that names --ctx, before any encoding; five
    minutes fit, encoded window by window (ten 30 s windows)."""
    long = tmp_path / "ten-minutes.wav"
    sf.write(long, speech_of_length(question_audio, 600.0), 16000, subtype="PCM_16")
    res = run_llasm("ask", str(long), "-m", str(bundle))
    assert_clean_error(res, 6, "needs 6002 positions", "context holds 4096", "--ctx")
    sf.write(long, speech_of_length(question_audio, 300.0), 16000, subtype="PCM_16")
    ok = run_llasm("ask", str(long), "-m", str(bundle), "--max-tokens", "2", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["timings"]["prompt_tokens"] > 3000


def test_nan_in_memory_audio_is_refused(bundle):
    """What a microphone or a request hands over is checked like a file."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.conversation import answer
    from llasm_cli.errors import AudioFileError

    bot = Assistant(bundle, backend="ggml")
    try:
        audio = np.zeros(16000, dtype=np.float32)
        audio[100] = np.nan
        with pytest.raises(AudioFileError, match="NaN"):
            answer(bot, audio)
        assert bot.engine.n_past <= 1
    finally:
        bot.close()


def test_max_audio_limit(bundle, tmp_path, question_audio):
    """--max-audio refuses longer files from the header alone (exit 2); within the limit they run."""
    wav = tmp_path / "q.wav"
    sf.write(wav, question_audio, 16000)
    assert_clean_error(run_llasm("ask", str(wav), "-m", str(bundle), "--max-audio", "1"), 2, "--max-audio")
    ok = run_llasm("ask", str(wav), "-m", str(bundle), "--max-audio", "5", "--max-tokens", "2")
    assert ok.returncode == 0, ok.stderr
    res = run_llasm("ask", str(wav), "-m", str(bundle), "--max-audio", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_window_of_one_sample_does_not_abort(bundle, question_audio):
    """30 s + 1 sample of speech: the second window holds one sample, which mtmd aborts on unpadded."""
    from llasm_cli.assistant import Assistant

    bot = Assistant(bundle, backend="ggml")
    try:
        embd = bot.tower.encode(np.concatenate([speech_of_length(question_audio, 30.0), question_audio[:1]]))
        assert embd.shape[0] == bot.tower.token_count(480000) + 1
    finally:
        bot.close()


def test_nan_weights_are_a_model_error(bundle, question_wav, tmp_path):
    """A GGUF whose tensor data holds NaN passes every header check; its scores are refused."""
    import gguf

    b = copy_bundle(bundle, tmp_path / "b")
    path = b / "llm.f16.gguf"
    reader = gguf.GGUFReader(str(path))
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    start = int(norm.data_offset)
    del reader
    data = bytearray(path.read_bytes())
    data[start : start + 4 * 8] = np.full(8, np.nan, dtype=np.float32).tobytes()
    path.write_bytes(bytes(data))
    res = run_llasm("ask", str(question_wav), "-m", str(b), "--variant", "f16")
    assert_clean_error(res, 3, "NaN or infinite scores", "corrupt")


def test_an_error_keeps_square_brackets(bundle, tmp_path):
    """The one line of an error is literal text: a file name or an install hint with [brackets] in it is not
    taken for terminal markup and cut ("pip install 'llasm[train]'" used to print as 'llasm')."""
    res = run_llasm("ask", str(tmp_path / "take[final].wav"), "-m", str(bundle))
    assert_clean_error(res, 2, "take[final].wav")
