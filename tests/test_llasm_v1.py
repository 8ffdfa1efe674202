"""The original LLaSM release converted to a bundle answers as the original does, token for token.

A tiny LLaSM is built at test time in the published layout (config.json with model_type "llaaa",
three ``pytorch_model-0000N-of-00003.bin`` shards of plain tensors saved by torch.save with the
projector in shard 3, the index, a LLaMA SentencePiece tokenizer whose fast tokenizer behaves as
transformers 4.31's did, the audio tokens at ids vocab..vocab+2) beside a tiny Whisper saved as
``openai/whisper-large-v2`` would be, found in a Hugging Face cache. The reference runs the
original layout the LLaSM way (``infer.py`` / ``llasm.py``): WhisperModel on the feature
extractor's mel with 64 x ``<|startoftranscript|>`` fed to the decoder, mm_projector, the output
spliced over the 64 ``<au_patch>`` embeddings of ``tokenize_Cllama2``'s prompt, greedy decoding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llasm_cli.assistant import Assistant
from llasm_cli.audio.decode import load_audio
from llasm_cli.cli import app
from llasm_cli.errors import CheckpointError
from llasm_cli.formats.bundle import load_bundle
from llasm_cli.formats.gguf_check import read_gguf
from llasm_cli.model import DEFAULT_SYSTEM_PROMPT

N_GREEDY = 12
AUDIO_TOKENS = ("<au_patch>", "<au_start>", "<au_end>")
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"  # infer_tokenize.py
SOT = 50258  # whisper-large-v2's decoder_start_token_id (<|startoftranscript|>)
WHISPER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tokenizer(folder: Path) -> int:
    """tokenizer.model + a tokenizer.json as transformers 4.31's LlamaTokenizerFast saved it (Prepend and
    Replace normalizers, BOS post-processor: a "▁" after every special token), audio tokens added."""
    from llasm_finetune.tiny import train_tokenizer
    from tokenizers import AddedToken, normalizers, processors
    from transformers import LlamaTokenizer

    train_tokenizer(folder)
    backend = LlamaTokenizer.from_pretrained(str(folder)).backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    n_sp = backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in AUDIO_TOKENS])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048}))
    (folder / "added_tokens.json").write_text(json.dumps({t: n_sp + i for i, t in enumerate(AUDIO_TOKENS)}))
    return n_sp


def build_tiny_whisper(folder: Path, d_model: int = 64) -> Path:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(3)
    cfg = WhisperConfig(d_model=d_model, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        vocab_size=51865, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=SOT)
    WhisperForConditionalGeneration(cfg).save_pretrained(folder)
    (folder / "merges.txt").write_text("#version: 0.2\n")  # the registry's file choices want a .txt
    return folder


def build_tiny_llasm(folder: Path, mm_hidden: int = 64, hidden: int = 64) -> Path:
    """A tiny LLaSM-Cllama2 in its published layout (fp16 tensors, as the release)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    n_sp = _tokenizer(folder)
    torch.manual_seed(5)
    llama = dict(vocab_size=n_sp + 3, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
    llm = LlamaForCausalLM(LlamaConfig(**llama, initializer_range=0.2))
    state = {k: v.half() for k, v in llm.state_dict().items()}
    head = hidden // 4
    for i in range(2):  # transformers 4.31 kept this buffer in its shards; the converter skips it
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head, 2) / head)
    proj = torch.nn.Linear(mm_hidden, hidden)
    torch.nn.init.normal_(proj.weight, std=0.2)
    state["model.mm_projector.weight"], state["model.mm_projector.bias"] = proj.weight.half(), proj.bias.half()
    shards = [{}, {}, {}]
    for name, t in state.items():
        i = 2 if "mm_projector" in name else 0 if name.startswith(("model.embed", "model.layers.0.")) else 1
        shards[i][name] = t.detach().clone().contiguous()
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"pytorch_model-0000{i + 1}-of-00003.bin"
        torch.save(shard, folder / file)
        weight_map |= {name: file for name in shard}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = llama | {"architectures": ["LlaaaLlamaForCausalLM"], "model_type": "llaaa", "torch_dtype": "float16",
                      "mm_audio_tower": "openai/whisper-large-v2", "mm_hidden_size": mm_hidden,
                      "audio_token_len": 64, "use_mm_proj": True, "transformers_version": "4.31.0"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def cache_whisper(cache: Path, whisper: Path) -> None:
    """``whisper`` as the Hugging Face cache's snapshot of openai/whisper-large-v2."""
    import shutil

    repo = cache / "models--openai--whisper-large-v2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(WHISPER_COMMIT)
    shutil.copytree(whisper, repo / "snapshots" / WHISPER_COMMIT)


class Original:
    """The tiny release run as LinkSoul-AI/LLaSM's infer.py runs it (fp32 here)."""

    def __init__(self, src: Path, whisper: Path) -> None:
        from tokenizers import Tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM, WhisperModel

        config = json.loads((src / "config.json").read_text())
        index = json.loads((src / "pytorch_model.bin.index.json").read_text())["weight_map"]
        state = {}
        for file in sorted(set(index.values())):
            state |= torch.load(src / file, weights_only=True)
        keys = LlamaConfig().to_dict().keys()
        self.llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k in keys})).eval()
        self.llm.load_state_dict({k: v.float() for k, v in state.items()
                                  if "mm_projector" not in k and not k.endswith("inv_freq")})
        self.proj = torch.nn.Linear(config["mm_hidden_size"], config["hidden_size"])
        self.proj.load_state_dict({k.split(".")[-1]: v.float() for k, v in state.items() if "mm_projector" in k})
        self.whisper = WhisperModel.from_pretrained(whisper).eval()
        self.tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        self.patch, self.start, self.end = (self.tok.token_to_id(t) for t in AUDIO_TOKENS)
        self.eos = config["eos_token_id"]

    def prompt_ids(self, system: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
        """infer_tokenize.tokenize_Cllama2 on infer.py's one spoken question."""
        system = B_SYS + system + E_SYS
        qs = "<au_start>" + "<au_patch>" * 64 + "<au_end>"
        content = (system + qs).strip()
        return (self.tok.encode(system, add_special_tokens=False).ids
                + self.tok.encode(f"[INST] {content} [/INST] ", add_special_tokens=True).ids)

    @torch.inference_mode()
    def audio(self, samples: np.ndarray) -> torch.Tensor:
        from transformers import WhisperFeatureExtractor

        feats = WhisperFeatureExtractor(feature_size=80)(samples, sampling_rate=16000, return_tensors="pt").input_features
        queries = torch.ones((1, 64), dtype=torch.long) * self.whisper.config.decoder_start_token_id
        return self.proj(self.whisper(feats, decoder_input_ids=queries).last_hidden_state)[0]  # (64, hidden)

    @torch.inference_mode()
    def greedy(self, samples: np.ndarray, n: int) -> list[int]:
        ids = torch.tensor(self.prompt_ids())
        emb = self.llm.get_input_embeddings()(ids)
        start = int(torch.where(ids == self.start)[0][0])
        feature = self.audio(samples)
        assert int(ids[start + 65]) == self.end
        emb = torch.cat([emb[: start + 1], feature, emb[start + 65 :]])  # llasm.py's splice
        out: list[int] = []
        for _ in range(n):
            tok = int(self.llm(inputs_embeds=emb[None]).logits[0, -1].argmax())
            if tok == self.eos:
                break
            out.append(tok)
            emb = torch.cat([emb, self.llm.get_input_embeddings()(torch.tensor([tok]))])
        return out


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llasm-v1-original")
    return build_tiny_llasm(root / "LLaSM-Cllama2"), build_tiny_whisper(root / "whisper-large-v2")


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory) -> Path:
    """`llasm export` on the release, its Whisper found in the Hugging Face cache (as after `llasm pull`)."""
    import huggingface_hub.constants as hf

    src, whisper = original
    root = tmp_path_factory.mktemp("llasm-v1-bundle")
    cache_whisper(root / "hub", whisper)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "HF_HUB_CACHE", str(root / "hub"))
        res = CliRunner().invoke(app, ["export", str(src), str(root / "bundle"), "--type", "f32", "--type", "q8_0",
                                       "--tower-type", "f32"])
    assert res.exit_code == 0, (res.output, res.exception)
    return root / "bundle"


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    from tests.helpers import espeak

    wav = espeak("what is seven plus five", tmp_path_factory.mktemp("llasm-v1-audio") / "q.wav")
    return wav, load_audio(wav)


def test_bundle_keeps_llasm_settings(converted, original):
    m = load_bundle(converted).manifest
    assert (m.adaptor, m.tokens_per_window, m.stack_factor, m.tower_files) == ("llasm-v1", 64, 0, {})
    assert set(m.llm_files) == {"f32", "q8_0"} and m.torch_tower
    assert (m.system_prompt, m.temperature, m.max_tokens) == (DEFAULT_SYSTEM_PROMPT, 0.2, 1024)
    assert (m.audio_start, m.audio_end) == ("<au_start>", "<au_end>")
    info = read_gguf(converted / "llm.f32.gguf")
    assert info.fields["tokenizer.ggml.add_bos_token"] is False
    assert info.types["blk.0.attn_q.weight"] == "F32"
    reader = gguf.GGUFReader(str(converted / "llm.f32.gguf"))
    tokens, types = (reader.fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type"))
    tail = [(bytes(tokens.parts[i]).decode(), int(types.parts[j][0])) for i, j in zip(tokens.data[-3:], types.data[-3:])]
    assert tail == [(t, gguf.TokenType.CONTROL) for t in AUDIO_TOKENS]  # ids vocab..vocab+2, as in the release
    assert read_gguf(converted / "llm.q8_0.gguf").types["blk.0.ffn_up.weight"] == "Q8_0"
    tower = json.loads((converted / m.torch_tower / "llasm.json").read_text())["adaptor"]
    assert (tower["type"], tower["n_queries"], tower["decoder_token_id"]) == ("llasm-v1", 64, SOT)


def test_prompt_ids_are_llasm_s(converted, original):
    """The bundle's template + system prompt give tokenize_Cllama2's ids, patches where the audio goes."""
    ref = Original(*original)
    bot = Assistant(converted, backend="torch", llm_variant="f32")
    try:
        segs = bot.prompt(bot.messages(np.zeros((64, bot.bundle.manifest.llm_dim), np.float32), None, None, None))
    finally:
        bot.close()
    ids = [t for s in segs for t in ([ref.patch] * len(s) if isinstance(s, np.ndarray) else s)]
    assert ids == ref.prompt_ids()
    assert ids[: ids.index(1)] == ref.tok.encode(B_SYS + DEFAULT_SYSTEM_PROMPT + E_SYS, add_special_tokens=False).ids


def test_ask_answers_as_the_original(converted, original, question):
    """`llasm ask` (a real process, temperature 0) says what the original layout says in PyTorch."""
    wav, samples = question
    expected = Original(*original).greedy(samples, N_GREEDY)
    assert expected
    bot = Assistant(converted, backend="torch", llm_variant="f32")
    try:
        embd = bot.tower.encode(samples)
        assert embd.shape == (64, bot.bundle.manifest.llm_dim)
        ours = bot.greedy_tokens(bot.prompt(bot.messages(embd, None, None, None)), N_GREEDY)
        text = bot.engine.detokenize(expected).strip()
    finally:
        bot.close()
    assert ours == expected
    cmd = [sys.executable, "-m", "llasm_cli", "ask", str(wav), "-m", str(converted), "--variant", "f32",
           "--temperature", "0", "--max-tokens", str(N_GREEDY), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["answer"] == text


def test_a_shard_with_objects_is_refused_unrun(original, tmp_path):
    """A pickle that would build an object (here: touch a file) is refused before anything runs."""
    import shutil

    from llasm_export.llasm_v1 import export_llasm_v1

    src, whisper = original
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    marker = tmp_path / "ran"
    shard = bad / "pytorch_model-00002-of-00003.bin"
    state = torch.load(shard, weights_only=True)
    state["model.norm.weight"] = _Touch(marker)
    torch.save(state, shard)
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00003.bin holds objects other than tensors"):
        export_llasm_v1(bad, tmp_path / "out", whisper, ("f32",))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_missing_or_wrong_whisper_is_named(original, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf
    from llasm_export.llasm_v1 import export_llasm_v1

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="llasm pull whisper-large-v2"):
        export_llasm_v1(original[0], tmp_path / "out")
    narrow = build_tiny_whisper(tmp_path / "whisper-32", d_model=32)
    with pytest.raises(CheckpointError, match="is 32 wide, but LLaSM's projector reads mm_hidden_size 64"):
        export_llasm_v1(original[0], tmp_path / "out", narrow)
    assert not (tmp_path / "out").exists()


class _Touch:
    """Unpickling this creates the folder ``path``: what arbitrary code in a pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)
