"""Pure functions, checked on numbers and content: the sampler, the KV-cache prefix match, prompt
rendering and splitting, the GGUF header parser and the audio front end's counting rules.

Nothing here loads a model or starts a process; the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import gguf
import numpy as np
import pytest

from llasm_cli.audio.geometry import N_SAMPLES, SAMPLE_RATE, audio_token_count, chunked_positions, split_windows
from llasm_cli.audio.mel import log_mel_spectrogram, mel_filters
from llasm_cli.errors import LlasmError, ModelFileError, TemplateError
from llasm_cli.formats.gguf_check import read_gguf
from llasm_cli.llm.engine import Sampler, Sampling
from llasm_cli.llm.kv import common_prefix
from llasm_cli.prompt import (
    _STAND_IN,
    AUDIO,
    AUDIO_PLACEHOLDER,
    DEFAULT_TEMPLATE,
    Message,
    Piece,
    dialogue_pieces,
    pieces_to_segments,
    prompt_pieces,
    render,
    split_text,
    tokenize_run,
)

# --- sampler ---------------------------------------------------------------------------------

PROBS = np.array([0.15, 0.5, 0.05, 0.3])  # id 1 first, then 3, 0, 2: the ids are not in rank order
LOGITS = np.log(PROBS).astype(np.float32)


def draws(sampling: Sampling, logits: np.ndarray, n: int) -> np.ndarray:
    sampler = Sampler(sampling)
    return np.array([sampler(logits) for _ in range(n)])


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def test_temperature_zero_is_argmax_whatever_the_other_settings():
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.normal(size=37).astype(np.float32)
        for temp in (0.0, -1.0):
            s = Sampler(Sampling(temperature=temp, top_p=0.01, top_k=3, seed=7))
            assert s(logits) == int(np.argmax(logits))
    tie = np.array([0.0, 2.0, 2.0, 1.0], dtype=np.float32)
    assert Sampler(Sampling(temperature=0))(tie) == 1  # the first of equal maxima


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sampler_picks_a_nan_or_inf_wherever_one_is(temperature):
    """The decode loop checks only the sampled token's logit for corruption: any NaN, or +inf, among
    the logits must be what the sampler returns."""
    for bad, at in ((np.nan, 401), (np.inf, 17)):
        logits = np.random.default_rng(3).normal(size=602).astype(np.float32)
        logits[at] = bad
        assert Sampler(Sampling(temperature=temperature, seed=1))(logits) == at
    both = np.zeros(602, np.float32)
    both[[5, 9]] = np.inf, np.nan
    assert not np.isfinite(both[Sampler(Sampling(temperature=temperature))(both)])


def test_top_k_one_is_always_argmax():
    rng = np.random.default_rng(2)
    s = Sampler(Sampling(temperature=5.0, top_p=0.999, top_k=1, seed=3))
    for _ in range(200):
        logits = rng.normal(size=50).astype(np.float32)
        assert s(logits) == int(np.argmax(logits))


def test_top_k_keeps_the_k_largest():
    ids = draws(Sampling(temperature=1.0, top_p=0.999, top_k=2, seed=4), LOGITS, 3000)
    assert set(ids.tolist()) == {1, 3}
    # renormalised over the two: 0.5 / 0.8 and 0.3 / 0.8
    assert abs(np.mean(ids == 1) - 0.625) < 0.03


@pytest.mark.parametrize("top_p, kept", [(0.4, {1}), (0.7, {1, 3}), (0.85, {1, 3, 0}), (0.99, {1, 3, 0, 2})])
def test_top_p_cuts_the_tail(top_p, kept):
    """The smallest set of most likely ids whose probability reaches top_p, every one of them drawn."""
    ids = draws(Sampling(temperature=1.0, top_p=top_p, top_k=0, seed=5), LOGITS, 4000)
    assert set(ids.tolist()) == kept


def test_frequencies_follow_the_softmax():
    n = 10000
    ids = draws(Sampling(temperature=1.0, top_p=0.99, top_k=0, seed=6), LOGITS, n)
    freq = np.bincount(ids, minlength=4) / n
    np.testing.assert_allclose(freq, PROBS, atol=0.02)


def test_frequencies_follow_the_tempered_softmax():
    n = 10000
    ids = draws(Sampling(temperature=0.5, top_p=0.9999, top_k=0, seed=7), LOGITS, n)
    freq = np.bincount(ids, minlength=4) / n
    np.testing.assert_allclose(freq, softmax(LOGITS.astype(np.float64) / 0.5), atol=0.02)


def test_top_p_renormalises_what_it_keeps():
    n = 10000
    ids = draws(Sampling(temperature=1.0, top_p=0.85, top_k=0, seed=8), LOGITS, n)
    freq = np.bincount(ids, minlength=4) / n
    np.testing.assert_allclose(freq, [0.15 / 0.95, 0.5 / 0.95, 0.0, 0.3 / 0.95], atol=0.02)


def test_same_seed_same_sequence_other_seed_other_sequence():
    rng = np.random.default_rng(9)
    logits = [rng.normal(size=20).astype(np.float32) for _ in range(100)]

    def run(seed: int) -> list[int]:
        s = Sampler(Sampling(temperature=1.0, top_p=0.9, top_k=10, seed=seed))
        return [s(x) for x in logits]

    assert run(11) == run(11)
    assert run(11) != run(12)
    a, b = Sampler(Sampling(temperature=1.0, seed=13)), Sampler(Sampling(temperature=1.0, seed=13))
    seq_a = [a(x) for x in logits]
    seq_b = []
    for x in logits:  # interleaved with another sampler: each owns its random state
        seq_b.append(b(x))
        Sampler(Sampling(temperature=1.0, seed=99))(x)
    assert seq_a == seq_b


# --- common_prefix ---------------------------------------------------------------------------


def emb(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def test_common_prefix_of_token_lists_cut_anywhere():
    assert common_prefix([[1, 2, 3, 4]], [[1, 2], [3, 4]]) == 4
    assert common_prefix([[1], [2], [3, 4, 5]], [[1, 2, 3], [4, 9]]) == 4
    assert common_prefix([[1, 2, 3]], [[1, 2, 3, 4, 5]]) == 3
    assert common_prefix([[1, 2, 3, 4, 5]], [[1, 2, 3]]) == 3
    assert common_prefix([[5, 2]], [[1, 2]]) == 0
    assert common_prefix([], [[1, 2]]) == 0
    assert common_prefix([[1, 2]], []) == 0
    assert common_prefix([[], [1, 2], []], [[1], [], [2]]) == 2


def test_common_prefix_of_embeddings_is_whole_arrays_only():
    e = emb(5)
    assert common_prefix([e], [e]) == 5
    assert common_prefix([e], [e.copy()]) == 5  # equal rows, another array
    other = e.copy()
    other[4, 7] += 1.0
    assert common_prefix([e], [other]) == 0  # one value differs
    assert common_prefix([e], [e[:3]]) == 0  # a different shape
    assert common_prefix([e, [1, 2]], [e.copy(), [1, 3]]) == 6


def test_common_prefix_of_mixed_segments():
    e, f = emb(4, 1), emb(3, 2)
    a = [[1, 2], e, [7, 8, 9], f, [4]]
    assert common_prefix(a, [[1], [2], e.copy(), [7, 8], [9], f.copy(), [4, 5]]) == 2 + 4 + 3 + 3 + 1
    assert common_prefix(a, [[1, 2], e, [7, 8, 0]]) == 2 + 4 + 2
    assert common_prefix(a, [[1, 2], f]) == 2  # another clip in the same place
    assert common_prefix(a, [[1, 2, 3], e]) == 2  # a token where the clip was
    assert common_prefix(a, [[1], e]) == 1  # the clip comes after a different number of tokens
    assert common_prefix([[1, 2], e], [[1, 2], [5]]) == 2  # tokens where the clip was


# --- prompts ---------------------------------------------------------------------------------

CONTROL = {"<s>": 300, "</s>": 301, "<|im_start|>": 302, "<|im_end|>": 303, "<au_start>": 304, "<au_end>": 305}
BOS, EOS, AU_START, AU_END = 300, 301, 304, 305
MERGED = 400  # "ab" is one token: joined and split tokenization of "a" + "b" differ
CONTROL_RE = re.compile("(" + "|".join(map(re.escape, CONTROL)) + ")")
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tok(text: str, special: bool) -> list[int]:
    """Bytes as ids, "ab" as one id, and control tokens parsed only with ``special``."""
    ids: list[int] = []
    for part in CONTROL_RE.split(text) if special else [text]:
        if special and part in CONTROL:
            ids.append(CONTROL[part])
            continue
        data, i = part.encode(), 0
        while i < len(data):
            if data[i : i + 2] == b"ab":
                ids.append(MERGED)
                i += 2
            else:
                ids.append(data[i])
                i += 1
    return ids


def b(text: str) -> list[int]:
    return list(text.encode())


def kinds(pieces: list[Piece]) -> list[tuple]:
    return [(p.kind, p.text, p.index, p.ids) for p in pieces]


def test_tokenizer_of_these_tests():
    assert tok("<s>ab</s>", True) == [BOS, MERGED, EOS]
    assert tok("<s>ab", False) == [*b("<s>"), MERGED]


def test_render_default_template():
    msgs = [Message("system", "S"), Message("user", "U"), Message("assistant", "A"), Message("user", "V")]
    assert render(DEFAULT_TEMPLATE, msgs, "<s>", "</s>") == "S\nUSER: U\nASSISTANT:A</s>\nUSER: V\nASSISTANT:"
    assert render(DEFAULT_TEMPLATE, msgs[:2], "<s>", "</s>", add_generation_prompt=False) == "S\nUSER: U\n"


def test_render_chatml_template():
    msgs = [Message("system", "be brief"), Message("user", "hi")]
    assert render(CHATML, msgs, "", "<|im_end|>") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_gives_the_template_its_tokens_and_helpers():
    template = "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}|{{ strftime_now('%Y') }}"
    assert render(template, [Message("user", "x")], "<s>", "</s>") == f"<s>x</s>|{datetime.now().year}"


def test_template_errors_are_template_errors():
    with pytest.raises(TemplateError, match="only user and assistant") as info:
        render("{{ raise_exception('only user and assistant') }}", [Message("user", "x")], "", "")
    assert isinstance(info.value, LlasmError) and info.value.exit_code == 9
    for broken in ("{% for m in messages %}", "{{ nope() }}", "{% if %}"):
        with pytest.raises(TemplateError, match="the chat template failed"):
            render(broken, [Message("user", "x")], "", "")
        with pytest.raises(TemplateError):
            prompt_pieces(broken, [Message("user", "x")], "</s>", True)


def test_split_text_cuts_at_eos_and_stand_ins():
    pieces = split_text("a</s>b" + _STAND_IN.format(12) + "c</s>", "</s>")
    assert kinds(pieces) == [
        ("text", "a", -1, []), ("eos", "", -1, []), ("text", "b", -1, []), ("answer", "", 12, []),
        ("text", "c", -1, []), ("eos", "", -1, []),
    ]
    assert kinds(split_text("</s></s>", "</s>")) == [("eos", "", -1, [])] * 2
    assert kinds(split_text("plain", "</s>")) == [("text", "plain", -1, [])]
    assert split_text("", "</s>") == []


def test_split_text_eos_is_literal_not_a_pattern():
    assert kinds(split_text("x<|endoftext|>y", "<|endoftext|>")) == [
        ("text", "x", -1, []), ("eos", "", -1, []), ("text", "y", -1, []),
    ]
    assert kinds(split_text("x|y", "<|endoftext|>")) == [("text", "x|y", -1, [])]
    assert kinds(split_text("a</s>", "")) == [("text", "a</s>", -1, [])]  # no EOS string, no cut


def test_prompt_pieces_default_template():
    msgs = [Message("system", "S"), Message("user", "U"), Message("assistant", "A"), Message("user", "V")]
    assert kinds(prompt_pieces(DEFAULT_TEMPLATE, msgs, "</s>", True)) == [
        ("content", "S", -1, []), ("text", "\nUSER: ", -1, []), ("content", "U", -1, []),
        ("text", "\nASSISTANT:", -1, []), ("content", "A", -1, []), ("eos", "", -1, []),
        ("text", "\nUSER: ", -1, []), ("content", "V", -1, []), ("text", "\nASSISTANT:", -1, []),
    ]


def test_dialogue_pieces_keep_answers_with_their_message_number():
    msgs = [Message("system", "S"), Message("user", "U"), Message("assistant", "A</s>"), Message("user", "V")]
    assert kinds(dialogue_pieces(DEFAULT_TEMPLATE, msgs, "</s>", False)) == [
        ("content", "S", -1, []), ("text", "\nUSER: ", -1, []), ("content", "U", -1, []),
        ("text", "\nASSISTANT:", -1, []), ("answer", "A</s>", 2, []), ("eos", "", -1, []),
        ("text", "\nUSER: ", -1, []), ("content", "V", -1, []), ("text", "\n", -1, []),
    ]


def test_typed_control_token_text_stays_content():
    msgs = [Message.of("user", ["a</s>b <|im_end|> " + AUDIO_PLACEHOLDER])]
    pieces = prompt_pieces(CHATML, msgs, "<|im_end|>", True)
    # the template's own <|im_end|> is the EOS string here and is cut; the typed one is not
    assert kinds(pieces) == [
        ("text", "<|im_start|>user\n", -1, []), ("content", "a</s>b <|im_end|> " + AUDIO_PLACEHOLDER, -1, []),
        ("eos", "", -1, []), ("text", "\n<|im_start|>assistant\n", -1, []),
    ]


def test_bos_text_of_the_template_is_left_to_the_caller():
    template = "{{ bos_token }}" + CHATML
    pieces = prompt_pieces(template, [Message("user", "hi")], "</s>", False)
    assert "".join(p.text for p in pieces) == "<|im_start|>user\nhi<|im_end|>\n"


def test_audio_slots_are_numbered_across_messages():
    msgs = [
        Message("user", f"say {AUDIO_PLACEHOLDER} and {AUDIO_PLACEHOLDER}"),  # training data: placeholders
        Message("assistant", "ok"),
        Message.of("user", [AUDIO, "then", AUDIO]),
        Message.of("user", ["typed " + AUDIO_PLACEHOLDER]),  # typed text: never a slot
    ]
    pieces = prompt_pieces(CHATML, msgs, "</s>", True)
    assert [(p.kind, p.index) for p in pieces if p.kind == "audio"] == [("audio", 0), ("audio", 1), ("audio", 2),
                                                                         ("audio", 3)]
    contents = [p.text for p in pieces if p.kind == "content"]
    assert contents == ["say ", " and ", "ok", "then", "typed " + AUDIO_PLACEHOLDER]
    answers = dialogue_pieces(CHATML, msgs, "</s>", True)
    assert [p.index for p in answers if p.kind == "audio"] == [0, 1, 2, 3]
    assert [(p.text, p.index) for p in answers if p.kind == "answer"] == [("ok", 1)]


def test_tokenize_run_joins_ordinary_content_with_the_template_text():
    assert tokenize_run([Piece("text", "xa"), Piece("content", "b")], tok) == [ord("x"), MERGED]
    assert tokenize_run([Piece("text", "<|im_start|>a"), Piece("content", "b")], tok) == [302, MERGED]
    assert tokenize_run([], tok) == []
    assert tokenize_run([Piece("content", "")], tok) == []


def test_tokenize_run_keeps_control_token_content_literal():
    run = [Piece("text", "<|im_start|>a"), Piece("content", "b</s>"), Piece("text", "<|im_end|>")]
    assert tokenize_run(run, tok) == [302, ord("a"), *b("b</s>"), 303]  # piece by piece: no "ab" across


def test_pieces_to_segments_chatml_with_audio_history_and_typed_eos():
    c0, c1 = emb(3, 3), emb(2, 4)
    msgs = [
        Message.of("user", ["hi ", AUDIO], [c0]),
        Message.of("assistant", ["ok"], tokens=[7, 8]),  # an answer fed back as the ids generated
        Message.of("user", [AUDIO, "</s>"], [c1]),
    ]
    pieces = prompt_pieces(CHATML, msgs, "</s>", True)
    segs = pieces_to_segments(pieces, tok, [c0, c1], BOS, EOS, AU_START, AU_END)
    assert len(segs) == 5 and segs[1] is c0 and segs[3] is c1
    assert segs[0] == [BOS, 302, *b("user\nhi "), AU_START]
    assert segs[2] == [AU_END, 303, 10, 302, *b("assistant\n"), 7, 8, 303, 10, 302, *b("user\n"), AU_START]
    assert segs[4] == [AU_END, *b("</s>"), 303, 10, 302, *b("assistant\n")]
    assert EOS not in segs[4]


def test_pieces_to_segments_eos_answer_and_no_bos():
    msgs = [Message("user", "q"), Message("assistant", "ab<s>")]
    pieces = dialogue_pieces(DEFAULT_TEMPLATE, msgs, "</s>", False)
    segs = pieces_to_segments(pieces, tok, [], None, EOS, AU_START, AU_END)
    assert segs == [[*b("USER: q\nASSISTANT:"), MERGED, *b("<s>"), EOS, 10]]  # the answer is literal


def test_pieces_to_segments_needs_a_clip_per_audio_piece():
    with pytest.raises(ValueError, match="audio piece 1 but 1 clips"):
        pieces_to_segments([Piece("audio", index=0), Piece("audio", index=1)], tok, [emb(1)], None, EOS, 1, 2)
    segs = pieces_to_segments([Piece("audio", index=0)], tok, [emb(2)], None, EOS, AU_START, AU_END)
    assert segs[0] == [AU_START] and segs[1].shape == (2, 8) and segs[2] == [AU_END]


# --- GGUF header -----------------------------------------------------------------------------


@pytest.fixture
def small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("t.u32", 7)
    w.add_int64("t.i64", -5)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.flag", True)
    w.add_string("t.name", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.words", ["a", "bb", "", "dddd"])
    w.add_float64("t.after", 2.25)  # read correctly only if the string array was skipped exactly
    w.add_array("t.floats", [0.5, 1.5])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.ones((2, 3, 8), dtype=np.float16))
    q = gguf.quants.quantize(np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 64), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("c.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_gguf_fields_and_types(small_gguf):
    info = read_gguf(small_gguf)
    assert info.fields == {
        "general.architecture": "llama", "t.u32": 7, "t.i64": -5, "t.f32": 0.5, "t.flag": True, "t.name": "héllo",
        "t.ints": [1, 2, 3], "t.words": 4, "t.after": 2.25, "t.floats": [0.5, 1.5],
    }
    assert info.kv_types == {
        "general.architecture": "STRING", "t.u32": "UINT32", "t.i64": "INT64", "t.f32": "FLOAT32", "t.flag": "BOOL",
        "t.name": "STRING", "t.ints": "ARRAY[INT32]", "t.words": "ARRAY[STRING]", "t.after": "FLOAT64",
        "t.floats": "ARRAY[FLOAT32]",
    }


def test_read_gguf_tensors_in_numpy_order(small_gguf):
    info = read_gguf(small_gguf)
    assert info.tensors == {"a.weight": (3, 4), "b.weight": (2, 3, 8), "c.weight": (3, 64)}
    assert info.types == {"a.weight": "F32", "b.weight": "F16", "c.weight": "Q8_0"}
    assert list(info.tensors) == ["a.weight", "b.weight", "c.weight"]
    reader = gguf.GGUFReader(small_gguf)  # the reference reader agrees (it lists ggml order)
    assert {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors} == info.tensors


def test_read_gguf_with_a_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(64)
    w.add_tensor("x", np.ones(3, dtype=np.float32))
    w.add_tensor("y", np.ones((2, 5), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_gguf(path)
    assert info.fields["general.alignment"] == 64 and info.kv_types["general.alignment"] == "UINT32"
    assert info.tensors == {"x": (3,), "y": (2, 5)}


def test_read_gguf_refuses_a_truncated_file(small_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(small_gguf.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="cut.gguf"):
        read_gguf(cut)


# --- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, k, want",
    [
        (0, 1, 1), (1, 1, 1), (320, 1, 1), (321, 1, 2), (16000, 1, 50), (N_SAMPLES, 1, 1500), (N_SAMPLES + 1, 1, 1500),
        (1600, 5, 1), (1601, 5, 2), (16000, 5, 10), (N_SAMPLES, 5, 300), (10 * N_SAMPLES, 5, 300),
        (N_SAMPLES, 4, 375), (N_SAMPLES, 7, 214), (N_SAMPLES - 2240, 7, 214), (2240, 7, 1), (2241, 7, 2),
    ],
)
def test_audio_token_count(n, k, want):
    assert audio_token_count(n, k) == want


def test_audio_token_count_is_the_ceil_rule_below_the_cap():
    for k in (1, 2, 3, 4, 5, 8):
        for n in range(0, N_SAMPLES + 5000, 997):
            assert audio_token_count(n, k) == min(1500 // k, max(1, math.ceil(n / (320 * k))))


def test_chunked_clip_takes_as_many_positions_as_its_unpadded_windows():
    # the runtime sizes a prompt by the window count, however the clip will be encoded
    for k, chunk, context in ((5, 0.5, 1.0), (5, 1.0, 1.0), (5, 1.0, 2.0), (10, 1.0, 1.0), (3, 0.6, 1.2)):
        for n in [*range(1, 50000, 313), *range(N_SAMPLES - 4000, N_SAMPLES + 4000, 211), 2 * N_SAMPLES + 1]:
            windows = sum(audio_token_count(w.size, k) for w in split_windows(np.zeros(n, np.uint8)))
            assert chunked_positions(n, chunk, context, k) == windows, (k, chunk, context, n)


def test_split_windows():
    assert split_windows(np.zeros(0, np.float32)) == []
    x = np.arange(2 * N_SAMPLES + 123, dtype=np.float32)
    windows = split_windows(x)
    assert [w.size for w in windows] == [N_SAMPLES, N_SAMPLES, 123]
    np.testing.assert_array_equal(np.concatenate(windows), x)
    assert [w.size for w in split_windows(np.ones(2 * N_SAMPLES, np.float32))] == [N_SAMPLES, N_SAMPLES]
    assert [w.size for w in split_windows(np.ones(5, np.float32))] == [5]


def test_log_mel_of_a_sine():
    t = np.arange(SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    mel = log_mel_spectrogram(sine)
    assert mel.shape == (80, 3000) and mel.dtype == np.float32 and np.isfinite(mel).all()
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # clamped 8 decades below the peak, then / 4
    # frames inside the tone peak in the mel band around 1 kHz (FFT bin 1000 / 40 = 25)
    band = int(np.argmax(mel_filters(80)[:, 25]))
    assert set(np.argmax(mel[:, 10:90], axis=0).tolist()) <= {band - 1, band, band + 1}
    # the zeros behind the second of audio sit at the clamp floor
    np.testing.assert_allclose(mel[:, 200:], mel.max() - 2.0, atol=1e-6)
    assert log_mel_spectrogram(sine, n_mels=128).shape == (128, 3000)


def test_log_mel_of_short_and_too_long_windows():
    assert log_mel_spectrogram(np.full(3, 0.1, np.float32)).shape == (80, 3000)
    with pytest.raises(ValueError, match="at most"):
        log_mel_spectrogram(np.zeros(N_SAMPLES + 1, np.float32))


def test_top_p_one_keeps_every_token():
    """The softmax's cumulative sum can end just below 1.0: top_p=1 must still keep every token."""
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    s = Sampler(Sampling(temperature=1.0, top_p=1.0, top_k=0, seed=0))
    ids = [s(logits) for _ in range(3000)]
    assert set(ids) == {0, 1, 2}
    counts = np.bincount(ids, minlength=3) / len(ids)
    assert abs(counts[2] - 0.665) < 0.03
