"""Bad text and bad numbers at every door (issue #28): the command line, the chat's input loop, the
server's JSON fields. Hypothesis throws arbitrary text (lone surrogates and bytes that are not UTF-8
included) and numbers at each door, and each test asserts only what the README documents: exit 0 or
2 (one line on stderr), HTTP 200 or 400 with an OpenAI error body, a chat that goes on -- and that a
normal question still gets an answer afterwards. The rules themselves live in llasm_cli/inputs.py.

Everything runs the packaged demo model (a 4 MB LLM); the fuzzing is derandomised and bounded so the
file stays well under a minute and a half on two CPU cores.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llasm_cli.errors import InvalidValueError
from llasm_cli.formats.built_in import demo_bundle_path
from llasm_cli.inputs import (
    MAX_TEMPERATURE,
    MAX_THREADS,
    REPLACEMENT,
    SEED_RANGE,
    check_api_key,
    check_ctx,
    check_gpu_layers,
    check_max_audio,
    check_max_body,
    check_max_tokens,
    check_seconds,
    check_seed,
    check_temperature,
    check_threads,
    check_top_p,
    clean_text,
)
from tests.helpers import run_llasm

DEFAULT = demo_bundle_path()
QUESTION_WAV = Path(__file__).resolve().parent.parent / "examples" / "demo" / "what_is_the_capital_of_japan.wav"
NORMAL = "What is two plus two?"

pytestmark = pytest.mark.skipif(DEFAULT is None, reason="no packaged default model")


def fuzz(n: int):
    return settings(derandomize=True, max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- strategies -------------------------------------------------------------------------

# text as it reaches llasm: any character (st.text leaves surrogates out), lone surrogates, bytes
# that are not UTF-8 as Python hands them over from argv and stdin, and markup/escape characters
_CHAR = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.characters(categories=["Cs"]),
    st.sampled_from(["[", "]", "[/]", "[bold]", "\\", ":", "/", "\x00", "\t", "\"", "'", "<|im_end|>", "</s>"]),
)
ANY_TEXT = st.one_of(
    st.lists(_CHAR, max_size=12).map("".join),
    st.binary(max_size=16).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
# what a number option might be given on the command line
NUMBER_ARG = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "-0", "0", "1", "2", "512", "513", "0x10", "", " 3",
                     "5e-324", str(2**64 - 1), str(2**64), str(-(2**63)), str(-(2**63) - 1)]),
    ANY_TEXT,
)
# what a JSON request field might hold
JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2, 2.0000001, -1, 5e-324, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    ANY_TEXT, st.lists(st.integers(), max_size=2),
)


# --- the rules ------------------------------------------------------------------------------


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


SPEC = {  # each rule as the README states it
    check_temperature: lambda v: _num(v) and 0 <= v <= MAX_TEMPERATURE,
    check_top_p: lambda v: _num(v) and 0 < v <= 1,
    check_max_tokens: lambda v: _int(v) and v >= 1,
    check_seed: lambda v: _int(v) and SEED_RANGE[0] <= v < SEED_RANGE[1],
    check_threads: lambda v: _int(v) and 0 <= v <= MAX_THREADS,
    check_ctx: lambda v: _int(v) and v >= 1,
    check_gpu_layers: lambda v: _int(v) and v >= -1,
    check_seconds: lambda v: _num(v) and v > 0,
    check_max_audio: lambda v: _num(v) and v >= 1,
    check_max_body: lambda v: _num(v) and v >= 0.001,
}


FLOATS = {check_temperature, check_top_p, check_seconds, check_max_audio, check_max_body}  # returned as float


@fuzz(300)
@given(ANY_TEXT)
def test_clean_text_makes_any_text_valid_and_says_so_once(text):
    out, note = clean_text(text, "--text")
    out.encode("utf-8")  # never raises
    assert len(out) == len(text)
    assert (note is None) == (out == text)
    assert clean_text(out, "--text") == (out, None)
    if note is not None:
        assert "\n" not in note and note.startswith("--text ") and REPLACEMENT in note


def test_clean_text_leaves_valid_text_alone():
    for text in ["café", "日本の首都は？", "😀 </s> <|audio|> [bold]", ""]:
        assert clean_text(text, "x") == (text, None)
    assert clean_text(b"caf\xe9 \xff".decode("utf-8", "surrogateescape"), "x")[0] == f"caf{REPLACEMENT} {REPLACEMENT}"


@fuzz(400)
@given(st.sampled_from(list(SPEC)), JSON_VALUE)
def test_each_rule_accepts_exactly_what_it_documents(check, value):
    try:
        out = check(value, "field")
    except InvalidValueError as exc:
        assert not SPEC[check](value), (check.__name__, value)
        assert exc.param == "field" and str(exc).startswith("field ") and exc.exit_code == 2
        return
    assert SPEC[check](value), (check.__name__, value)
    if check is check_seed:
        assert 0 <= out < 2**64 and out % 2**64 == value % 2**64
    elif check is check_threads:
        assert out == (value or None)
    else:
        assert out == (float(value) if check in FLOATS else value)  # an int that big rounds as a float
        assert type(out) is (float if check in FLOATS else int)


def test_the_server_applies_the_same_rules_as_the_command_line():
    from llasm_cli.serving.json_fields import APIError
    from llasm_cli.serving.openai_api import parse_chat_request

    fields = {"temperature": check_temperature, "top_p": check_top_p, "max_tokens": check_max_tokens,
              "max_completion_tokens": check_max_tokens, "seed": check_seed}
    values = [0, 1, 2, 3, -1, 0.5, 1.5, 2.5, 1e-300, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]
    for key, check in fields.items():
        for v in values:
            body = {"messages": [{"role": "user", "content": "hi"}], key: v}
            try:
                check(v, key)
                ok = True
            except InvalidValueError:
                ok = False
            if isinstance(v, float) and check in (check_max_tokens, check_seed):
                continue  # a float where an integer belongs is a type error (invalid_type) first
            try:
                parse_chat_request(body, 100)
                assert ok, (key, v)
            except APIError as exc:
                assert not ok and exc.status == 400 and exc.param == key and exc.code == "invalid_value", (key, v)


# --- the command line, in process -------------------------------------------------------------


class Reached(Exception):
    """The command got past every check of its options to loading the model."""


def _invoke(args: list[str]):
    """(the exception the command ended with, its exit code) with the model loader stubbed out."""
    import llasm_cli.serving.server  # noqa: F401  (imported unpatched: it binds Assistant when first imported)
    from llasm_cli.cli import app

    with mock.patch("llasm_cli.assistant.Assistant", side_effect=Reached), \
         mock.patch("llasm_cli.serving.server.load_server", side_effect=Reached):
        res = CliRunner().invoke(app, args, env={"LLASM_THREADS": None, "LLASM_API_KEY": None})
    return res.exception, res.exit_code, res.output


def _chat_ctx_rule(v, name):
    return check_ctx(v, name, 257)  # a chat keeps 256 positions free for each answer


# option -> (how the parser reads it, its rule); text options have none (any text is made valid)
RULES = {
    "--temperature": (float, check_temperature), "--max-tokens": (int, check_max_tokens), "--seed": (int, check_seed),
    "--threads": (int, check_threads), "--ctx": (int, check_ctx), "--gpu-layers": (int, check_gpu_layers),
    "--max-audio": (float, check_max_audio), "--max-body": (float, check_max_body),
    "--silence": (float, check_seconds), "--max-turn": (float, check_seconds), "--api-key": (str, check_api_key),
}


def _read(kind: type, value: str):
    """``value`` as the command-line parser reads it: Typer >= 0.29 coerces with pydantic's lax mode
    ("0.0" is the integer 0, "1e3" is not an integer); older Typers with click (``int(value)``)."""
    try:
        from pydantic import TypeAdapter
    except ImportError:
        return kind(value)
    return TypeAdapter(kind).validate_python(value)  # ValidationError is a ValueError


def _expected(command: str, options: dict[str, str]) -> set[str]:
    """What the documentation says ``options`` give: "usage" (the parser cannot read a value: exit 2),
    "invalid" (a value out of its range: InvalidValueError, exit 2) or "runs". Options are read in
    order, so with both kinds of mistake either may be the one reported."""
    found = set()
    for name, value in options.items():
        if name not in RULES:
            continue
        kind, rule = RULES[name]
        rule = _chat_ctx_rule if (command, name) == ("chat", "--ctx") else rule
        try:
            read = _read(kind, value)
        except (ValueError, OverflowError):
            found.add("usage")
            continue
        try:
            rule(read, name)
        except InvalidValueError:
            found.add("invalid")
    return found or {"runs"}


def _assert_documented(command: str, fixed: list[str], options: dict[str, str]) -> None:
    args = [command, *fixed] + [x for kv in options.items() for x in kv]
    exc, code, out = _invoke(args)
    want = _expected(command, options)
    if isinstance(exc, Reached):
        assert want == {"runs"}, (args, want)
    elif isinstance(exc, InvalidValueError):  # one line under main: "error: --x must be ..."
        assert "invalid" in want, (args, want, exc)
        assert exc.param in options and "\n" not in str(exc), (args, exc)
    else:  # the parser's own usage error
        assert "usage" in want, (args, want, repr(exc), out)
        assert exc is None or isinstance(exc, SystemExit), (args, repr(exc), out)
        assert code == 2 and "Traceback" not in out, (args, code, out)


@fuzz(120)
@given(st.fixed_dictionaries({}, optional={
    "--temperature": NUMBER_ARG, "--max-tokens": NUMBER_ARG, "--seed": NUMBER_ARG, "--threads": NUMBER_ARG,
    "--ctx": NUMBER_ARG, "--gpu-layers": NUMBER_ARG, "--max-audio": NUMBER_ARG, "--system": ANY_TEXT,
    "--after": ANY_TEXT}), ANY_TEXT)
def test_fuzzed_ask_options_are_a_usage_error_or_run(options, text):
    _assert_documented("ask", ["--text", text or "x"], options)


@fuzz(100)
@given(st.fixed_dictionaries({}, optional={
    "--temperature": NUMBER_ARG, "--max-tokens": NUMBER_ARG, "--seed": NUMBER_ARG, "--threads": NUMBER_ARG,
    "--ctx": NUMBER_ARG, "--silence": NUMBER_ARG, "--max-turn": NUMBER_ARG, "--text": ANY_TEXT,
    "--system": ANY_TEXT, "--device": ANY_TEXT}))
def test_fuzzed_chat_options_are_a_usage_error_or_run(options):
    _assert_documented("chat", ["--no-mic"], options)


@fuzz(60)
@given(st.fixed_dictionaries({}, optional={
    "--ctx": NUMBER_ARG, "--threads": NUMBER_ARG, "--max-audio": NUMBER_ARG, "--max-body": NUMBER_ARG,
    "--api-key": ANY_TEXT}))
def test_fuzzed_serve_options_are_a_usage_error_or_run(options):
    _assert_documented("serve", ["--port", "0"], options)


def test_text_options_reach_the_model_as_valid_text_with_one_note(capsys):
    """What the issue's `llasm ask --text $'caf\\xe9 \\xff'` hands the model: valid text, said once."""
    from llasm_cli.cli import main

    bad = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    main(["ask", "--text", bad, "--system", bad, "--max-tokens", "3", "--temperature", "0"])  # returns: exit 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if line.startswith("note:")]
    assert len(notes) == 2 and "--text" in notes[0] and "--system" in notes[1], err


@pytest.mark.parametrize("args", [
    ["--temperature", str(MAX_TEMPERATURE), "--seed", str(SEED_RANGE[1] - 1)],
    ["--temperature", "5e-324", "--seed", str(SEED_RANGE[0])],
    ["--threads", "0", "--gpu-layers", "-1"],
    ["--threads", "1", "--max-tokens", "1"],
], ids=["hottest-largest-seed", "subnormal-smallest-seed", "auto-threads", "one-thread-one-token"])
def test_edge_values_run(args):
    """The edges the rules accept run for real."""
    from llasm_cli.cli import main

    main(["ask", "--text", NORMAL, "--max-tokens", "2", *args])


# --- the model itself, at every value the rules let through ----------------------------------


@pytest.fixture(scope="module")
def bot():
    from llasm_cli.assistant import Assistant

    b = Assistant(DEFAULT, n_ctx=1024)
    yield b
    b.close()


@fuzz(120)
@given(temperature=st.floats(0, MAX_TEMPERATURE), top_p=st.floats(0, 1, exclude_min=True),
       seed=st.integers(*SEED_RANGE).filter(lambda s: s < SEED_RANGE[1]), text=ANY_TEXT)
def test_any_accepted_sampling_answers(bot, temperature, top_p, seed, text):
    from llasm_cli.conversation import answer

    sampling = bot.default_sampling(check_temperature(temperature), seed=check_seed(seed), top_p=check_top_p(top_p))
    out = answer(bot, text=clean_text(text, "text")[0] or "x", sampling=sampling, max_tokens=2)
    assert isinstance(out, str)


def test_the_tokenizer_never_raises_on_text_that_got_past_the_doors(bot):
    """Defence in depth: a lone surrogate that reached the tokenizer is read as U+FFFD."""
    assert bot.engine.tokenize("a\ud800b") == bot.engine.tokenize(f"a{REPLACEMENT}b")


# --- the chat's input loop ------------------------------------------------------------------


def _chat(bot):
    from rich.console import Console

    from llasm_cli.conversation import Conversation
    from llasm_cli.terminal.chat import ChatApp, ChatSettings

    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False, color_system=None)
    settings_ = ChatSettings(mode="text", max_tokens=2, sampling=bot.default_sampling(0.0))
    return ChatApp(Conversation(bot), settings_, console), out


# /save only below /dev/null: it must fail there (and write nothing anywhere)
COMMANDS = st.sampled_from(["", "/system ", "/file ", "/save /dev/null/", "/reset", "/stats", "/help", "/nope", "/",
                            "/quit"])


@fuzz(120)
@given(COMMANDS, ANY_TEXT)
def test_fuzzed_chat_lines_never_end_the_chat(bot, command, text):
    app, out = _chat(bot)
    quits = app._handle_line(command + text) is False
    assert quits == ((command + text).strip().split(" ")[0] in ("/quit", "/exit"))
    out.truncate(0)
    app._handle_line(NORMAL)  # the conversation goes on: a normal question is answered
    assert "llasm›" in out.getvalue(), out.getvalue()


def test_a_bad_line_is_repaired_noted_and_kept_in_the_history(bot):
    app, out = _chat(bot)
    app._handle_line(b"bad \xff\xfe text".decode("utf-8", "surrogateescape"))
    said = out.getvalue()
    assert "note: the line is not valid UTF-8 text: 2 invalid characters" in said and "llasm›" in said
    assert app.conv.turns[0].message.content == f"bad {REPLACEMENT}{REPLACEMENT} text"
    app._handle_line(NORMAL)
    assert [t.message.role for t in app.conv.turns] == ["user", "assistant", "user", "assistant"]


def test_chat_commands_refuse_what_they_cannot_do_and_go_on(bot, tmp_path):
    app, out = _chat(bot)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for line in [f"/save {not_a_folder}/x.json", '/file "unclosed', "/file \\", "/file a\x00b.wav"]:
        assert app._handle_line(line) is True
    said = out.getvalue()
    assert "cannot save" in said and "no closing quotation" in said and "usage: /file PATH [text]" in said
    app.pending_text = "[/dim] typed: [bold"
    app._meter(-30.0, 1.0, True, True, "[/] \\")  # markup in typed text is shown as typed
    app._handle_line(NORMAL)
    assert "llasm›" in out.getvalue()


# --- the server's JSON fields -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url():
    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import ServeSettings, close_server, load_server

    settings_ = ServeSettings(parallel=2, queue=8, n_ctx=512, max_audio=5.0, max_body=1 << 20)
    srv = load_server(DEFAULT, settings_, backend="onnx")  # no timing of every backend: the requests are text
    try:
        with ServerThread(srv) as st_:
            yield st_.url
    finally:
        close_server(srv)


def post(url: str, body: bytes) -> tuple[int, dict]:
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def ask_normal(url: str) -> str:
    status, reply = post(url, json.dumps({"messages": [{"role": "user", "content": NORMAL}], "max_tokens": 2,
                                          "temperature": 0}).encode())
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]


def test_lone_surrogates_in_a_request_are_answered(server_url):
    """The issue's `"content": "\\ud800"` (valid JSON): answered, not a 500."""
    body = b'{"messages": [{"role": "user", "content": "\\ud800 hi \\udfff"}], "max_tokens": 2, "stop": "\\ud83d"}'
    status, reply = post(server_url, body)
    assert status == 200, reply


@fuzz(150)
@given(content=st.one_of(ANY_TEXT, st.lists(st.builds(lambda t: {"type": "text", "text": t}, ANY_TEXT), max_size=2)),
       fields=st.fixed_dictionaries({}, optional={k: JSON_VALUE for k in (
           "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop")}),
       role=st.sampled_from(["user", "system", "assistant", "\ud800"]))
def test_fuzzed_requests_get_200_or_400_and_the_server_goes_on(server_url, content, fields, role):
    fields = dict(fields)
    messages = [{"role": role, "content": content}] + ([] if role == "user" else [{"role": "user", "content": "hi"}])
    if "max_tokens" not in fields and "max_completion_tokens" not in fields:
        fields["max_tokens"] = 2
    body = json.dumps({"messages": messages, **fields}).encode()  # ensure_ascii: a surrogate as "\udXXX"
    status, reply = post(server_url, body)
    assert status in (200, 400), (status, reply)
    if status == 400:
        err = reply["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error", reply
        assert err["param"] is None or err["param"].split(".")[0].split("[")[0] in {*fields, "messages"}, reply
    else:
        assert isinstance(reply["choices"][0]["message"]["content"], str)


def test_the_server_still_answers_after_the_fuzzing(server_url):
    assert isinstance(ask_normal(server_url), str)


# --- a few real processes: the issue's cases ----------------------------------------------------


def run(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLASM_THREADS"} | {"LLASM_MODEL": "demo"}
    return subprocess.run([sys.executable, "-m", "llasm_cli", *args], input=stdin, capture_output=True, timeout=300,
                          env=env)


def test_issue_ask_text_in_latin1_is_answered_with_a_note():
    res = run("ask", "--text", b"caf\xe9 \xff", "--max-tokens", "4")
    err = res.stderr.decode().splitlines()
    assert res.returncode == 0, res.stderr
    assert err == ["note: --text is not valid UTF-8 text: 2 invalid characters (bytes that are not UTF-8, or lone "
                   f"surrogates) replaced by {REPLACEMENT}"], err
    assert res.stdout.strip()


@pytest.mark.parametrize("args,line", [
    (["--temperature", "nan"], "error: --temperature must be a number from 0 (greedy) to 2, got nan"),
    (["--ctx", "10"], "error: --ctx 10 is too small: this question's prompt takes"),
], ids=["temperature-nan", "ctx-10"])
def test_issue_bad_numbers_are_one_line_and_exit_2(args, line):
    res = run("ask", str(QUESTION_WAV), *args)
    err = res.stderr.decode().splitlines()
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith(line), (res.returncode, err)


def test_issue_piped_bad_bytes_do_not_end_the_chat():
    res = run("chat", "--no-mic", "--backend", "onnx", "--max-tokens", "3", stdin=b"bad \xff\xfe text\n" + NORMAL.encode() + b"\n")
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()
    assert "note: the line is not valid UTF-8 text: 2 invalid characters" in out
    assert out.count("llasm›") == 2 and "bye" in out, out


def test_gpu_layers_on_a_build_without_gpu_says_so_once_and_answers():
    """--gpu-layers on a llama.cpp that cannot offload (a CPU build) runs on the CPU, as before, and says so in
    one line instead of leaving a user to think the GPU is busy; --gpu-layers 0 says nothing."""
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp is a GPU build")
    wav = str(QUESTION_WAV.with_name("what_is_seven_plus_five.wav"))
    res = run_llasm("ask", wav, "--gpu-layers", "-1")
    assert res.returncode == 0 and res.stdout.strip() == "twelve", res
    notes = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: --gpu-layers -1: ") and "without GPU support" in notes[0], notes
    quiet = run_llasm("ask", wav)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "twelve" and not quiet.stderr.strip(), quiet
