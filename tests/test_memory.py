"""A one-shot question's LLM context is sized to the question: llama.cpp allocates (and clears) the
KV cache for every position of the context at once, so ``llasm ask`` asks for the question's prompt
plus room for its answer, not a chat's 4096 positions (bench/latency.py measures the peak RSS)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from llasm_cli import cli
from llasm_cli.assistant import ANSWER_RESERVE, DEFAULT_CTX, Assistant, question_context
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE, chunk_spans
from llasm_cli.conversation import ask
from llasm_cli.llm.engine import Sampling
from tests.helpers import chunked_bundle, speech_of_length

LLAMA_CTX_STEP = 256  # llama.cpp rounds the context it makes up to a multiple of this


def expected_audio_rows(bundle, n_samples: int) -> int:
    """Embeddings a clip becomes, from the tower's contract (DESIGN.md): ceil(n / 320k) per 30 s
    window when padded, the kept part of every chunk when chunked."""
    m = bundle.manifest
    if "chunked" in m.encoder_input:
        return sum(s.keep for s in chunk_spans(n_samples, m.chunk_seconds, m.context_seconds, m.stack_factor))
    window = 30 * SAMPLE_RATE
    return sum(math.ceil(min(window, n_samples - w) / (320 * m.stack_factor)) for w in range(0, n_samples, window))


@pytest.fixture(scope="module")
def bundles(swiglu, tmp_path_factory):
    """The tiny model padded (mmproj tower), and chunked with learned boundary rows (torch tower)."""
    chunked = chunked_bundle(swiglu[1], tmp_path_factory.mktemp("mem") / "chunked", "embeddings")
    return {"padded": (swiglu[1], "ggml"), "chunked": (chunked, "torch")}


@pytest.mark.parametrize("seconds", [2.0, 11.0])
@pytest.mark.parametrize("kind", ["padded", "chunked"])
def test_an_asked_question_gets_its_prompt_and_its_answer_and_no_more(bundles, question_audio, kind, seconds):
    bundle, backend = bundles[kind]
    audio = speech_of_length(question_audio, seconds)
    answer_tokens = 300  # more than the reserve a chat keeps: the answer's own room decides
    bot = Assistant(bundle, backend=backend, llm_variant="f32",
                    n_ctx=question_context(audio, text="Answer:", max_tokens=answer_tokens))
    try:
        conv = ask(bot, audio, text="Answer:")
        clip = conv.turns[0].message.clips[0]
        assert len(clip) == expected_audio_rows(bot.bundle, audio.size)
        prompt = sum(len(seg) for seg in bot.prompt(conv.context_messages()))  # what the cache will hold before the answer
        assert bot.prompt_positions(audio.size, "Answer:") == prompt  # counted before anything was encoded
        need = prompt + answer_tokens
        assert need <= bot.engine.n_ctx < need + LLAMA_CTX_STEP
        assert bot.engine.n_ctx < DEFAULT_CTX
        # the whole answer fits: generation is not cut by a full context
        pieces = list(conv.respond(Sampling(temperature=0.0, ignore_eos=True), answer_tokens))
        assert pieces and conv.stats.answer_tokens == answer_tokens
        assert bot.engine.n_past == need  # every answer token went into the cache
    finally:
        bot.close()


def test_a_short_answer_still_gets_the_reserve_and_a_huge_one_the_old_default(bundles, question_audio):
    bundle, backend = bundles["padded"]
    audio = speech_of_length(question_audio, 2.0)
    sizes = {}
    for max_tokens in (4, 100_000):
        bot = Assistant(bundle, backend=backend, n_ctx=question_context(audio, max_tokens=max_tokens))
        try:
            sizes[max_tokens] = (bot.prompt_positions(audio.size), bot.engine.n_ctx)
        finally:
            bot.close()
    prompt, n_ctx = sizes[4]
    assert prompt + ANSWER_RESERVE <= n_ctx < prompt + ANSWER_RESERVE + LLAMA_CTX_STEP
    assert sizes[100_000][1] == DEFAULT_CTX  # as every question was given before, and --ctx says more


def test_llasm_ask_sizes_the_context_and_ctx_still_overrides(swiglu, question_wav, monkeypatch):
    seen = []
    close = Assistant.close

    def record(self):
        seen.append((self.engine.n_ctx, self.prompt_positions(load_audio(question_wav).size)))
        close(self)

    monkeypatch.setattr(Assistant, "close", record)
    args = ["ask", str(question_wav), "-m", str(swiglu[1]), "--backend", "ggml", "--max-tokens", "3", "--json"]
    for extra in ([], ["--ctx", "1024"]):
        res = CliRunner().invoke(cli.app, args + extra)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output.strip().splitlines()[-1])["answer"] is not None
    (auto, prompt), (given, _) = seen
    assert prompt + ANSWER_RESERVE <= auto < prompt + ANSWER_RESERVE + LLAMA_CTX_STEP
    assert given == 1024


def test_text_only_question_is_sized_without_audio(bundles):
    bundle, backend = bundles["padded"]
    bot = Assistant(bundle, backend=backend, n_ctx=question_context(None, text="What is seven plus five?"))
    try:
        prompt = bot.prompt_positions(None, "What is seven plus five?")
        want = min(prompt + max(bot.bundle.manifest.max_tokens, ANSWER_RESERVE), DEFAULT_CTX)
        assert want <= bot.engine.n_ctx < want + LLAMA_CTX_STEP
        assert np.isfinite(bot.engine.eval(bot.prompt(bot.messages(None, "What is seven plus five?", None, None)))).all()
    finally:
        bot.close()


LOAD_PROBE = """
import re, sys
import llama_cpp
from llasm_cli.llm import native
from llasm_cli.llm.engine import Engine, Sampler, Sampling

def rss_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

if sys.argv[2] == "mmap":  # llama.cpp's default way, for comparison
    plain = native.model_params
    def mapped(n_gpu_layers=0):
        params = plain(n_gpu_layers)
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        return params
    native.model_params = mapped
before = rss_mib()
e = Engine(sys.argv[1], n_ctx=256, n_threads=2)
grown = rss_mib() - before
e.eval([[e.bos] + e.tokenize("The lighthouse keeper")])
print(grown, *e.generate(e.logits(), Sampler(Sampling(temperature=0, ignore_eos=True)), 8))
"""


def test_weights_repacked_for_this_cpu_are_held_once(tmp_path):
    """ggml copies the weights it repacks for this CPU's kernels (Q4_K on AVX2 CPUs); loaded through
    a memory map, the file pages they were read from stayed resident too: ~1.7x the file."""
    import subprocess
    import sys

    from bench.assets import random_llama_gguf

    shape = dict(vocab_size=2048, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    gguf = random_llama_gguf(tmp_path, shape, "rss-probe")
    file_mib = gguf.stat().st_size / 2**20
    runs = {}
    for how in ("llasm", "mmap"):
        out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(gguf), how], capture_output=True, text=True,
                             check=True).stdout.split()
        runs[how] = (float(out[0]), [int(t) for t in out[1:]])
    (grown, tokens), (_, mapped_tokens) = runs["llasm"], runs["mmap"]
    assert file_mib > 20
    assert grown < 1.1 * file_mib + 12, f"loading a {file_mib:.0f} MiB GGUF grew the process by {grown:.0f} MiB"
    assert len(tokens) == 8 and tokens == mapped_tokens  # the same weights either way
