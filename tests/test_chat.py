"""`llasm chat` driven through a real pseudo-terminal: typed turns, files, commands, Ctrl-C, mic."""

from __future__ import annotations

import json
import subprocess
import time

import soundfile as sf

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE
from tests.helpers import espeak, finish, spawn, speech_bounds

ANSWER_DONE = r"· \d+ tokens?"  # near the end of the --stats line printed after every answer
TOL = 0.3


def test_typed_file_reset_save(swiglu, question_wav, tmp_path):
    _, bundle = swiglu
    child = spawn(bundle, "--no-mic", "--max-tokens", "6")
    child.expect("input: keyboard")
    child.expect("you›")
    child.sendline("hello, who are you?")
    child.expect("llasm›")
    child.expect(r"audio 0\.0 s .* first token \d+ ms")
    child.expect("you›")
    child.sendline(f"/file {question_wav} please answer")
    child.expect(r"please answer .*\[file question\.wav\]")
    child.expect(r"audio 1\.\d s · encode \d+ ms")
    child.expect("you›")
    transcript = tmp_path / "chat.json"
    child.sendline(f"/save {transcript}")
    child.expect("saved")
    child.sendline("/file /no/such/file.wav")
    child.expect("error:.*not found")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.sendline("/system You are terse.")
    child.expect("system prompt set")
    child.sendline("/bogus")
    child.expect("unknown command /bogus")
    child.sendeof()
    finish(child)

    data = json.loads(transcript.read_text())
    assert [t["role"] for t in data["turns"]] == ["user", "assistant", "user", "assistant"]
    assert data["turns"][0]["content"] == "hello, who are you?"
    assert data["turns"][2]["content"] == "please answer\n<|audio|>"
    clip, rate = sf.read(transcript.parent / data["turns"][2]["audio"])
    assert rate == SAMPLE_RATE and clip.size == load_audio(question_wav).size


def test_ctrl_c_stops_the_answer_not_the_chat(workdir, tmp_path):
    """A long answer (32k context, no token limit) is stopped by Ctrl-C; the chat goes on."""
    from llasm_export.bundle import export_bundle
    from llasm_finetune.tiny import build_tiny

    bundle = tmp_path / "long"
    export_bundle(build_tiny(tmp_path / "ck", seed=3, max_positions=32768), bundle, ("f16",))
    child = spawn(bundle, "--no-mic", "--ctx", "32768", "--max-tokens", "30000", "--ignore-eos")
    child.expect("you›")
    child.sendline("tell me everything")
    child.expect("llasm›")
    time.sleep(1.0)
    child.sendintr()
    child.expect(r"\(interrupted\)")
    child.expect("you›")
    child.sendline("/save " + str(tmp_path / "t.json"))
    child.expect("saved")
    child.expect("you›")  # back at the prompt: a Ctrl-C sent before it is read while the chat is busy
    child.sendintr()  # idle: quits
    finish(child)
    turns = json.loads((tmp_path / "t.json").read_text())["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert len(turns[1]["content"]) > 0


def test_mic_turn_through_pulseaudio(pulse, swiglu, workdir, tmp_path):
    """Speech played into the null sink is endpointed by `llasm chat --mic` and answered."""
    _, bundle = swiglu
    wav = espeak("what is seven plus five", tmp_path / "say.wav")
    truth, rate = sf.read(wav, dtype="float32")
    true_start, true_end = speech_bounds(truth, rate)
    child = spawn(bundle, "--mic", "--device", "pulse", "--max-tokens", "6", env=pulse)
    child.expect(r"input: microphone \(pulse\)")
    time.sleep(1.0)  # the stream is open and listening
    subprocess.run(["paplay", str(wav)], env=pulse, check=True, timeout=30)
    child.expect(r"\[(\d+\.\d) s of speech\]", timeout=30)
    child.expect("llasm›")
    child.expect(ANSWER_DONE)
    transcript = tmp_path / "mic.json"
    child.send(f"/save {transcript}\r")
    child.expect("saved")
    # listening again (keys read one by one): a Ctrl-D sent while the command still ran is the line editor's
    # end of input, which a read in key-by-key mode never sees (a CI run timed out waiting for "bye")
    child.expect("listening")
    child.sendcontrol("d")
    finish(child)

    data = json.loads(transcript.read_text())
    clip, _ = sf.read(transcript.parent / data["turns"][0]["audio"], dtype="float32")
    start, end = speech_bounds(clip)
    # the turn holds 0.3 s of pre-roll, the whole utterance, and at most 0.2 s of post-roll
    assert abs(start - 0.3) <= TOL, start
    assert abs((end - start) - (true_end - true_start)) <= TOL, (end - start, true_end - true_start)
    assert clip.size / SAMPLE_RATE - end <= 0.2 + TOL


def test_file_without_speech_is_not_sent(swiglu, tmp_path):
    """A recording with no speech in it is skipped with a notice; the chat goes on."""
    import numpy as np

    _, bundle = swiglu
    tone = tmp_path / "tone.wav"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sf.write(tone, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SAMPLE_RATE)
    child = spawn(bundle, "--no-mic", "--max-tokens", "3")
    child.expect("you›")
    child.sendline(f"/file {tone}")
    child.expect("not sent:.*no speech detected")
    child.expect("you›")
    child.sendline("hello")
    child.expect("llasm›")
    child.expect(ANSWER_DONE)
    child.sendeof()
    finish(child)


def test_a_ctrl_d_typed_while_a_command_ran_ends_the_chat():
    """Between two listens the terminal edits lines, and a Ctrl-D typed then is its end of input; once keys are
    read one by one it arrives as a NUL and must still end the chat. A NUL typed later (Ctrl-Space) does not."""
    import os
    import pty

    from llasm_cli.terminal.keys import KeyReader

    master, slave = pty.openpty()
    try:
        keys = KeyReader()
        keys.fd = slave
        os.write(master, b"\x04")  # typed while the line editor had the terminal
        time.sleep(0.1)
        with keys:
            assert keys.poll(1.0) is KeyReader.EOF
        with keys:
            os.write(master, b"hi\r")
            assert keys.poll(1.0) == "hi"
            os.write(master, b"\x00")
            assert keys.poll(1.0) is None and keys.buffer == ""
    finally:
        os.close(master)
        os.close(slave)
