"""Build a tiny random llasm checkpoint: the real pipeline at toy size, for tests and smoke runs.

    python -m llasm_finetune.tiny OUT [--adaptor stack-swiglu|llasm-v1] [--seed 0]

Random Whisper + random LLaMA + a SentencePiece tokenizer trained on a few English and
Chinese lines. Nothing is downloaded. Weights are drawn wide enough (std 0.2) that greedy
decoding has clear winners, so parity tests compare real decisions, not noise.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, WhisperConfig

from llasm_cli.files import atomic_write_bytes
from llasm_cli.model import AUDIO_END, AUDIO_START, CheckpointMeta, LlasmModel
from llasm_cli.prompt import DEFAULT_TEMPLATE

from .checkpoint import save_checkpoint
from .init import fresh_tower

CORPUS = [
    "hello world, this is a test of the speech assistant.",
    "what is seven plus five? the answer is twelve.",
    "please translate this sentence to chinese.",
    "the quick brown fox jumps over the lazy dog.",
    "repeat after me: the weather is nice today.",
    "今天天气很好。",
    "七加五等于十二。",
    "请把这句话翻译成英文。",
    "你好，世界。我是一个语音助手。",
    "USER: ASSISTANT: numbers one two three four five six seven eight nine ten",
]
CHAT_TEMPLATE = DEFAULT_TEMPLATE


def train_tokenizer(folder: Path, vocab_size: int = 400, lines: list[str] | None = None) -> Path:
    """Train a byte-fallback BPE SentencePiece model (ids 0-2 = unk/bos/eos) on ``lines``
    (default: CORPUS); returns tokenizer.model's path."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((lines or CORPUS) * 10), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    return atomic_write_bytes(folder / "tokenizer.model", buf.getvalue())


def build_tiny(
    out: Path, adaptor: str = "stack-swiglu", seed: int = 0, llm_dim: int = 64, stack_factor: int = 5,
    max_positions: int = 4096,
) -> Path:
    """Write a tiny random checkpoint to ``out`` and return its path."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = train_tokenizer(Path(tmp))
        tokenizer = LlamaTokenizer.from_pretrained(tmp)
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_START, AUDIO_END]})
        tokenizer.chat_template = CHAT_TEMPLATE
        llm_cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=llm_dim, intermediate_size=2 * llm_dim,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2,
        )
        llm = LlamaForCausalLM(llm_cfg)
        whisper_cfg = WhisperConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
            max_source_positions=1500, max_target_positions=128, vocab_size=51865,
        )
        tower = fresh_tower(whisper_cfg, llm_dim, type=adaptor, stack_factor=stack_factor)
        ids = tokenizer.convert_tokens_to_ids([AUDIO_START, AUDIO_END])
        model = LlasmModel(tower, llm, audio_start_id=ids[0], audio_end_id=ids[1])
        with torch.no_grad():  # wider than HF's default init so the adaptor output is not ~0
            for p in tower.adaptor.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
        save_checkpoint(model, tokenizer, CheckpointMeta(adaptor=tower.cfg), Path(out), spm_model=spm_path)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--adaptor", default="stack-swiglu", choices=["stack-swiglu", "llasm-v1"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny(args.out, args.adaptor, args.seed))


if __name__ == "__main__":
    main()
