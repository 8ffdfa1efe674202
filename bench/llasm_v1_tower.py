"""The original LLaSM's audio tower at its real size: parity with the LLaSM way, and encode time per device.

    python bench/llasm_v1_tower.py [--devices cuda,cpu] [--repeats 5]

Random weights at whisper-large-v2's dimensions (32 + 32 layers, width 1280) and LLaSM-Cllama2's
projector (1280 -> 4096): the tower ``llasm export`` writes for it (AudioTower, adaptor llasm-v1) is
compared with the original code path (WhisperModel with 64 x <|startoftranscript|> fed to the
decoder, then mm_projector) in float32, then timed on one 30 s window per device and dtype: what
``--backend torch`` costs per window there. No download: the numbers do not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

LARGE_V2 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=80,
                vocab_size=51865, max_source_positions=1500, max_target_positions=448, decoder_start_token_id=50258)
LLM_DIM = 4096  # LLaSM-Cllama2's hidden size (Llama-2-7B)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import WhisperConfig, WhisperModel

    from llasm_cli.audio.geometry import SAMPLE_RATE
    from llasm_cli.audio.mel import log_mel_spectrogram
    from llasm_cli.model import AdaptorConfig, build_tower

    home = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    wcfg = WhisperConfig(**LARGE_V2)
    start = time.perf_counter()
    with torch.device(home):
        whisper = WhisperModel(wcfg).eval()
        proj = torch.nn.Linear(wcfg.d_model, LLM_DIM)
    state = {f"encoder.{k}": v for k, v in whisper.encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in whisper.decoder.state_dict().items()}
    cfg = AdaptorConfig(type="llasm-v1", encoder_dim=wcfg.d_model, llm_dim=LLM_DIM, n_queries=64)
    with torch.device(home):
        tower = build_tower(wcfg, cfg, state, {f"mm_projector.{k}": v for k, v in proj.state_dict().items()}).eval()
    n_params = sum(p.numel() for p in tower.parameters())
    print(f"tower: {n_params / 1e9:.2f} B parameters (built in {time.perf_counter() - start:.1f} s on {home})")

    rng = np.random.default_rng(0)
    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    mel = torch.from_numpy(log_mel_spectrogram(audio, 80))[None]  # (1, 80, 3000): a 4 s clip in its 30 s window
    with torch.inference_mode():
        x = mel.to(home)
        queries = torch.full((1, 64), wcfg.decoder_start_token_id, dtype=torch.long, device=home)
        ref = proj(whisper(x, decoder_input_ids=queries).last_hidden_state)[0]  # the LLaSM way
        ours = tower(x)[0]
    err = float((ours - ref).abs().max() / ref.abs().max())
    print(f"parity with WhisperModel + mm_projector (float32, {home}): shape {tuple(ours.shape)}, "
          f"max relative error {err:.2e}")
    del whisper, proj

    print("| device | dtype | threads | one 30 s window (median) |")
    print("|---|---|---:|---:|")
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for dtype in (torch.bfloat16, torch.float16, torch.float32) if device == "cuda" else (torch.float32, torch.bfloat16):
            tower.to(device, dtype)
            x = mel.to(device, dtype)
            times = []
            with torch.inference_mode():
                for i in range(1 + (args.repeats if device == "cuda" else args.cpu_repeats)):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    tower(x)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    if i:  # the first run sets up kernels
                        times.append(time.perf_counter() - start)
            threads = torch.get_num_threads() if device == "cpu" else "-"
            print(f"| {device} | {str(dtype).removeprefix('torch.')} | {threads} | {1000 * statistics.median(times):.0f} ms |",
                  flush=True)


if __name__ == "__main__":
    main()
