"""The ``llasm`` command: thin Typer commands over importable functions.

Every user error is one line on stderr and a non-zero exit code, never a traceback.

(Over 400 lines: each command's signature is its options and help text, which Typer reads as they are;
the options several commands share are options.py's, the checks of their values inputs.py's.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from llasm_cli import __version__
from llasm_cli.errors import LlasmError
from llasm_cli.inputs import check_api_key, check_ctx, check_max_audio, check_max_body, check_max_tokens, check_seconds
from llasm_cli.options import (
    AskCtxOpt,
    BackendOpt,
    GpuOpt,
    LlmOpt,
    MaxAudioOpt,
    MaxTokensOpt,
    ModelOpt,
    RateOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    VariantOpt,
    chat_ctx,
    rule,
    valid_text,
)
from llasm_cli.plugins import CommandsWithPlugins

app = typer.Typer(
    cls=CommandsWithPlugins,
    name="llasm",
    help="Talk to a local speech-and-language model (LLaSM-style) run by llama.cpp.\n\n"
    "Quick start:\n\n  llasm ask question.wav --model BUNDLE\n\n"
    "  llasm export CHECKPOINT BUNDLE",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llasm {__version__}")
        raise typer.Exit()


_state = {"verbose": False}


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show llama.cpp's own log, the CPU-feature probe's verdict, and tracebacks."
    ),
) -> None:
    """Talk to a local speech-and-language model."""
    from llasm_cli.llm import native

    _state["verbose"] = verbose
    native.set_verbose(verbose)


def _need_model(model: Optional[Path], llm: Optional[Path] = None):
    """The bundle to run: --model, else $LLASM_MODEL, else the default model shipped in the package.
    A registered name or hf:owner/repo is its snapshot in the Hugging Face cache. ``llm`` (--llm): that
    model's Whisper ears over another GGUF (formats.bundle.with_llm)."""
    if model is not None:
        from llasm_cli.formats.published import resolve_model

        path = resolve_model(str(model))
    else:
        from llasm_cli.formats.built_in import default_bundle_path

        path = default_bundle_path()
        if path is None:
            raise LlasmError("no model given: pass --model BUNDLE (make one with `llasm export`) or set LLASM_MODEL")
    if llm is None:
        return path
    from llasm_cli.formats.built_in import with_llm
    from llasm_cli.formats.bundle import load_bundle

    return with_llm(load_bundle(path), llm)


@app.command()
def ask(
    audio: Optional[Path] = typer.Argument(None, help="Spoken question: wav, flac, ogg or mp3, any rate and channels."),
    text: Optional[str] = typer.Option(None, "--text", callback=valid_text, help="Typed text placed before the spoken part."),
    after: Optional[str] = typer.Option(None, "--after", callback=valid_text, help="Typed text placed after the spoken part."),
    model: Optional[Path] = ModelOpt,
    llm: Optional[Path] = LlmOpt,
    backend: str = BackendOpt,
    variant: Optional[str] = VariantOpt,
    system: Optional[str] = SystemOpt,
    temperature: Optional[float] = TemperatureOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    seed: int = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    ctx: Optional[int] = AskCtxOpt,
    gpu_layers: int = GpuOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, timings) instead of text."),
    stats: bool = typer.Option(False, "--stats", help="Print timings after the answer."),
    force: bool = typer.Option(False, "--force", help="Send the audio even if no speech is detected in it."),
    max_audio: float = MaxAudioOpt,
    speak: bool = typer.Option(False, "--speak", help="Speak the answer aloud while it is generated."),
    speech_out: Optional[Path] = typer.Option(
        None, "--speech-out", help="Also speak the answer into this wav file (offline voices: see --voice)."),
    voice: Optional[str] = typer.Option(
        None, "--voice", callback=valid_text,
        help="The voice for --speak and --speech-out, e.g. hibari:heart, pico:en-GB, flite:slt, espeak-ng:en-us "
             "(default: the best installed one for the answer's language; `llasm voices` lists them)."),
    rate: float = RateOpt,
) -> None:
    """Answer one spoken (and/or typed) question.

    Examples:

      llasm ask question.wav -m my-bundle

      llasm ask sentence.wav --text "Translate this to Chinese:" -m my-bundle

      llasm ask --text "What is seven plus five?" -m my-bundle --json

      llasm ask question.wav --speak

      llasm ask question.wav --speech-out answer.wav --voice pico:en-GB --rate 1.2
    """
    from llasm_cli.assistant import Assistant, question_context
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import ask as ask_once
    from llasm_cli.speech_out import check_speech_out, speak_into, spoken_aloud
    from llasm_cli.terminal.ui import console, stats_table, stream_answer

    if audio is None and not (text or after):
        raise LlasmError("nothing to ask: give an audio file, --text, or both")
    speaker = check_speech_out(speech_out, voice, speak, rate)  # a wrong voice or folder fails now, not after
    player = None
    if speak:
        from llasm_cli.audio.playback import Player

        player = Player()  # no output device: said now, before the model loads
    samples = load_audio(audio, max_seconds=max_audio) if audio is not None else None
    if samples is not None and not force:
        from llasm_cli.audio.endpoint import require_speech

        require_speech(samples, str(audio))
    n_ctx = question_context(samples, text, after, system, max_tokens, given=ctx)
    bot = Assistant(_need_model(model, llm), backend=backend, llm_variant=variant, n_ctx=n_ctx, n_threads=threads,
                    n_gpu_layers=gpu_layers, one_shot=True)
    try:
        sampling = bot.default_sampling(temperature, seed=seed)
        conv = ask_once(bot, samples, text=text, after=after, system=system)
        pieces = conv.respond(sampling, max_tokens)
        if player is not None:
            pieces = spoken_aloud(pieces, player, speaker, rate)
        if as_json:
            answer = "".join(pieces).strip()
            spoken = speak_into(speech_out, answer, speaker, rate)
            heard = {"heard": conv.stats.heard} if conv.stats.heard is not None else {}
            typer.echo(json.dumps({"answer": answer, **heard, "timings": conv.stats.to_dict(), **spoken}, ensure_ascii=False))
            return
        answer = stream_answer(pieces)
        if stats:
            console.print(stats_table(conv.stats.to_dict()))
        speak_into(speech_out, answer, speaker, rate)
    finally:
        if player is not None:
            player.close()
        bot.close()


@app.command()
def chat(
    model: Optional[Path] = ModelOpt,
    llm: Optional[Path] = LlmOpt,
    mic: Optional[bool] = typer.Option(
        None, "--mic/--no-mic", help="Listen on the microphone (default: on when an input device exists)."
    ),
    ptt: bool = typer.Option(False, "--ptt", help="Push-to-talk: Enter starts and stops recording."),
    device: Optional[str] = typer.Option(
        None, "--device", "-d", callback=valid_text, help="Input device index or name (see `llasm devices`)."
    ),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Audio file for a scripted first turn."),
    text: Optional[str] = typer.Option(None, "--text", callback=valid_text, help="Typed text sent with the first spoken turn."),
    silence: float = typer.Option(
        0.6, "--silence", callback=rule(check_seconds), help="Seconds of silence that end a spoken turn (above 0)."
    ),
    max_turn: float = typer.Option(
        30.0, "--max-turn", callback=rule(check_seconds), help="Longest spoken turn in seconds (above 0)."
    ),
    stream: bool = typer.Option(
        True, "--stream/--no-stream",
        help="A model trained on chunks: encode and prefill your speech while you speak (first token soonest). "
             "--no-stream encodes each turn whole when it ends, for a model also trained on whole clips "
             "(the built-in one hears those better: see README)."),
    backend: str = BackendOpt,
    variant: Optional[str] = VariantOpt,
    system: Optional[str] = SystemOpt,
    temperature: Optional[float] = TemperatureOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    seed: int = SeedOpt,
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep answering past end-of-text, up to --max-tokens."),
    threads: Optional[int] = ThreadsOpt,
    ctx: int = typer.Option(
        4096, "--ctx", callback=rule(chat_ctx),
        help="LLM context length in tokens (more than the 256 kept free for each answer).",
    ),
    gpu_layers: int = GpuOpt,
    stats: bool = typer.Option(False, "--stats", help="Show audio length, encode time, time to first token, tokens/s."),
    max_audio: float = MaxAudioOpt,
    speak: Optional[bool] = typer.Option(
        None, "--speak/--no-speak", help="Speak each answer while it is generated (default: when listening "
        "hands-free and an output device opens). Your voice over an answer cuts it."),
    voice: Optional[str] = typer.Option(
        None, "--voice", help="ENGINE:VOICE for spoken answers (`llasm voices` lists them; default: the best "
        "installed voice for each answer's language)."),
    rate: float = RateOpt,
) -> None:
    """Talk with the model, turn after turn: speech from the mic or files, typed text, or both.

    In the chat: [bold]/file PATH \\[text][/], [bold]/reset[/], [bold]/save FILE[/], [bold]/system TEXT[/],
    [bold]/mute[/], [bold]/voice \\[SPEC][/], [bold]/stats[/], [bold]/help[/], [bold]/quit[/].

    A typed line ending with ':' waits for your next spoken turn (e.g. "Translate this to Chinese:"
    then speak). Ctrl-C stops an answer; Ctrl-C when idle, or Ctrl-D, quits.

    Examples:

      llasm chat -m my-bundle

      llasm chat -m my-bundle --ptt --device "USB"

      llasm chat -m my-bundle --no-mic --file question.wav
    """
    from llasm_cli.assistant import Assistant
    from llasm_cli.conversation import Conversation
    from llasm_cli.terminal.chat import ChatApp, ChatSettings
    from llasm_cli.terminal.ui import console

    if mic is None:
        mic = _has_input_device()
    mode = "ptt" if ptt and mic is not False else ("mic" if mic else "text")
    opened = None
    if voice is not None:
        from llasm_cli.voices import open_voice

        opened = open_voice(voice)  # a voice that cannot speak here fails now (VoiceError says what to install)
    bot = Assistant(_need_model(model, llm), backend=backend, llm_variant=variant, n_ctx=ctx, n_threads=threads,
                    n_gpu_layers=gpu_layers, stream=stream)
    try:
        settings = ChatSettings(
            mode=mode, device=_device_spec(device), trailing_silence=silence, max_turn=max_turn, stats=stats,
            sampling=bot.default_sampling(temperature, seed=seed, ignore_eos=ignore_eos), max_tokens=max_tokens,
            max_audio=max_audio, speak=speak if voice is None else (speak is not False), voice=opened, rate=rate,
        )
        ChatApp(Conversation(bot, system=system), settings, console).run(first_file=file, first_text=text)
    finally:
        bot.close()


@app.command()
def serve(
    model: Optional[Path] = ModelOpt,
    llm: Optional[Path] = LlmOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0: any free port)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="LLASM_API_KEY", callback=rule(check_api_key),
        help="Require 'Authorization: Bearer KEY' (printable ASCII). Env: LLASM_API_KEY.",
    ),
    parallel: int = typer.Option(4, "--parallel", "-np", min=1, max=64, help="Conversations decoded at once."),
    queue: int = typer.Option(16, "--queue", min=0, help="Requests that may wait for a free sequence; more get 503."),
    backend: str = BackendOpt,
    variant: Optional[str] = VariantOpt,
    threads: Optional[int] = ThreadsOpt,
    ctx: int = typer.Option(
        4096, "--ctx", callback=rule(check_ctx),
        help="Context length per conversation, in tokens (the cache holds --parallel of them).",
    ),
    gpu_layers: int = GpuOpt,
    max_audio: float = typer.Option(
        300.0, "--max-audio", callback=rule(check_max_audio), help="Longest audio clip accepted, in seconds (at least 1)."
    ),
    max_body: float = typer.Option(
        32.0, "--max-body", callback=rule(check_max_body), help="Largest request body accepted, in MiB (at least 0.001)."
    ),
) -> None:
    """Serve the model over HTTP with OpenAI's chat-completions API, speech included.

    POST /v1/chat/completions takes "text" and "input_audio" content parts (base64 wav, mp3, flac
    or ogg) and streams with "stream": true; GET /v1/models, GET /health. Ctrl-C stops.

    Examples:

      llasm serve

      llasm serve -m my-bundle --host 0.0.0.0 --port 8080 --api-key "$KEY" --parallel 8
    """
    from llasm_cli.serving.http import bind, run
    from llasm_cli.serving.server import ServeSettings, close_server, load_server

    settings = ServeSettings(
        parallel=parallel, queue=queue, n_ctx=ctx, max_audio=max_audio, max_body=int(max_body * (1 << 20)),
        api_key=api_key or None,
    )
    sock = bind(host, port)  # a taken port fails now, before the model loads
    try:
        server = load_server(_need_model(model, llm), settings, backend=backend, variant=variant, n_threads=threads,
                             n_gpu_layers=gpu_layers)
        try:
            run(server, sock, verbose=_state["verbose"])
        finally:
            close_server(server)
    finally:
        sock.close()


@app.command()
def devices() -> None:
    """List audio input devices (use the index or a part of the name with --device)."""
    from llasm_cli.audio.mic import list_input_devices
    from llasm_cli.terminal.ui import console

    found = list_input_devices()
    if not found:
        console.print("no input devices found")
        return
    for d in found:
        mark = "*" if d.get("is_default") else " "
        console.print(f"{mark} {d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")


@app.command()
def voices() -> None:
    """List the offline voices installed here (what --voice and /voice take), and what the others need."""
    from llasm_cli.terminal.ui import console
    from llasm_cli.voices import available

    for e in available():
        if e.reason is None:
            shown = ", ".join(f"{e.engine}:{v}" for v in e.voices[:8]) + (f" (+{len(e.voices) - 8} more)" if len(e.voices) > 8 else "")
            console.print(f"{e.engine:10} {shown}  [dim]{e.licence}[/]", highlight=False)
        else:
            console.print(f"{e.engine:10} [dim]not here: {e.reason}[/]", highlight=False)


def _device_spec(device: Optional[str]) -> str | int | None:
    return int(device) if device is not None and device.isdigit() else device


def _has_input_device() -> bool:
    try:
        from llasm_cli.audio.mic import list_input_devices

        return bool(list_input_devices())
    except LlasmError:
        return False


@app.command()
def info(model: Optional[Path] = typer.Argument(None, envvar="LLASM_MODEL", help="Bundle or published model (as --model).")) -> None:
    """Show what a bundle holds and check every file in it."""
    from llasm_cli.model_info import describe
    from llasm_cli.terminal.ui import console

    for line in describe(_need_model(model)):
        console.print(line, highlight=False)


@app.command("eval-quant")
def eval_quant_command(
    model: Optional[Path] = typer.Argument(None, envvar="LLASM_MODEL", help="Bundle or published model (as --model)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Folder of spoken prompts (wav, flac, ogg, mp3)."),
    text: Optional[list[str]] = typer.Option(None, "--text", callback=valid_text, help="A typed prompt (repeat for several)."),
    variants: Optional[list[str]] = typer.Option(
        None, "--variants", help="LLM variants to score, comma-separated or repeated (default: all; the reference always runs)."
    ),
    max_tokens: int = typer.Option(
        64, "--max-tokens", callback=rule(check_max_tokens), help="Longest reference answer in tokens (at least 1)."
    ),
    backend: str = BackendOpt,
    threads: Optional[int] = ThreadsOpt,
    ctx: int = typer.Option(2048, "--ctx", callback=rule(check_ctx), help="LLM context length in tokens."),
    as_run: bool = typer.Option(
        False, "--as-run", help="Run each variant as `llasm ask --variant` does (f16 KV cache and flash attention except "
        "f32) instead of all with an f32 KV cache and attention (the default: only the weights differ)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
) -> None:
    """Score every LLM quantization of a bundle against f32 on the same spoken and typed prompts.

    The reference (f32, else the most precise variant present) answers each prompt greedily; each variant
    is teacher-forced along that answer: top-1 agreement, mean KL(reference || variant), identical answers,
    decode tokens/s and file size. Without --audio or --text, a few typed questions are used.

    Examples:

      llasm eval-quant my-bundle --audio examples/

      llasm eval-quant my-bundle --audio clips/ --text "What is the capital of France?" --variants q8_0,q4_k_m --json
    """
    from llasm_cli.eval_quant import DEFAULT_TEXTS, audio_prompts, eval_quant, text_prompts
    from llasm_cli.terminal.ui import err_console

    prompts = (audio_prompts(audio) if audio is not None else []) + text_prompts(text or [])
    if not prompts:
        prompts = text_prompts(DEFAULT_TEXTS)
    wanted = [v.strip() for item in variants or [] for v in item.split(",") if v.strip()] or None
    with err_console.status("evaluating") as status:
        report = eval_quant(_need_model(model), prompts, wanted, max_tokens=max_tokens, backend=backend,
                            n_threads=threads, n_ctx=ctx, as_run=as_run, progress=lambda s: status.update(s))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    typer.echo(f"{report.model}: {len(report.prompts)} prompts, {report.answer_tokens} reference answer tokens; "
               f"{report.note}; context: {report.context}")
    typer.echo(report.markdown())


@app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help="A name from `llasm models`, or a Hugging Face repository as owner/name."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit on the hub (default: main)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (they show only on a terminal anyway)."),
) -> None:
    """Download a model's files into the Hugging Face cache and print where they are.

    Resumes an interrupted download and checks every file's size and sha256 against the hub.

    Offline (HF_HUB_OFFLINE=1) it only looks in the cache: $HF_HUB_CACHE, by default $HF_HOME/hub.

    Exit codes: 10 no such model, 11 gated, 12 no network, 13 disk full, 14 checksum mismatch.

    The models marked "runs" in `llasm models` then run with `llasm ask -m NAME` (or hf:owner/repo).

    Examples:

      llasm pull ultravox-1b

      llasm pull ggml-org/Voxtral-Mini-3B-2507-GGUF --revision main

      HF_HUB_OFFLINE=1 llasm pull ultravox-1b
    """
    from llasm_cli.hub.pull import pull, resolve
    from llasm_cli.hub.registry import COMPANION, CONVERTS, RUNS
    from llasm_cli.terminal.ui import err_console

    path = pull(name, revision, progress=False if quiet else None)
    typer.echo(str(path))
    model = resolve(name).model
    if model is not None and model.status == RUNS:
        err_console.print(f"run it: llasm ask question.wav -m {model.name}", highlight=False, soft_wrap=True)
    elif model is not None and model.status in (CONVERTS, COMPANION):
        err_console.print(f"note: {model.name}: {model.status}", highlight=False, soft_wrap=True)
        if model.status == CONVERTS:
            err_console.print(f"convert it: llasm export {path} my-{model.name} --type q4_k_m, then "
                              f"llasm ask question.wav -m my-{model.name}", highlight=False, soft_wrap=True)
    elif model is not None:
        err_console.print(f"note: llasm cannot run {model.name} yet ({model.status}); the files are ready for when "
                          "it can", highlight=False, soft_wrap=True)


@app.command("models")
def models_command() -> None:
    """List the known speech LLMs (what `llasm pull` takes), which are cached, and local llasm bundles.

    Examples:

      llasm models

      llasm pull ultravox-1b && llasm models
    """
    from llasm_cli.hub.pull import cached_snapshot, hub_cache, resolve
    from llasm_cli.hub.registry import MODELS

    typer.echo(f"Known models (`llasm pull NAME`; Hugging Face cache: {hub_cache()}):")
    for m in MODELS:
        here = "cached" if cached_snapshot(resolve(m.name)) else "-"
        typer.echo(f"  {m.name:18} {m.size:>7}  {here:6}  {m.status}")
        typer.echo(f"  {'':18} {m.repo}: {m.description}")
    from llasm_cli.files import cache_dir
    from llasm_cli.formats.bundle import MANIFEST_FILE

    folder = cache_dir() / "models"
    bundles = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_FILE}")) if folder.is_dir() else []
    typer.echo(f"llasm bundles in {folder} (these run: `llasm ask -m BUNDLE`):")
    for b in bundles:
        typer.echo(f"  {b.name}")
    if not bundles:
        typer.echo("  (none)")
    from llasm_cli.formats.built_in import BUILT_IN, built_in_bundle

    typer.echo("built in (`llasm ask -m NAME`; no -m: default):")
    for name, what in BUILT_IN.items():
        if built_in_bundle(name) is not None:
            typer.echo(f"  {name:9} {what}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every failure becomes one line on stderr and a documented exit code."""
    import sys

    if hasattr(sys.stdout, "reconfigure"):  # an answer a Latin-1 terminal cannot show gets '?', not a crash
        sys.stdout.reconfigure(errors="replace")
    run_app(app, argv)


def run_app(typer_app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a Typer app the way ``llasm`` runs: every failure one line on stderr and a documented exit code.

    1-15: the user errors of ``errors.py``; 2 also for command-line usage (Typer's own); 130: Ctrl-C;
    141: the reader of stdout went away; 70: a bug in llasm (the traceback with --verbose).
    """
    from llasm_cli.terminal.ui import error

    try:
        typer_app(args=argv, standalone_mode=False)
    except LlasmError as exc:
        error(str(exc))
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `llasm ask ... | head`: the reader left; say nothing, like other tools
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        raise SystemExit(141) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except SystemExit:
        raise
    except Exception as exc:
        raise SystemExit(_unexpected(exc, error)) from None


def _unexpected(exc: Exception, error) -> int:
    """Usage errors from the command-line parser, else a one-line report of a bug. Never raises.

    Typer vendors its own copy of click (typer >= 0.29 does not install click), so the parser's
    exceptions are recognised by their class names rather than by importing click.
    """
    try:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in names:
            exc.show()  # "Usage: ... Error: ..." as Typer prints it
            return int(getattr(exc, "exit_code", 2))
        if "Abort" in names:
            return 130
        if _state["verbose"]:
            import traceback

            traceback.print_exception(exc)
        error(f"unexpected {type(exc).__name__}: {exc} (this is a bug in llasm; --verbose shows the traceback)")
    except BaseException:  # the report itself must never turn into a traceback
        pass
    return 70
