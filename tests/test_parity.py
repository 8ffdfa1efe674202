"""llama.cpp on the exported F32 bundle must compute what the PyTorch model computes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from llasm_cli.assistant import Assistant
from tests.reference import TorchReference, rel_err

TEXT = "please answer:"
N_GREEDY = 12


def _prompt(bot: Assistant, embd: np.ndarray) -> list:
    return bot.prompt(bot.messages(embd, TEXT, "thanks", system=None))


def _swap_audio(segs: list, embd: np.ndarray) -> list:
    """The same prompt with its one audio segment replaced by ``embd``."""
    return [embd if isinstance(s, np.ndarray) else s for s in segs]


@pytest.fixture(scope="module", params=["stack-swiglu", "llasm-v1"])
def case(request, swiglu, llasm_v1):
    ckpt, bundle = {"stack-swiglu": swiglu, "llasm-v1": llasm_v1}[request.param]
    return request.param, ckpt, bundle, TorchReference(ckpt)


def _check(bot: Assistant, ref: TorchReference, audio: np.ndarray, tol: float, report: dict, key: str) -> None:
    embd = bot.tower.encode(audio)
    ref_embd = ref.audio_embeddings(audio, bot.tower.token_count)
    assert embd.shape == ref_embd.shape
    segs = _prompt(bot, embd)
    ref_segs = _swap_audio(segs, ref_embd)
    bot.engine.reset()
    cpp = bot.engine.eval(segs)
    torch_logits = ref.last_logits(ref_segs)
    err = rel_err(cpp, torch_logits)
    report[key] = {"tower_rel_err": rel_err(embd, ref_embd), "logits_rel_err": err}
    assert err <= tol, f"{key}: logits relative error {err:.2e} > {tol}"
    ours = bot.greedy_tokens(segs, N_GREEDY)
    theirs = ref.greedy(ref_segs, N_GREEDY, bot.engine.eos)
    assert len(theirs) > 0
    assert ours == theirs, f"{key}: greedy tokens differ"


def test_parity_torch_tower(case, question_audio, record_property):
    adaptor, ckpt, bundle, ref = case
    report: dict = {}
    bot = Assistant(bundle, backend="torch", llm_variant="f32")
    try:
        _check(bot, ref, question_audio, 1e-3, report, f"{adaptor}/torch")
    finally:
        bot.close()
    record_property("parity", json.dumps(report))
    print(json.dumps(report))


def test_parity_ggml_tower(swiglu, question_audio, mandarin_wav, record_property):
    from llasm_cli.audio.decode import load_audio

    ckpt, bundle = swiglu
    ref = TorchReference(ckpt)
    report: dict = {}
    bot = Assistant(bundle, backend="ggml", llm_variant="f32")
    try:
        _check(bot, ref, question_audio, 1e-2, report, "stack-swiglu/ggml/en")
        _check(bot, ref, load_audio(mandarin_wav), 1e-2, report, "stack-swiglu/ggml/cmn")
    finally:
        bot.close()
    record_property("parity", json.dumps(report))
    print(json.dumps(report))


def test_token_path_equals_embedding_path(swiglu):
    """Text tokens injected as looked-up embedding rows give the token path's logits."""
    import gguf

    _, bundle = swiglu
    bot = Assistant(bundle, llm_variant="f32")
    try:
        engine = bot.engine
        tokens = [engine.bos, *engine.tokenize("USER: what is seven plus five?\nASSISTANT:")]
        by_token = engine.eval([tokens])
        engine.reset()
        reader = gguf.GGUFReader(str(bot.bundle.llm_path("f32")))
        table = next(t for t in reader.tensors if t.name == "token_embd.weight").data
        by_embd = engine.eval([engine.token_embeddings(tokens, np.asarray(table))])
    finally:
        bot.close()
    assert rel_err(by_embd, by_token) <= 1e-6
    assert int(by_embd.argmax()) == int(by_token.argmax())


def test_ask_cli_greedy_equals_pytorch(swiglu, question_wav, question_audio):
    """`llasm ask` (a real subprocess) prints what greedy decoding in PyTorch produces."""
    ckpt, bundle = swiglu
    cmd = [sys.executable, "-m", "llasm_cli", "ask", str(question_wav), "--text", TEXT, "--after", "thanks",
           "-m", str(bundle), "--variant", "f32", "--backend", "torch", "--temperature", "0",
           "--max-tokens", str(N_GREEDY), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)["answer"]

    ref = TorchReference(ckpt)
    bot = Assistant(bundle, backend="torch", llm_variant="f32")
    try:
        segs = _prompt(bot, ref.audio_embeddings(question_audio, bot.tower.token_count))
        expected = bot.engine.detokenize(ref.greedy(segs, N_GREEDY, bot.engine.eos)).strip()
    finally:
        bot.close()
    assert expected and answer == expected
