"""The options several ``llasm`` commands share, and the Typer callbacks that apply inputs.py's rules
to an option's value as it is parsed: a number out of its range is an ``InvalidValueError`` (one
line, exit 2), text that is not valid Unicode is made valid (U+FFFD) with one note on stderr.
"""

from __future__ import annotations

import typer

from llasm_cli.audio.decode import MAX_AUDIO_SECONDS
from llasm_cli.inputs import (
    check_ctx,
    check_gpu_layers,
    check_max_audio,
    check_max_tokens,
    check_rate,
    check_seed,
    check_temperature,
    check_threads,
    clean_text,
)


def _option_name(ctx: typer.Context, param: typer.CallbackParam) -> str:
    """The option as the user gave it: ``--threads``, or ``LLASM_THREADS`` when it came from there."""
    source = ctx.get_parameter_source(param.name)
    if getattr(source, "name", "") == "ENVIRONMENT" and isinstance(param.envvar, str):
        return param.envvar
    return param.opts[0]


def rule(check):
    """A Typer callback applying one of inputs.py's rules to an option's value (None: not given)."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value):
        return None if value is None else check(value, _option_name(ctx, param))

    return callback


def chat_ctx(value: int, name: str) -> int:
    """A chat's context must hold more than the positions it keeps free for each answer."""
    from llasm_cli.assistant import ANSWER_RESERVE

    return check_ctx(value, name, ANSWER_RESERVE + 1, f"a chat keeps {ANSWER_RESERVE} positions free for each answer")


def valid_text(ctx: typer.Context, param: typer.CallbackParam, value):
    """A Typer callback for an option that holds text: made valid (inputs.clean_text), said once on stderr."""
    if value is None:
        return None
    if isinstance(value, list | tuple):  # a repeatable option
        return [valid_text(ctx, param, v) for v in value]
    text, note = clean_text(value, _option_name(ctx, param))
    if note:
        from llasm_cli.terminal.ui import note as show_note

        show_note(note)
    return text


ModelOpt = typer.Option(
    None, "--model", "-m", envvar="LLASM_MODEL",
    help="Bundle directory (from `llasm export`), a folder or LLM GGUF of a published speech model (its mmproj "
    "beside it), a name from `llasm models` or hf:owner/repo (as `llasm pull` cached it). Env: LLASM_MODEL. "
    "Default: the built-in model (SmolLM2-135M-Instruct hearing through Whisper's words).",
)
BackendOpt = typer.Option(
    "auto", "--backend", help="Audio tower backend: auto (the fastest here, measured once), onnx (ONNX Runtime), ggml (llama.cpp) or torch."
)
LlmOpt = typer.Option(
    None, "--llm", help="Any chat GGUF (llama, qwen2, qwen3, gemma3), given the model's Whisper ears: it hears "
    "through Whisper's transcript without training. Default: the model's own LLM.",
)
VariantOpt = typer.Option(None, "--variant", help="Which precision of the bundle's files to run, e.g. f16 or f32 (f32 also runs attention and the KV cache in f32).")
ThreadsOpt = typer.Option(
    None, "--threads", "-t", envvar="LLASM_THREADS", callback=rule(check_threads),
    help="CPU threads, 1-512 (default, or 0: all cores, up to 8). Env: LLASM_THREADS.",
)
AskCtxOpt = typer.Option(
    None, "--ctx", callback=rule(check_ctx),
    help="LLM context length in tokens (default: the question's prompt plus room for the answer, "
    "up to 4096: the KV cache takes memory for every position).",
)
def gpu_layers(ctx: typer.Context, param: typer.CallbackParam, value):
    """--gpu-layers checked, and said once on stderr when this llama.cpp cannot offload (a CPU build):
    the LLM then runs on the CPU, which it would otherwise do without a word."""
    value = rule(check_gpu_layers)(ctx, param, value)
    if value:
        from llasm_cli.llm.native import gpu_offload

        if not gpu_offload():
            from llasm_cli.terminal.ui import note

            note(f"{_option_name(ctx, param)} {value}: this llama.cpp was built without GPU support, so the LLM runs on "
                 "the CPU (README, GPU: how to install a CUDA, Metal or Vulkan build)")
    return value


GpuOpt = typer.Option(0, "--gpu-layers", callback=gpu_layers,
                      help="LLM layers to offload to the GPU (-1: all; default 0: none). A build without GPU support says so.")
SystemOpt = typer.Option(None, "--system", callback=valid_text, help="System prompt (default: the bundle's; '' for none).")
TemperatureOpt = typer.Option(
    None, "--temperature", callback=rule(check_temperature), help="From 0 (greedy) to 2 (default: the bundle's)."
)
MaxTokensOpt = typer.Option(None, "--max-tokens", callback=rule(check_max_tokens), help="Longest answer in tokens (at least 1).")
SeedOpt = typer.Option(0, "--seed", callback=rule(check_seed), help="Sampling seed (any 64-bit number).")
MaxAudioOpt = typer.Option(
    MAX_AUDIO_SECONDS, "--max-audio", callback=rule(check_max_audio),
    help="Longest audio file accepted, in seconds (at least 1; checked before decoding).",
)
RateOpt = typer.Option(
    1.0, "--rate", callback=rule(check_rate),
    help="Speaking rate of spoken answers, 0.5-2 (1: the voice's own pace; each engine renders it itself).",
)
