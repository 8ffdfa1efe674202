"""Published speech LLMs run as they are: LLM GGUF + audio mmproj GGUF written by llama.cpp's own
converter from tiny Hugging Face models in each published layout (tests/hf_layouts.py).

Each family is checked against something independent of llasm's own code path: the embeddings
against the Hugging Face model's encoder and projector in PyTorch, the answer of ``llasm ask``
against a greedy decode of the family's prompt (spelled out here by hand) with those embeddings
injected into llama.cpp, the stack-8 Ultravox and Voxtral against the abort they cause in mtmd's own
graph, and the encoder-only route against mtmd's graph where that graph works. Qwen2.5-Omni (an M-RoPE
LLM) is checked against llama.cpp's own multimodal path, mtmd_helper_eval_chunks: logits and answers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.assistant import Assistant
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.audio.mel import log_mel_spectrogram
from llasm_cli.conversation import Conversation
from llasm_cli.formats.gguf_check import read_gguf
from llasm_cli.formats.published import PublishedPair, open_model
from llasm_cli.llm import engine as engine_module
from llasm_cli.llm.engine import Engine, Sampler, Sampling

from . import hf_layouts as hf
from .helpers import assert_clean_error, espeak, run_llasm, speech_of_length

GREEDY = Sampling(temperature=0.0)
FAMILIES = ("qwen2a", "voxtral", "ultravox")
MAX_TOKENS = 8


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> dict[str, Path]:
    """HF folders and GGUF pair folders of every family, converted once by convert_hf_to_gguf.py."""
    root = tmp_path_factory.mktemp("published")
    hfd = root / "hf"
    hf.build_qwen2_audio(hfd / "qwen2a")
    hf.build_voxtral(hfd / "voxtral")
    hf.build_llama(hfd / "llama")
    hf.build_ultravox(hfd / "ultravox", hfd / "llama", stack_factor=8)
    hf.build_ultravox(hfd / "ultravox4", hfd / "llama", stack_factor=4, seed=3)
    hf.build_qwen25_omni(hfd / "qwen25o")
    pairs = {f: root / "pairs" / f for f in (*FAMILIES, "ultravox4", "qwen25o")}
    for folder in pairs.values():
        folder.mkdir(parents=True)
    jobs = [
        [str(hfd / "qwen2a"), "--outtype", "f32", "--outfile", str(pairs["qwen2a"] / "Qwen2-Audio-F32.gguf")],
        [str(hfd / "qwen2a"), "--mmproj", "--outtype", "f32", "--outfile", str(pairs["qwen2a"] / "mmproj-qwen2a-f32.gguf")],
        [str(hfd / "voxtral"), "--outtype", "f32", "--outfile", str(pairs["voxtral"] / "Voxtral-F32.gguf")],
        [str(hfd / "voxtral"), "--mmproj", "--outtype", "f32", "--outfile", str(pairs["voxtral"] / "mmproj-voxtral-f32.gguf")],
        [str(hfd / "llama"), "--outtype", "f32", "--outfile", str(pairs["ultravox"] / "Llama-F32.gguf")],
        [str(hfd / "ultravox"), "--mmproj", "--outtype", "f32", "--outfile", str(pairs["ultravox"] / "mmproj-ultravox-f32.gguf")],
        [str(hfd / "ultravox"), "--mmproj", "--outtype", "f16", "--outfile", str(root / "mmproj-ultravox-f16.gguf")],
        [str(hfd / "ultravox4"), "--mmproj", "--outtype", "f32", "--outfile", str(pairs["ultravox4"] / "mmproj-ultravox4-f32.gguf")],
        [str(hfd / "qwen25o"), "--outtype", "f32", "--outfile", str(pairs["qwen25o"] / "Qwen2.5-Omni-F32.gguf")],
        [str(hfd / "qwen25o"), "--mmproj", "--outtype", "f32", "--outfile", str(pairs["qwen25o"] / "mmproj-qwen25o-f32.gguf")],
    ]
    hf.convert(jobs)
    shutil.copy(pairs["ultravox"] / "Llama-F32.gguf", pairs["ultravox4"] / "Llama-F32.gguf")
    return {"root": root, "hf": hfd, **pairs}


@pytest.fixture(scope="session")
def speech(workdir) -> Path:
    return espeak("what is the capital of france", workdir / "capital.wav")


def samples_of(wav: Path) -> np.ndarray:
    from llasm_cli.audio.decode import load_audio

    return load_audio(wav)


# --- references from the Hugging Face models ----------------------------------------------------


def hf_embeddings(family: str, hfd: Path, audio: np.ndarray) -> np.ndarray:
    """The family's audio embeddings by its Hugging Face model in PyTorch, on the same 30 s window."""
    import torch
    from safetensors.torch import load_file

    mel = torch.from_numpy(log_mel_spectrogram(audio, 128))[None]  # (1, 128, 3000): Whisper pads to 30 s
    with torch.no_grad():
        if family == "qwen2a":
            from transformers import Qwen2AudioForConditionalGeneration

            model = Qwen2AudioForConditionalGeneration.from_pretrained(hfd / "qwen2a").eval()
            frames = model.model.audio_tower(mel).last_hidden_state  # encoder, average pooling, LayerNorm
            return model.model.multi_modal_projector(frames)[0].numpy()
        if family == "voxtral":
            from transformers import VoxtralForConditionalGeneration

            model = VoxtralForConditionalGeneration.from_pretrained(hfd / "voxtral").eval()
            return model.get_audio_features(mel).pooler_output.numpy()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = json.loads((hfd / family / "config.json").read_text())
        w = load_file(str(hfd / family / "model.safetensors"))
        enc = WhisperEncoder(WhisperConfig(**config["audio_config"])).eval()
        enc.load_state_dict({k.removeprefix("audio_tower."): v for k, v in w.items() if k.startswith("audio_tower.")})
        x = enc(mel).last_hidden_state[0]
        k = config["stack_factor"]
        x = torch.nn.functional.pad(x, (0, 0, 0, -x.shape[0] % k)).reshape(-1, k * x.shape[1])  # StackAudioFrames

        def rms(v, g):
            return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * g

        h = rms(x, w["multi_modal_projector.ln_pre.weight"]) @ w["multi_modal_projector.linear_1.weight"].T
        h, gate = h.chunk(2, dim=-1)  # Ultravox's SwiGLU: silu on the second half
        h = torch.nn.functional.silu(gate) * h
        return (rms(h, w["multi_modal_projector.ln_mid.weight"]) @ w["multi_modal_projector.linear_2.weight"].T).numpy()


# Each family's prompt for one spoken question, as its chat template and mtmd's markers make it
PROMPTS = {
    "qwen2a": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|audio_bos|>",
               "<|audio_eos|><|im_end|>\n<|im_start|>assistant\n"),
    "voxtral": ("[INST][BEGIN_AUDIO]", "[/INST]"),
    "ultravox": ("<|start_header_id|>user<|end_header_id|>\n\n",
                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "qwen25o": ("<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                "perceiving auditory and visual inputs, as well as generating text and speech.<|im_end|>\n"
                "<|im_start|>user\n<|audio_bos|>", "<|audio_eos|><|im_end|>\n<|im_start|>assistant\n"),
}


def reference_answer(llm: Path, family: str, emb: np.ndarray) -> str:
    """Greedy answer of the LLM GGUF to the hand-written prompt with ``emb`` injected."""
    before, after = PROMPTS[family]
    with Engine(llm, n_ctx=2048, exact=True) as engine:
        head = ([engine.bos] if engine.add_bos else []) + engine.tokenize(before, True)
        logits = engine.eval([head, emb, engine.tokenize(after, True)])
        ids = list(engine.generate(logits, Sampler(GREEDY), MAX_TOKENS))
        return engine.detokenize(ids).strip()


def n_embeddings(family: str, n_samples: int) -> int:
    return {"qwen2a": math.ceil(n_samples / 640), "voxtral": 375, "ultravox": math.ceil(n_samples / 2560)}[family]


# --- the families --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_match_the_hugging_face_model(published, speech, family):
    audio = samples_of(speech)
    bot = Assistant(published[family], backend="ggml")
    try:
        assert isinstance(bot.bundle, PublishedPair) and bot.bundle.family.name.startswith(family[:5])
        got = bot.tower.encode(audio)
        assert bot.tower.encode_calls == 1
    finally:
        bot.close()
    ref = hf_embeddings(family, published["hf"], audio)
    n = n_embeddings(family, audio.size)
    assert got.shape == (n, 64)
    err = np.abs(got - ref[:n]).max() / np.abs(ref[:n]).max()
    assert err < 3e-3, err  # the converter keeps the conv weights in F16 even for --outtype f32


@pytest.mark.parametrize("family", FAMILIES)
def test_llasm_ask_answers_as_llama_cpp_does(published, speech, family):
    res = run_llasm("ask", str(speech), "-m", str(published[family]), "--temperature", "0", "--max-tokens",
                    str(MAX_TOKENS), "--variant", "f32", "--json")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)["answer"]
    bot = Assistant(published[family], backend="ggml", llm_variant="f32")
    try:
        emb = bot.tower.encode(samples_of(speech))
        segs = bot.prompt(bot.messages(emb, None, None, None))
        # the prompt is the family's, token for token: template, markers right around the embeddings
        before, after = PROMPTS[family]
        i = next(j for j, s in enumerate(segs) if isinstance(s, np.ndarray))
        assert i == 1 and len(segs) == 3 and segs[1] is emb
        assert segs[0] == ([bot.engine.bos] if bot.engine.add_bos else []) + bot.engine.tokenize(before, True)
        assert segs[2] == bot.engine.tokenize(after, True)
        llm = bot.bundle.llm_path("f32")
    finally:
        bot.close()
    assert answer and answer == reference_answer(llm, family, emb)


def test_stack8_ultravox_and_voxtral_abort_in_mtmd_but_run_in_llasm(published, speech):
    """The trap: mtmd counts 187 embeddings per window and its graph makes 188, and the process dies."""
    child = (
        "import ctypes, sys, numpy as np\n"
        "from llama_cpp import mtmd_cpp, llama_cpp as l\n"
        "l.llama_backend_init()\n"
        "mp = l.llama_model_default_params(); mp.use_extra_bufts = False\n"
        "model = l.llama_model_load_from_file(sys.argv[1].encode(), mp)\n"
        "p = mtmd_cpp.mtmd_context_params_default(); p.use_gpu = False; p.warmup = False\n"
        "ctx = mtmd_cpp.mtmd_init_from_file(sys.argv[2].encode(), model, p)\n"
        "x = np.zeros(32000, dtype=np.float32)\n"
        "bm = mtmd_cpp.mtmd_bitmap_init_from_audio(x.size, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))\n"
        "chunks = mtmd_cpp.mtmd_input_chunks_init()\n"
        "t = mtmd_cpp.mtmd_input_text(); m = mtmd_cpp.mtmd_default_marker()\n"
        "t.text = m; t.text_len = len(m); t.add_special = False; t.parse_special = True\n"
        "assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(t), (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bm), 1) == 0\n"
        "for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):\n"
        "    c = mtmd_cpp.mtmd_input_chunks_get(chunks, i)\n"
        "    if mtmd_cpp.mtmd_input_chunk_get_type(c) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO:\n"
        "        print('counted', mtmd_cpp.mtmd_input_chunk_get_n_tokens(c), flush=True)\n"
        "        mtmd_cpp.mtmd_encode_chunk(ctx, c)\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    for family in ("ultravox", "voxtral"):
        pair = open_model(published[family])
        died = subprocess.run([sys.executable, "-c", child, str(pair.llm_path()), str(pair.tower_path())],
                              capture_output=True, text=True, timeout=120, env=env)
        assert died.returncode < 0, (died.returncode, died.stdout, died.stderr[-2000:])  # killed by SIGABRT
        assert "counted 187" in died.stdout and "survived" not in died.stdout
        assert "expected output 187 tokens, got 188" in died.stderr
        # llasm on the same files: no abort, and the count of the family's own model
        res = run_llasm("ask", str(speech), "-m", str(published[family]), "--temperature", "0", "--max-tokens", "4",
                        "--json")
        assert res.returncode == 0, res.stderr
        n = n_embeddings(family, samples_of(speech).size)
        markers = {"ultravox": 0, "voxtral": 1}[family]
        assert json.loads(res.stdout)["timings"]["prompt_tokens"] > n + markers


def test_encoder_only_route_equals_mtmd_graph_where_that_works(published, speech, monkeypatch):
    """Ultravox with stack factor 4 runs in mtmd's own graph; the encoder-only route must give the same."""
    from llasm_cli.towers import ggml

    audio = samples_of(speech)
    bot = Assistant(published["ultravox4"], backend="ggml")
    try:
        native = bot.tower.encode(audio)
        assert bot.tower.projector is None  # mtmd ran its ultravox graph
        monkeypatch.setattr(ggml, "needs_split", lambda fields: True)
        split = ggml.GgmlTower(bot.bundle, bot.engine)
        try:
            assert split.projector is not None
            routed = split.encode(audio)
        finally:
            split.close()
    finally:
        bot.close()
    assert native.shape == routed.shape == (math.ceil(audio.size / 1280), 64)
    assert np.abs(native - routed).max() <= 1e-4 * np.abs(native).max()


def test_published_f16_projector_runs(published, speech, tmp_path):
    """The quantization ggml-org publishes Ultravox's projector in (f16): close to the f32 file's embeddings."""
    folder = tmp_path / "uv16"
    folder.mkdir()
    shutil.copy(published["ultravox"] / "Llama-F32.gguf", folder)
    shutil.copy(published["root"] / "mmproj-ultravox-f16.gguf", folder)
    audio = samples_of(speech)
    out = {}
    for name, path in (("f16", folder), ("f32", published["ultravox"])):
        bot = Assistant(path, backend="ggml")
        try:
            out[name] = bot.tower.encode(audio)
        finally:
            bot.close()
    assert out["f16"].shape == out["f32"].shape
    assert np.abs(out["f16"] - out["f32"]).max() < 2e-2 * np.abs(out["f32"]).max()


@pytest.mark.parametrize("family", ["qwen2a", "qwen25o"])  # qwen25o: KV reuse with M-RoPE positions
def test_chat_reuses_the_cache_with_a_pair(published, speech, family):
    bot = Assistant(published[family], backend="ggml", llm_variant="f32")
    try:
        conv = Conversation(bot)
        conv.add_user(samples_of(speech))
        first = "".join(conv.respond(GREEDY, max_tokens=4))
        assert first
        calls, kv_before = bot.tower.encode_calls, bot.engine.n_past
        conv.add_user(samples_of(speech), text="and again:")
        assert bot.tower.encode_calls == calls + 1  # only the new clip
        logits = conv.prefill()
        assert bot.tower.encode_calls == calls + 1
        assert bot.engine.reused == kv_before  # the first turn, its audio and its answer stayed in the cache
        assert conv.prefilled_from_scratch == 0
        with Engine(bot.bundle.llm_path("f32"), exact=True) as fresh:
            ref = fresh.eval(conv.kv_segments)
        assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()
    finally:
        bot.close()


# --- Qwen2.5-Omni: an M-RoPE LLM, a vision + audio mmproj ----------------------------------------------


def mtmd_prefill(engine: Engine, mmproj: Path, before: str, after: str, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """llama.cpp's own multimodal path in ``engine``'s context: mtmd tokenizes ``before`` + its media marker +
    ``after`` with the clip (adding the family's audio markers itself) and ``mtmd_helper_eval_chunks`` encodes the
    audio and decodes every chunk at the positions mtmd chooses. The logits of the last position, and how many
    positions mtmd used."""
    import ctypes

    from llama_cpp import llama_cpp as lc
    from llama_cpp import mtmd_cpp

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.warmup = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), engine.model, params)  # vision + audio, as published
    assert ctx and mtmd_cpp.mtmd_support_vision(ctx) and mtmd_cpp.mtmd_decode_use_mrope(ctx)
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    bitmap = mtmd_cpp.mtmd_bitmap_init_from_audio(samples.size, samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        prompt = (before + mtmd_cpp.mtmd_default_marker().decode() + after).encode()
        text = mtmd_cpp.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = prompt, len(prompt), True, True
        assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        n_past = lc.llama_pos(0)
        assert mtmd_cpp.mtmd_helper_eval_chunks(ctx, engine.ctx, chunks, 0, 0, engine.n_batch, True,
                                                ctypes.byref(n_past)) == 0
        return engine.logits(), n_past.value
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_free(ctx)


def serve_prefill(engine: Engine, segs: list, seq: int) -> np.ndarray:
    """``segs`` prefilled on sequence ``seq`` of a fresh serve context (scheduler.BatchEngine, two sequences)
    over ``engine``'s model, batch by batch; the logits of the last position."""
    from llasm_cli.llm.scheduler import BatchEngine

    serve = BatchEngine(engine.llm, n_seq=2, n_ctx_seq=1024, exact=True)
    try:
        pos, n_batch = 0, serve.n_batch
        for k, seg in enumerate(segs):
            for start in range(0, len(seg), n_batch):
                part = seg[start:start + n_batch]
                last = k == len(segs) - 1 and start + n_batch >= len(seg)
                if isinstance(part, np.ndarray):
                    serve.decode_embeddings(part, pos, seq, last)
                else:
                    serve.decode_tokens([(t, pos + i, seq, last and i == len(part) - 1) for i, t in enumerate(part)])
                pos += len(part)
        return serve.logits(len(part) - 1)
    finally:
        serve.close()


def one_axis_positions(first: int, n: int, sections: int) -> np.ndarray:
    """Wrong on purpose: ``pos`` as a model without M-RoPE takes it (one position per row; the other axes 0).
    Giving llama.cpp only n entries would let it read 3 n more past the buffer."""
    pos = np.zeros(n * sections, dtype=np.int32)
    pos[:n] = np.arange(first, first + n)
    return pos


@pytest.fixture(scope="module")
def omni_question(speech, tmp_path_factory) -> Path:
    """The spoken question tiled to fill one 30 s window: mtmd keeps every one of its 750 embeddings, and llasm
    does too (ceil(n / 640) = 750 from n = 479361 on). From 479999 samples on mtmd cuts two windows."""
    import soundfile as sf

    path = tmp_path_factory.mktemp("omni") / "question-30s.wav"
    sf.write(path, speech_of_length(samples_of(speech), 29.98), SAMPLE_RATE, subtype="FLOAT")
    return path


def test_omni_logits_equal_mtmd_own_path(published, omni_question, monkeypatch):
    """Qwen2.5-Omni's LLM (qwen2vl) rotates with M-RoPE. After the spoken prompt llasm's logits equal those of
    llama.cpp's own mtmd path (the published mmproj with its vision encoder, mtmd_helper_eval_chunks); audio rows
    given one position axis instead of M-RoPE's four are far off. llasm serve's batched context agrees too."""
    audio = samples_of(omni_question)
    bot = Assistant(published["qwen25o"], backend="ggml", llm_variant="f32")
    try:
        assert bot.bundle.family.name == "qwen2.5-omni" and bot.engine.n_pos_per_embd == 4
        emb = bot.tower.encode(audio)
        segs = bot.prompt(bot.messages(emb, None, None, None))
        before, after = PROMPTS["qwen25o"]
        assert len(segs) == 3 and segs[1] is emb and emb.shape == (750, 64)
        assert segs[0] == ([bot.engine.bos] if bot.engine.add_bos else []) + bot.engine.tokenize(before, True)
        assert segs[2] == bot.engine.tokenize(after, True)
        llm = bot.bundle.llm_path("f32")
        mmproj = bot.bundle.tower_path()
    finally:
        bot.close()
    # mtmd ran llasm's audio-only copy: every audio tensor and key of the published file, nothing of its vision part
    from llasm_cli.files import cache_dir
    from llasm_cli.towers.encoder_only import audio_only_path

    published_file, copy = read_gguf(mmproj), read_gguf(audio_only_path(mmproj, cache_dir() / "encoders"))
    assert published_file.fields["clip.has_vision_encoder"] is True and copy.fields["clip.has_vision_encoder"] is False
    audio_part = {n: s for n, s in published_file.tensors.items() if n.startswith(("a.", "mm.a."))}
    assert copy.tensors == audio_part and len(audio_part) < len(published_file.tensors)
    assert {k: v for k, v in copy.fields.items() if k != "clip.has_vision_encoder"} == {
        k: v for k, v in published_file.fields.items()
        if not k.startswith("clip.vision.") and k not in ("clip.has_vision_encoder", "general.alignment")}
    with Engine(llm, n_ctx=2048, exact=True) as engine:
        theirs, n_pos = mtmd_prefill(engine, mmproj, before.removesuffix("<|audio_bos|>"),
                                     after.removeprefix("<|audio_eos|>"), audio)
        assert n_pos == engine.n_past == sum(len(s) for s in segs)  # mtmd's audio chunk takes one position per row
        engine.reset()
        ours = engine.eval(segs)
        served = serve_prefill(engine, segs, seq=1)  # llasm serve's context feeds audio rows the same way
        engine.reset()
        monkeypatch.setattr(engine_module, "mrope_positions", one_axis_positions)
        wrong = engine.eval(segs)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max()
    assert np.abs(served - theirs).max() <= 1e-4 * scale, np.abs(served - theirs).max()
    assert np.abs(wrong - theirs).max() > 0.1 * scale, np.abs(wrong - theirs).max()


def test_omni_llasm_ask_answers_as_mtmd_does(published, omni_question):
    res = run_llasm("ask", str(omni_question), "-m", str(published["qwen25o"]), "--temperature", "0", "--max-tokens",
                    str(MAX_TOKENS), "--variant", "f32", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    before, after = PROMPTS["qwen25o"]
    pair = open_model(published["qwen25o"])
    with Engine(pair.llm_path("f32"), n_ctx=2048, exact=True) as engine:
        logits, n_pos = mtmd_prefill(engine, pair.tower_path(), before.removesuffix("<|audio_bos|>"),
                                     after.removeprefix("<|audio_eos|>"), samples_of(omni_question))
        ids = list(engine.generate(logits, Sampler(GREEDY), MAX_TOKENS))  # token batches: llama.cpp's own positions
        reference = engine.detokenize(ids).strip()
    assert out["timings"]["prompt_tokens"] == n_pos
    assert out["answer"] and out["answer"] == reference


# --- names and repositories: the cached download runs ----------------------------------------------


def test_a_pulled_name_runs(published, speech, tmp_path):
    from .fake_hub import COMMIT, LLM, MMPROJ, ULTRAVOX, FakeHub, Repo, hf_env

    server = FakeHub()
    files = {LLM: (published["ultravox"] / "Llama-F32.gguf").read_bytes(),
             MMPROJ: (published["ultravox"] / "mmproj-ultravox-f32.gguf").read_bytes()}
    server.repos[ULTRAVOX] = Repo(files=files, lfs={LLM, MMPROJ})
    server.thread.start()
    try:
        env = hf_env(tmp_path / "hf", server.url)
        pulled = run_llasm("pull", "ultravox-1b", env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert "llasm ask question.wav -m ultravox-1b" in pulled.stderr
    finally:
        server.server.shutdown()
        server.server.server_close()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    answers = []
    for spec in ("ultravox-1b", f"hf:{ULTRAVOX}", str(Path(pulled.stdout.strip()) / LLM)):
        res = run_llasm("ask", str(speech), "-m", spec, "--temperature", "0", "--max-tokens", "6", "--json", env=offline)
        assert res.returncode == 0, (spec, res.stderr)
        answers.append(json.loads(res.stdout)["answer"])
    assert answers[0] == answers[1] == answers[2]
    direct = run_llasm("ask", str(speech), "-m", str(published["ultravox"]), "--temperature", "0", "--max-tokens", "6",
                       "--json")
    assert json.loads(direct.stdout)["answer"] == answers[0]
    assert (Path(pulled.stdout.strip()).parent / COMMIT).is_dir()
    missing = run_llasm("ask", str(speech), "-m", "voxtral-3b", env=offline)
    assert_clean_error(missing, 1, "llasm pull voxtral-3b")


def test_pair_errors_are_clean(published, speech, tmp_path):
    only_llm = tmp_path / "only-llm"
    only_llm.mkdir()
    shutil.copy(published["voxtral"] / "Voxtral-F32.gguf", only_llm)
    assert_clean_error(run_llasm("ask", str(speech), "-m", str(only_llm)), 3, "no audio mmproj")
    # a projector that does not fit the LLM: refused before mtmd could abort on it
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(published["voxtral"] / "Voxtral-F32.gguf", mixed)
    shutil.copy(published["qwen2a"] / "mmproj-qwen2a-f32.gguf", mixed)
    info = read_gguf(mixed / "mmproj-qwen2a-f32.gguf")
    assert info.fields["clip.projector_type"] == "qwen2a"
    ok = run_llasm("ask", str(speech), "-m", str(mixed), "--max-tokens", "2")
    assert ok.returncode == 0, ok.stderr  # same width: a strange pair, but a valid one
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(published["voxtral"] / "Voxtral-F32.gguf", truncated)
    data = (published["voxtral"] / "mmproj-voxtral-f32.gguf").read_bytes()
    (truncated / "mmproj-voxtral-f32.gguf").write_bytes(data[: len(data) // 2])
    assert_clean_error(run_llasm("ask", str(speech), "-m", str(truncated)), 3, "truncated")


# --- a Hugging Face Ultravox checkpoint -> a pair llasm runs ----------------------------------------


def test_ultravox_checkpoint_exports_what_llama_cpp_converts(published, speech, tmp_path):
    out = tmp_path / "exported"
    res = run_llasm("export", str(published["hf"] / "ultravox"), str(out), "--llm", str(published["hf"] / "llama"),
                    "--type", "f32", "--tower-type", "f32", "--name", "uv")
    assert res.returncode == 0, res.stderr
    ours = read_gguf(out / "mmproj-uv-f32.gguf")
    theirs = read_gguf(published["ultravox"] / "mmproj-ultravox-f32.gguf")
    assert ours.tensors == theirs.tensors and ours.types == theirs.types  # every name, shape and type
    for key in ("clip.projector_type", "clip.audio.projector.stack_factor", "clip.audio.projection_dim",
                "clip.audio.embedding_length", "clip.audio.block_count", "clip.audio.num_mel_bins"):
        assert ours.fields[key] == theirs.fields[key], key
    import gguf

    a = {t.name: np.array(t.data) for t in gguf.GGUFReader(out / "mmproj-uv-f32.gguf").tensors}
    b = {t.name: np.array(t.data) for t in gguf.GGUFReader(published["ultravox"] / "mmproj-ultravox-f32.gguf").tensors}
    assert all(np.array_equal(a[n], b[n]) for n in b)
    answers = []
    for model in (out, published["ultravox"]):
        got = run_llasm("ask", str(speech), "-m", str(model), "--temperature", "0", "--max-tokens", str(MAX_TOKENS),
                        "--json")
        assert got.returncode == 0, got.stderr
        answers.append(json.loads(got.stdout)["answer"])
    assert answers[0] == answers[1]


def test_ultravox_export_refuses_what_it_cannot_map(published, tmp_path):
    from llasm_export.ultravox import export_ultravox
    from safetensors.numpy import load_file, save_file

    from llasm_cli.errors import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(published["hf"] / "ultravox", bad)
    state = load_file(str(bad / "model.safetensors"))
    state["multi_modal_projector.extra.weight"] = np.zeros((2, 2), dtype=np.float32)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="can not map tensor 'multi_modal_projector.extra.weight'"):
        export_ultravox(bad, tmp_path / "out", llm=published["hf"] / "llama")
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        export_ultravox(published["hf"] / "ultravox", tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_speech_length_per_window_counts(published):
    pair = open_model(published["ultravox"])
    assert pair.rows_per_window == 188 and pair.embeddings_per_window(30 * SAMPLE_RATE) == 188
    assert pair.embeddings_per_window(2560) == 1 and pair.embeddings_per_window(2561) == 2
    vox = open_model(published["voxtral"])
    assert vox.rows_per_window == 375 and vox.embeddings_per_window(100) == 375
    qwen = open_model(published["qwen2a"])
    assert qwen.rows_per_window == 750 and qwen.embeddings_per_window(640 * 10) == 10
    omni = open_model(published["qwen25o"])
    assert omni.family.name == "qwen2.5-omni" and omni.family.audio_start == "<|audio_bos|>"
    assert omni.rows_per_window == 750 and omni.embeddings_per_window(640 * 10 + 1) == 11
