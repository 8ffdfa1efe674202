"""The ``llasm`` command run in-process with Typer's CliRunner: help texts, usage errors, user
errors, ``info`` and a real ``ask`` on the tiny test bundle, without starting a process.

CliRunner runs ``app``, not ``main``: usage errors come back as exit code 2, user errors as the
LlasmError itself in ``result.exception``. ``main`` is called directly where its exit codes matter.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from llasm_cli import __version__
from llasm_cli.cli import app, main
from llasm_cli.errors import AudioFileError, BundleError, InvalidValueError, LlasmError
from llasm_cli.formats.bundle import load_bundle

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}  # wide enough that no option name is cut
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

COMMAND_OPTIONS = {
    "ask": [
        "--text", "--after", "--model", "-m", "--backend", "--variant", "--system", "--temperature", "--max-tokens",
        "--seed", "--threads", "-t", "--ctx", "--gpu-layers", "--json", "--stats", "--force", "--max-audio",
    ],
    "chat": [
        "--model", "-m", "--mic", "--no-mic", "--ptt", "--device", "-d", "--file", "-f", "--text", "--silence",
        "--max-turn", "--backend", "--variant", "--system", "--temperature", "--max-tokens", "--seed", "--ignore-eos",
        "--threads", "--ctx", "--gpu-layers", "--stats", "--max-audio",
    ],
    "export": ["--type", "--tower-type", "--name", "--force"],
    "info": [],
    "devices": [],
    "pull": ["--revision", "--quiet"],
    "models": [],
}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def text_of(result) -> str:
    return ANSI.sub("", result.output)


def options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def assert_no_traceback(result) -> None:
    out = text_of(result)
    assert "Traceback" not in out and 'File "' not in out, out


def test_app_help_lists_every_command_and_the_global_options():
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    out = text_of(res)
    for command in COMMAND_OPTIONS:
        assert re.search(rf"^\W*{command}\b", out, re.M), f"{command} missing from the help:\n{out}"
    assert {"--version", "--verbose", "-v", "--help"} <= options_in(out)
    assert "llasm ask question.wav --model BUNDLE" in out


def test_no_arguments_shows_the_help():
    res = invoke()
    assert res.exit_code == 2 and "Usage: llasm" in text_of(res)


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_command_help_lists_its_options(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    out = text_of(res)
    assert f"Usage: llasm {command}" in out
    missing = set(COMMAND_OPTIONS[command]) - options_in(out)
    assert not missing, f"llasm {command} --help lacks {sorted(missing)}:\n{out}"
    assert "--help" in options_in(out)


@pytest.mark.parametrize("command, arguments", [("ask", ["audio"]), ("export", ["checkpoint", "out"]), ("info", ["model"])])
def test_help_texts_name_their_arguments(command, arguments):
    usage = next(ln for ln in text_of(invoke(command, "--help")).splitlines() if "Usage:" in ln)
    words = re.findall(r"\w+", usage.lower())
    assert words[:4] == ["usage", "llasm", command, "options"] and words[4:] == arguments, usage


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"llasm {__version__}"
    res = invoke("--version", "ask")  # eager: wins over a command
    assert res.exit_code == 0 and res.stdout.strip() == f"llasm {__version__}"


@pytest.mark.parametrize(
    "args, needle",
    [
        (("ask", "--no-such-option"), "No such option"),
        (("ask", "--max-tokens", "many"), "--max-tokens"),
        (("ask", "--seed", "1.5"), "--seed"),
        (("ask", "--temperature", "hot"), "--temperature"),
        (("chat", "--ctx", "big"), "--ctx"),
        (("export",), "CHECKPOINT"),  # a required argument
        (("no-such-command",), "No such command"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(args, needle):
    res = invoke(*args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert needle.lower() in text_of(res).lower(), text_of(res)
    assert "Usage: llasm" in text_of(res)
    assert_no_traceback(res)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("ask", "--max-audio", "0.5"), "--max-audio must be a number of seconds, at least 1, got 0.5"),
        (("ask", "--temperature", "nan"), "--temperature must be a number from 0 (greedy) to 2, got nan"),
        (("ask", "--threads", "-3"), "--threads must be from 1 to 512, or 0 for the default, got -3"),
        (("ask", "--max-tokens", "-5"), "--max-tokens must be a whole number, at least 1, got -5"),
        (("chat", "--ctx", "100"), "--ctx 100 is too small: a chat keeps 256 positions free"),
    ],
)
def test_options_out_of_range_are_invalid_values(args, needle):
    """Range errors come from inputs.py's rules (the server's too) before anything loads: exit 2 under main."""
    res = invoke(*args, "--text", "x")
    assert isinstance(res.exception, InvalidValueError), repr(res.exception)
    assert needle in str(res.exception)
    assert res.exception.exit_code == 2 and res.exception.param == args[1]


def test_ask_with_nothing_to_ask_is_a_user_error():
    res = invoke("ask")
    assert type(res.exception) is LlasmError, repr(res.exception)
    assert "nothing to ask" in str(res.exception) and "--text" in str(res.exception)
    assert res.exit_code == 1


def test_ask_with_a_missing_audio_file(tmp_path):
    missing = tmp_path / "nope.wav"
    res = invoke("ask", str(missing), "--text", "x")
    assert isinstance(res.exception, AudioFileError), repr(res.exception)
    assert str(res.exception) == f"audio file not found: {missing}"
    assert res.exception.exit_code == 2


def test_info_of_a_folder_without_a_bundle(tmp_path):
    res = invoke("info", str(tmp_path))
    assert isinstance(res.exception, BundleError), repr(res.exception)
    assert str(tmp_path) in str(res.exception)


def test_main_turns_errors_into_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nothing to ask" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No such option" in err and "Traceback" not in err
    main(["--version"])  # returns: exit status 0
    assert capsys.readouterr().out.strip() == f"llasm {__version__}"


def test_info_checks_every_file_of_the_bundle(swiglu):
    bundle = swiglu[1]
    res = invoke("info", str(bundle))
    assert res.exit_code == 0, (res.output, res.exception)
    m = load_bundle(bundle).manifest
    lines = text_of(res).splitlines()
    assert m.name in lines[0] and f"LLM width {m.llm_dim}" in lines[0]
    assert m.llm_files and m.tower_files
    for kind, files in (("llm", m.llm_files), ("tower", m.tower_files)):
        for variant, name in files.items():
            hits = [ln for ln in lines if ln.split()[:3] == [kind, variant, name]]
            assert len(hits) == 1 and hits[0].rstrip().endswith("ok"), f"{kind} {variant} {name}:\n{res.output}"
    if m.onnx_tower:  # loaded by ONNX Runtime and its widths checked
        hits = [ln for ln in lines if ln.split()[:3] == ["tower", "onnx", m.onnx_tower]]
        assert len(hits) == 1 and hits[0].rstrip().endswith("ok"), res.output


def test_info_loads_the_built_in_models_onnx_tower():
    """The built-in model's ONNX tower (what `pip install .` encodes with) is loaded and checked."""
    from llasm_cli.formats.built_in import demo_bundle_path

    res = invoke("info", str(demo_bundle_path()))
    assert res.exit_code == 0, (res.output, res.exception)
    (line,) = [ln for ln in text_of(res).splitlines() if ln.split()[:2] == ["tower", "onnx"]]
    assert line.split()[2] == "tower.onnx" and line.rstrip().endswith("ok") and float(line.split()[3]) > 40


def test_ask_text_in_process_prints_json(swiglu):
    res = invoke("ask", "--text", "hello", "-m", str(swiglu[1]), "--max-tokens", "3", "--json", "--seed", "1")
    assert res.exit_code == 0, (res.output, res.exception)
    data = json.loads(res.stdout)
    assert set(data) == {"answer", "timings"}
    assert isinstance(data["answer"], str) and data["answer"] == data["answer"].strip()
    t = data["timings"]
    assert 0 <= t["answer_tokens"] <= 3
    assert t["prompt_tokens"] > 3  # BOS and the template around "hello"
    assert t["audio_seconds"] == 0
    assert t["prefill_ms"] > 0
    again = invoke("ask", "--text", "hello", "-m", str(swiglu[1]), "--max-tokens", "3", "--json", "--seed", "1",
                   "--temperature", "0")
    assert again.exit_code == 0 and json.loads(again.stdout)["timings"]["answer_tokens"] <= 3
