"""Audio loading and the audio-token-count contract, through the real towers."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from llasm_cli.assistant import Assistant
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE, audio_token_count
from tests.helpers import speech_of_length

SECONDS = [1.0, 29.9, 30.0, 31.0, 65.0]


def expected_swiglu(seconds: float, k: int) -> int:
    """ceil(n / (320 k)) per 30 s window, at most 1500 / k."""
    n = int(round(seconds * SAMPLE_RATE))
    total, window = 0, 30 * SAMPLE_RATE
    while n > 0:
        total += min(1500 // k, -(-min(n, window) // (320 * k)))
        n -= window
    return total


def test_load_audio_resamples_and_downmixes(tmp_path, question_audio):
    stereo = np.stack([question_audio, question_audio * 0.5], axis=1)
    path = tmp_path / "stereo44k.flac"
    import soxr

    sf.write(path, soxr.resample(stereo, SAMPLE_RATE, 44100), 44100)
    got = load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(got.size - question_audio.size) <= 2
    ref = question_audio * 0.75
    n = min(got.size, ref.size)
    corr = np.corrcoef(got[:n], ref[:n])[0, 1]
    assert corr > 0.99


def test_ogg_file_reads(tmp_path, question_audio):
    path = tmp_path / "q.ogg"
    sf.write(path, question_audio, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    got = load_audio(path)
    assert abs(got.size - question_audio.size) < SAMPLE_RATE // 10


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_token_count_stack_swiglu(swiglu, question_audio, backend):
    _, bundle = swiglu
    bot = Assistant(bundle, backend=backend, llm_variant="f16")
    try:
        k = bot.bundle.manifest.stack_factor
        for seconds in SECONDS:
            embd = bot.tower.encode(speech_of_length(question_audio, seconds))
            assert embd.shape == (expected_swiglu(seconds, k), bot.engine.n_embd), seconds
        assert [expected_swiglu(s, k) for s in SECONDS] == [10, 299, 300, 310, 650]
    finally:
        bot.close()


def test_token_count_llasm_v1(llasm_v1, question_audio):
    _, bundle = llasm_v1
    bot = Assistant(bundle, backend="torch")
    try:
        for seconds, windows in zip(SECONDS, [1, 1, 1, 2, 3]):
            embd = bot.tower.encode(speech_of_length(question_audio, seconds))
            assert embd.shape[0] == 64 * windows, seconds
    finally:
        bot.close()


def test_audio_token_count_formula():
    assert audio_token_count(1, 5) == 1
    assert audio_token_count(1600, 5) == 1
    assert audio_token_count(1601, 5) == 2
    assert audio_token_count(480000, 5) == 300
    assert audio_token_count(480000, 4) == 375


def test_mel_product_runs_on_one_blas_thread(monkeypatch):
    """OpenBLAS's idle workers busy-wait on the cores the audio encoder runs on next, so the mel
    product runs on one BLAS thread; the process's setting is as it was afterwards."""
    from threadpoolctl import threadpool_info

    import llasm_cli.audio.mel as audio

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")
    seen = []
    real = audio._one_blas_thread

    class Watch:
        def __enter__(self):
            self.limit = real()
            self.limit.__enter__()
            seen.append(blas_threads())

        def __exit__(self, *exc):
            return self.limit.__exit__(*exc)

    monkeypatch.setattr(audio, "_one_blas_thread", Watch)
    mel = audio.log_mel_spectrogram(np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1)
    assert mel.shape == (80, 3000)
    assert seen == [[1] * len(before)]
    assert blas_threads() == before
