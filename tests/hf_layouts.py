"""Tiny random models in the layouts people publish, and llama.cpp's own converter to GGUF them.

The published speech LLMs come as Hugging Face folders (Qwen2-Audio, Voxtral, Ultravox) that
llama.cpp's ``convert_hf_to_gguf.py`` turns into an LLM GGUF and an audio mmproj GGUF
(``--mmproj``). Tests build the same folders at toy size (tensor names, config keys and
architecture names as published) and run the real converter on them, so llasm's loader is tested
against llama.cpp's writer, not against its own.

The converter ships in llama-cpp-python's source distribution (``vendor/llama.cpp/``), which pip
fetches from the package index llama-cpp-python itself was installed from. It is unpacked once
into ``$LLASM_TEST_TOOLS`` (default ``~/.cache/llasm/test-tools``) and reused.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_DIST = "llama-cpp-python"
# the parts of the source distribution the converter needs
CONVERTER_PARTS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")

# Chat templates as the families publish them (shortened to what the tests use)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def converter_root() -> Path:
    """``vendor/llama.cpp`` of the installed llama-cpp-python's source distribution, unpacked once."""
    version = importlib.metadata.version(LLAMA_CPP_DIST)
    given = os.environ.get("LLASM_LLAMA_CPP_SRC")
    if given:
        return Path(given)
    tools = Path(os.environ.get("LLASM_TEST_TOOLS", Path.home() / ".cache" / "llasm" / "test-tools"))
    root = tools / f"llama-cpp-python-{version}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"{LLAMA_CPP_DIST}=={version}", "--no-deps",
             "--no-binary", ":all:", "-q", "-d", tmp],
            capture_output=True, text=True, timeout=600,
        )
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if got.returncode != 0 or not sdists:
            raise RuntimeError(f"pip could not fetch the {LLAMA_CPP_DIST} {version} source distribution: "
                               f"{got.stderr.strip()[-500:]}")
        tools.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=tools))
        with tarfile.open(sdists[0]) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name.partition("/")[2]
                if m.isfile() and any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in CONVERTER_PARTS):
                    m.name = rel
                    members.append(m)
            tar.extractall(staging, members=members, filter="data")
        final = tools / f"llama-cpp-python-{version}"
        try:
            staging.rename(final)
        except OSError:  # another test run got there first
            pass
    return root


CONVERT_DRIVER = """
import sys
root = sys.argv[1]
sys.path.insert(0, root)
import convert_hf_to_gguf as c
for job in sys.argv[2:]:
    sys.argv = ["convert_hf_to_gguf.py", *job.split("\\x1f")]
    c.main()
"""


def convert(jobs: list[list[str]]) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on each argument list, in one child process."""
    root = converter_root()
    env = {**os.environ, "PYTHONPATH": str(root / "gguf-py")}
    done = subprocess.run(
        [sys.executable, "-c", CONVERT_DRIVER, str(root), *("\x1f".join(j) for j in jobs)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-3000:]}")


# --- tiny models in the published layouts -----------------------------------------------------


def _tokenizer(folder: Path, special: list[str], template: str, bos: str = "<s>", eos: str = "</s>"):
    """A SentencePiece tokenizer (trained on a few lines) with the family's special tokens and template."""
    from llasm_finetune.tiny import train_tokenizer
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        spm = train_tokenizer(Path(tmp))
        tok = LlamaTokenizer.from_pretrained(tmp)
        tok.add_special_tokens({"additional_special_tokens": special})
        if eos != "</s>":
            tok.add_special_tokens({"eos_token": eos})
        tok.chat_template = template
        tok.save_pretrained(folder)
        (folder / "tokenizer.model").write_bytes(spm.read_bytes())
    # transformers 5 keeps added tokens in tokenizer.json only; the published folders (and the
    # converter's SentencePiece path) also list them in tokenizer_config.json
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                 "single_word": False}
        for i, t in tok.added_tokens_decoder.items() if t.content in special
    }
    config_path.write_text(json.dumps(config, indent=2))
    return tok


def _llama_text_config(vocab: int, eos_id: int, width: int = 64) -> dict:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=eos_id, tie_word_embeddings=False, initializer_range=0.2,
    ).to_dict()


def _whisper_config(n_mels: int = 128) -> dict:
    # three layers at least: the converter maps ``conv{bid}`` only for bid below the layer count
    return dict(d_model=64, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=256, num_mel_bins=n_mels,
                max_source_positions=1500)


def _widen(model, std: float = 0.2) -> None:
    """Weights wider than Hugging Face's init, so greedy answers have clear winners."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed_positions" not in name:
                p.normal_(0.0, std)


def build_qwen2_audio(out: Path, seed: int = 0) -> Path:
    """Qwen2AudioForConditionalGeneration: ``audio_tower.*``, ``multi_modal_projector.linear``,
    ``language_model.*`` (Qwen2), ChatML with ``<|audio_bos|>``/``<|AUDIO|>``/``<|audio_eos|>``."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2Config

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"], CHATML,
                     eos="<|im_end|>")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    text = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=eos,
        tie_word_embeddings=False,
    ).to_dict()
    cfg = Qwen2AudioConfig(audio_config=_whisper_config() | {"model_type": "qwen2_audio_encoder"}, text_config=text,
                           audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    model = Qwen2AudioForConditionalGeneration(cfg)
    _widen(model)
    model.save_pretrained(out)
    return out


def build_voxtral(out: Path, seed: int = 0) -> Path:
    """VoxtralForConditionalGeneration: Whisper ``audio_tower.*``, ``multi_modal_projector.linear_{1,2}``
    (4 frames stacked), Llama ``language_model.*``, ``[INST]``/``[BEGIN_AUDIO]`` tokens."""
    import torch
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, ["[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]"], MISTRAL)
    audio = _whisper_config() | {"model_type": "voxtral_encoder"}
    cfg = VoxtralConfig(audio_config=audio, text_config=_llama_text_config(len(tok), 2) | {"model_type": "llama"},
                        audio_token_id=tok.convert_tokens_to_ids("[AUDIO]"))
    model = VoxtralForConditionalGeneration(cfg)
    _widen(model)
    model.save_pretrained(out)
    return out


def build_llama(out: Path, seed: int = 0) -> Path:
    """The LLM an Ultravox checkpoint names (``text_model_id``): a LlamaForCausalLM folder, Llama 3 template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], LLAMA3, eos="<|eot_id|>")
    model = LlamaForCausalLM(LlamaConfig(**_llama_text_config(len(tok), tok.convert_tokens_to_ids("<|eot_id|>"))))
    _widen(model)
    model.save_pretrained(out)
    return out


def build_ultravox(out: Path, llm: Path, stack_factor: int = 8, seed: int = 0, ln_post: bool = False) -> Path:
    """An Ultravox checkpoint as fixie-ai publishes it: config.json (``UltravoxModel``, ``stack_factor``,
    ``audio_config``, ``text_config``, ``text_model_id``) and safetensors holding the Whisper encoder
    as ``audio_tower.*`` and ``multi_modal_projector.{ln_pre,linear_1,ln_mid,linear_2}`` (no LLM weights)."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    text = json.loads((llm / "config.json").read_text())
    wcfg = WhisperConfig(**_whisper_config(), decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64)
    encoder = WhisperEncoder(wcfg)
    d, width, hidden = wcfg.d_model, text["hidden_size"], 256
    tensors = {f"audio_tower.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    tensors |= {
        "multi_modal_projector.ln_pre.weight": 1 + 0.1 * torch.randn(d * stack_factor, generator=g),
        "multi_modal_projector.linear_1.weight": 0.2 * torch.randn(hidden, d * stack_factor, generator=g),
        "multi_modal_projector.linear_2.weight": 0.2 * torch.randn(width, hidden // 2, generator=g),
    }
    mid = "ln_post" if ln_post else "ln_mid"
    shape = width if ln_post else hidden // 2
    tensors[f"multi_modal_projector.{mid}.weight"] = 1 + 0.1 * torch.randn(shape, generator=g)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    audio_config = {k: v for k, v in wcfg.to_dict().items() if not k.startswith("decoder")}
    config = {
        "architectures": ["UltravoxModel"], "model_type": "ultravox", "stack_factor": stack_factor,
        "hidden_size": hidden, "projector_act": "swiglu", "projector_ln_mid": not ln_post, "norm_init": 0.4,
        "audio_model_id": "openai/whisper-large-v3-turbo", "text_model_id": "meta-llama/Llama-3.2-1B-Instruct",
        "audio_config": audio_config, "text_config": text, "ignore_index": -100, "audio_token_index": 128256,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_preprocessor(out)
    return out




# Qwen2.5-Omni's special tokens: ChatML, the audio span and the vision span (tokenizer_config.json)
OMNI_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "<|vision_bos|>",
                "<|IMAGE|>", "<|vision_eos|>", "<|VIDEO|>"]


def build_qwen25_omni(out: Path, seed: int = 0) -> Path:
    """Qwen2.5-Omni as Qwen publishes it: config.json ``Qwen2_5OmniModel`` (model_type ``qwen2_5_omni``) whose
    ``thinker_config`` holds the audio encoder, the vision encoder and the Qwen2 LLM with M-RoPE
    (``rope_scaling.mrope_section``), and the thinker's weights as ``thinker.{audio_tower,visual,model,lm_head}.*``.
    The talker and token2wav (speech output) are left out: llama.cpp's converter reads the thinker only."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, OMNI_SPECIAL, CHATML, eos="<|im_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_SPECIAL}
    text = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=1,
        eos_token_id=ids["<|im_end|>"], tie_word_embeddings=False,
        # head_dim 16: 8 rotary pairs split over time, height and width (Qwen2.5-Omni-3B: [16, 24, 24] of 64)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    audio = dict(d_model=64, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=256, num_mel_bins=128,
                 max_source_positions=1500, n_window=100, output_dim=64)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=text, audio_config=audio, vision_config=vision, audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
    )
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    _widen(model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        state = load_file(str(Path(tmp) / "model.safetensors"))
    save_file({f"thinker.{k}": v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    thinker = cfg.to_dict()
    config = {"architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni", "enable_audio_output": False,
              "thinker_config": thinker}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_preprocessor(out)
    return out


def write_preprocessor(out: Path) -> None:
    """The processor's image normalisation (CLIP's, as Qwen's preprocessor_config.json has it): the
    converter writes it into the mmproj's vision part, so both Qwen-style layouts need the file."""
    preprocessor = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "feature_size": 128,
                    "sampling_rate": 16000, "n_samples": 480000, "chunk_length": 30}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
