"""Give a published LLM ears: train a speech adaptor by distillation, the LLM frozen and untouched.

    python -m llasm_finetune.distill_data runs/distill-data          # questions, teacher answers, speech
    python -m llasm_finetune.distill runs/distill-data runs/distill --minutes 60 [--resume]

Teacher: the frozen LLM reading the typed question. Student: the same LLM reading the spoken
question through the audio tower (frozen Whisper encoder + stack-swiglu adaptor) between two
learned boundary rows. The loss is the KL divergence from the teacher's next-token distributions
(top-k, renormalised) over the teacher's own answer, so speaking a question comes to mean typing
it. Only the adaptor and the two boundary rows train; the LLM's GGUF stays byte for byte as
published, and the bundle points at it instead of copying it.

Features are the chunked (streaming) encoder input the runtime computes while the user speaks,
so the model is trained on exactly what it will see. The schedule runs on a wall-clock budget
(cosine over ``--minutes``); ``--resume`` continues a run that was cut off.

(Over 400 lines: a recipe read top to bottom, set-up to saved bundle.)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llasm_cli.audio.decode import load_audio
from llasm_cli.files import atomic_folder, atomic_path
from llasm_cli.model import AudioTower, CheckpointMeta, save_tower

from .distill_data import (
    CLIPS_FILE,
    QUESTIONS_FILE,
    SYSTEM_PROMPT,
    TEACHER_FILE,
    WORD_CLIPS_FILE,
    WORDS_FILE,
    PromptFormat,
    read_jsonl,
    smollm2_gguf,
)
from .init import fresh_tower

STATE_FILE = "state.pt"
FEATURES_FILE = "features.npz"
TOWER_DIR = "tower"
LOG_FILE = "log.jsonl"
DEFAULT_NAME = "smollm2-135m-instruct-ears"


@dataclass
class DistillConfig:
    minutes: float = 60.0  # wall-clock training budget (features excluded)
    batch: int = 8
    lr: float = 1e-3
    warmup_steps: int = 50
    hidden_dim: int = 2048
    stack_factor: int = 5  # 10 audio positions per second: room for CTC's one token per position
    align_minutes: float = 15.0  # the CTC warm-up before the LLM is involved (0: none)
    align_steps: int = 0  # >0: the warm-up is exactly this many steps instead (reproducible, for tests)
    align_batch: int = 32
    align_lr: float = 2e-3
    align_weight: float = 0.2  # the CTC loss kept beside the KL afterwards
    chunk_seconds: float = 1.0
    context_seconds: float = 2.0
    eval_every_minutes: float = 15.0
    eval_clips: int = 120
    save_every_minutes: float = 5.0
    seed: int = 0
    threads: int = 2
    max_answer: int = 24  # answer tokens trained on (the teacher's targets hold up to 40)
    repeat_weight: float = 0.5  # the repeat-the-question warm-up's share of the loss (0: KL alone)


# --- data --------------------------------------------------------------------------------------


def compute_features(tower: AudioTower, data: Path, clips: list[dict], out: Path, threads: int) -> dict[str, np.ndarray]:
    """Chunked encoder frames of every clip (float16), computed once and kept in ``out``; clips added
    to the data later (the warm-up's words) are computed alone and merged in.

    The frozen encoder runs in ONNX Runtime, float32: the very numbers the runtime's onnx backend
    computes (and 2-5x faster than PyTorch float32 on these CPUs).
    """
    path = out / FEATURES_FILE
    feats: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            feats = {k: z[k] for k in z.files}
    todo = [c for c in clips if c["id"] not in feats]
    if not todo:
        return feats
    import onnxruntime as ort
    from llasm_export.onnx_tower import export_graph

    from llasm_cli.audio.geometry import chunk_spans
    from llasm_cli.audio.mel import chunk_mel

    graph = out / "encoder-frames.onnx"
    export_graph(tower, graph, frames=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
    cfg, k = tower.cfg, tower.cfg.stack_factor
    t0 = time.time()
    for i, c in enumerate(todo):
        samples, parts = load_audio(data / c["audio"]), []
        for span in chunk_spans(samples.size, cfg.chunk_seconds, cfg.context_seconds, k):
            frames = sess.run(["frames"], {sess.get_inputs()[0].name: chunk_mel(samples, span, tower.n_mels)[None]})[0][0]
            parts.append(frames[span.skip * k : (span.skip + span.keep) * k])
        feats[c["id"]] = np.concatenate(parts).astype(np.float16)
        if (i + 1) % 500 == 0 or i + 1 == len(todo):
            print(f"features {i + 1}/{len(todo)} ({(i + 1) / (time.time() - t0):.1f} clips/s)", flush=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **feats)
    return feats


@dataclass
class Example:
    clip: str
    feats: np.ndarray  # (n * k, d) encoder frames
    answer: list[int]  # teacher's greedy answer tokens (none for the warm-up's words)
    top_ids: np.ndarray | None  # (len(answer), K)
    top_logp: np.ndarray | None
    transcript: list[int] = None  # the question's own tokens + end of turn: the warm-up's target


def examples(clips: list[dict], questions: dict[str, dict], teacher, feats: dict[str, np.ndarray],
             tokenize=None, eos: int | None = None) -> list[Example]:
    out = []
    for c in clips:
        q = questions[c["question"]]
        if not q["answer_ids"]:
            continue
        transcript = tokenize(q["text"], False) + [eos] if tokenize else None
        out.append(Example(c["id"], feats[c["id"]], q["answer_ids"], teacher[f"{q['id']}/ids"],
                           teacher[f"{q['id']}/logp"].astype(np.float32), transcript))
    return out


def word_clips(data: Path) -> list[dict]:
    """The clips of the warm-up's extra speech (distill_data's words and spoken answers), if any."""
    return read_jsonl(data / WORD_CLIPS_FILE) if (data / WORD_CLIPS_FILE).is_file() else []


def word_examples(data: Path, clips: list[dict], feats: dict[str, np.ndarray], tokenize, eos: int) -> list[Example]:
    """Those clips as examples: transcripts only."""
    if not clips:
        return []
    texts = {w["id"]: w["text"] for w in read_jsonl(data / WORDS_FILE)}
    return [Example(c["id"], feats[c["id"]], [], None, None, tokenize(texts[c["question"]], False) + [eos])
            for c in clips]


# --- the student -------------------------------------------------------------------------------


class Student(torch.nn.Module):
    """Frozen LLM + trainable adaptor and boundary rows: builds the input embeddings and scores them.

    The prompt before the audio is the same for every example, so its keys and values are computed
    once and shared; logits are computed only where an answer token is predicted (the vocabulary
    projection is a fifth of the LLM). ``max_answer`` keeps the first answer tokens: what a
    listener hears first, and most of the cost.
    """

    def __init__(self, llm, tower: AudioTower, prefix: list[int], suffix: list[int], max_answer: int = 0) -> None:
        super().__init__()
        self.llm, self.tower, self.max_answer = llm, tower, max_answer
        emb = llm.get_input_embeddings().weight
        self.register_buffer("suffix", emb[suffix].detach().clone(), persistent=False)
        with torch.no_grad():
            self.prefix_cache = llm(inputs_embeds=emb[prefix][None], use_cache=True).past_key_values
        self.n_prefix = len(prefix)

    def answer(self, ex: Example) -> int:
        return min(len(ex.answer), self.max_answer) if self.max_answer else len(ex.answer)

    def hidden(self, seqs: list[torch.Tensor]) -> torch.Tensor:
        """The LLM's last hidden states for sequences that follow the shared prefix (right-padded)."""
        import copy

        width = max(q.shape[0] for q in seqs)
        x = torch.zeros(len(seqs), width, seqs[0].shape[1])
        mask = torch.zeros(len(seqs), width + self.n_prefix, dtype=torch.long)
        mask[:, : self.n_prefix] = 1
        for i, q in enumerate(seqs):
            x[i, : q.shape[0]] = q
            mask[i, self.n_prefix : self.n_prefix + q.shape[0]] = 1
        cache = copy.deepcopy(self.prefix_cache)
        cache.batch_repeat_interleave(len(seqs))
        return self.llm.model(inputs_embeds=x, attention_mask=mask, past_key_values=cache, use_cache=True)[0]

    def sequence(self, ex: Example) -> tuple[torch.Tensor, int]:
        """Input embeddings after the shared prefix, and the index whose output predicts the first answer token."""
        emb = self.llm.get_input_embeddings()
        audio = self.tower.adapt(torch.from_numpy(ex.feats.astype(np.float32))[None])[0]
        b = self.tower.adaptor.boundary
        ans = emb(torch.tensor(ex.answer[: self.answer(ex) - 1], dtype=torch.long))
        seq = torch.cat([b[:1], audio, b[1:], self.suffix, ans])
        return seq, 2 + audio.shape[0] + self.suffix.shape[0] - 1

    def forward(self, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(KL loss summed over answer tokens, top-1 agreements, answer tokens)."""
        seqs = [self.sequence(ex) for ex in batch]
        hidden = self.hidden([q for q, _ in seqs])
        rows = torch.cat([hidden[i, first : first + self.answer(ex)] for i, (ex, (_, first)) in enumerate(zip(batch, seqs))])
        logp_all = F.log_softmax(self.llm.lm_head(rows).float(), -1)
        loss, agree, n = hidden.new_zeros(()), 0, 0
        for ex in batch:
            m = self.answer(ex)
            lp, logp_all = logp_all[:m], logp_all[m:]
            ids = torch.from_numpy(ex.top_ids[:m].astype(np.int64))
            p = torch.softmax(torch.from_numpy(ex.top_logp[:m]), -1)  # teacher top-k, renormalised
            loss = loss + (p * (p.clamp_min(1e-12).log() - lp.gather(1, ids))).sum()
            agree += int((lp.argmax(-1) == ids[:, 0]).sum())
            n += m
        return loss, torch.tensor(agree), n


class Repeater(Student):
    """The warm-up that teaches the adaptor words: the same spoken question, then a typed request to
    repeat it, and cross-entropy on the question's own tokens. An LLM can only repeat the words it
    heard, so this carries what the answers' KL alone carries slowly (which question, not which kind)."""

    def __init__(self, llm, tower: AudioTower, prefix: list[int], request: list[int]) -> None:
        super().__init__(llm, tower, prefix, request)

    def answer(self, ex: Example) -> int:
        return len(ex.transcript)

    def sequence(self, ex: Example) -> tuple[torch.Tensor, int]:
        emb = self.llm.get_input_embeddings()
        audio = self.tower.adapt(torch.from_numpy(ex.feats.astype(np.float32))[None])[0]
        b = self.tower.adaptor.boundary
        said = emb(torch.tensor(ex.transcript[:-1], dtype=torch.long))
        return torch.cat([b[:1], audio, b[1:], self.suffix, said]), 2 + audio.shape[0] + self.suffix.shape[0] - 1

    def forward(self, batch: list[Example]) -> tuple[torch.Tensor, int]:
        seqs = [self.sequence(ex) for ex in batch]
        hidden = self.hidden([q for q, _ in seqs])
        rows = torch.cat([hidden[i, first : first + len(ex.transcript)] for i, (ex, (_, first)) in enumerate(zip(batch, seqs))])
        target = torch.tensor([t for ex in batch for t in ex.transcript])
        return F.cross_entropy(self.llm.lm_head(rows).float(), target, reduction="sum"), len(target)


class Aligner(torch.nn.Module):
    """The cheap warm-up that teaches the adaptor words before the LLM runs at all: CTC from each
    audio position to the question's tokens, scored by cosine against the LLM's own input-embedding
    rows (plus one learned blank row). An adaptor that passes it emits, where a word was said, a
    vector pointing where the LLM's embedding of that word points, at the embeddings' typical norm:
    text, as far as the LLM can tell. It costs a matmul, not an LLM pass, so it sees every clip many
    times in minutes. The vocabulary is the tokens the training text uses (the softmax over all
    49k rows would cost ten times as much and score words nobody says). With the warm-up's word
    lists that is still 20k rows, so training scores a batch's own tokens plus ``negatives`` others
    drawn at random (a sampled softmax); the read-out scores them all."""

    def __init__(self, tower: AudioTower, emb: torch.Tensor, vocab: list[int], negatives: int = 4096) -> None:
        super().__init__()
        self.tower, self.negatives = tower, negatives
        rows = emb[vocab].detach()
        self.register_buffer("rows", F.normalize(rows, dim=-1), persistent=False)
        self.norm = float(emb.norm(dim=-1).median())
        self.blank = torch.nn.Parameter(F.normalize(torch.randn(1, emb.shape[1]), dim=-1))
        self.scale = torch.nn.Parameter(torch.tensor(20.0))
        self.index = {t: i + 1 for i, t in enumerate(vocab)}  # 0: blank

    def targets(self, ex: Example) -> list[int]:
        return [self.index[t] for t in ex.transcript[:-1] if t in self.index]

    def logits(self, audio: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        table = torch.cat([F.normalize(self.blank, dim=-1), self.rows if rows is None else rows])
        return self.scale * F.normalize(audio, dim=-1) @ table.T

    def sampled(self, tgts: list[list[int]]) -> tuple[torch.Tensor | None, list[list[int]]]:
        """The rows a training step scores and the targets renumbered to them (all rows if few)."""
        n = self.rows.shape[0]
        if n <= self.negatives:
            return None, tgts
        used = torch.tensor(sorted({t for ts in tgts for t in ts}), dtype=torch.long)
        sel = torch.unique(torch.cat([used, torch.randint(1, n + 1, (self.negatives,))]))
        pos = {int(t): i + 1 for i, t in enumerate(sel)}
        return self.rows[sel - 1], [[pos[t] for t in ts] for ts in tgts]

    def forward(self, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(CTC loss per target token, norm loss per position)."""
        audio = [self.tower.adapt(torch.from_numpy(ex.feats.astype(np.float32))[None])[0] for ex in batch]
        width = max(a.shape[0] for a in audio)
        rows, tgts = self.sampled([self.targets(ex) for ex in batch])
        logp = torch.stack([F.pad(F.log_softmax(self.logits(a, rows), -1), (0, 0, 0, width - a.shape[0])) for a in audio], 1)
        loss = F.ctc_loss(logp, torch.tensor([t for ts in tgts for t in ts]), torch.tensor([a.shape[0] for a in audio]),
                          torch.tensor([len(ts) for ts in tgts]), blank=0, reduction="sum", zero_infinity=True)
        norms = torch.cat([a.norm(dim=-1) for a in audio]) / self.norm
        return loss / max(1, sum(len(ts) for ts in tgts)), ((norms - 1) ** 2).mean()

    def greedy(self, ex: Example) -> list[int]:
        """The token ids a CTC greedy decode reads off the adaptor (a diagnostic: which words it hears)."""
        with torch.inference_mode():
            best = self.logits(self.tower.adapt(torch.from_numpy(ex.feats.astype(np.float32))[None])[0]).argmax(-1)
        vocab = {i: t for t, i in self.index.items()}
        out, prev = [], 0
        for b in best.tolist():
            if b and b != prev:
                out.append(vocab[b])
            prev = b
        return out


def token_error_rate(aligner: Aligner, exs: list[Example]) -> float:
    """Edit distance between the CTC greedy read-out and the question's tokens, per token."""
    errors = total = 0
    for ex in exs:
        hyp, ref = aligner.greedy(ex), ex.transcript[:-1]
        d = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            prev, d[0] = d[0], i
            for j, h in enumerate(hyp, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
        errors, total = errors + d[-1], total + len(ref)
    return errors / max(total, 1)


def align(aligner: Aligner, train: list[Example], held: list[Example], cfg: DistillConfig, rng: random.Random,
          log) -> None:
    """The CTC warm-up: ``cfg.align_minutes`` (or ``cfg.align_steps`` steps) of adaptor-only
    training, cosine learning rate."""
    params = list(aligner.tower.adaptor.parameters()) + [aligner.blank, aligner.scale]
    opt = torch.optim.AdamW(params, lr=cfg.align_lr, weight_decay=0.01, betas=(0.9, 0.98))
    t0, step, order = time.time(), 0, []

    def done() -> float:
        return step / cfg.align_steps if cfg.align_steps > 0 else (time.time() - t0) / (cfg.align_minutes * 60)

    while (frac := done()) < 1:
        if len(order) < cfg.align_batch:
            order += rng.sample(range(len(train)), len(train))
        for g in opt.param_groups:
            g["lr"] = cfg.align_lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * frac))
        ctc, norm = aligner([train[order.pop()] for _ in range(cfg.align_batch)])
        opt.zero_grad(set_to_none=True)
        (ctc + norm).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log({"align_step": step, "min": round((time.time() - t0) / 60, 2), "ctc": float(ctc.detach()), "norm": float(norm.detach()),
                 "heldout_ter": round(token_error_rate(aligner, held[:40]), 3) if step % 200 == 0 else None})


def evaluate(student: Student, exs: list[Example], batch: int) -> dict:
    """Teacher-forced top-1 agreement and mean KL per answer token."""
    kl = agree = n = 0.0
    with torch.inference_mode():
        for i in range(0, len(exs), batch):
            loss, a, m = student(exs[i : i + batch])
            kl, agree, n = kl + float(loss), agree + int(a), n + m
    return {"top1": agree / max(n, 1), "kl": kl / max(n, 1), "tokens": int(n)}


def lr_at(elapsed: float, step: int, cfg: DistillConfig) -> float:
    """Linear warm-up, then cosine to a tenth over the wall-clock budget."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    frac = min(1.0, elapsed / (cfg.minutes * 60))
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


# --- the run -----------------------------------------------------------------------------------


def load_llm(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    llm.requires_grad_(False)
    return llm, tok


def data_system_prompt(data: Path) -> str | None:
    """The system prompt the data was built with (distill_data writes it beside the questions)."""
    path = data / "prompt.json"
    return json.loads(path.read_text())["system"] if path.is_file() else SYSTEM_PROMPT


def distill(data: Path, out: Path, cfg: DistillConfig, resume: bool = False, gguf: Path | None = None) -> Path:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    questions = {q["id"]: q for q in read_jsonl(data / QUESTIONS_FILE)}
    clips = read_jsonl(data / CLIPS_FILE)
    teacher = dict(np.load(data / TEACHER_FILE))
    gguf = gguf or smollm2_gguf()
    llm, tok = load_llm(gguf)
    system = data_system_prompt(data)
    tower = fresh_tower("packaged:base", llm.config.hidden_size, cfg.hidden_dim, workdir=out,
                        stack_factor=cfg.stack_factor, encoder_input=["chunked"], chunk_seconds=cfg.chunk_seconds,
                        context_seconds=cfg.context_seconds, boundary="embeddings")
    tower.encoder.requires_grad_(False)
    with torch.no_grad():
        emb = llm.get_input_embeddings().weight
        tower.adaptor.boundary.copy_(emb.mean(0) + 0.02 * torch.randn(2, emb.shape[1]) * emb.std())
    extra = word_clips(data)
    feats = compute_features(tower.eval(), data, clips + extra, out, cfg.threads)
    t_feats = time.time() - t_start
    from .data import hf_tokenize

    fmt = PromptFormat(gguf, tok, system)
    train = examples([c for c in clips if c["split"] == "train"], questions, teacher, feats, hf_tokenize(tok), fmt.eos)
    held = examples([c for c in clips if c["split"] == "heldout"], questions, teacher, feats)
    held_eval = random.Random(1).sample(held, min(cfg.eval_clips, len(held)))
    train_eval = random.Random(2).sample(train, min(cfg.eval_clips, len(train)))
    prefix, suffix = fmt.spoken()
    student = Student(llm, tower, prefix, suffix, cfg.max_answer)
    request = hf_tokenize(tok)("\nRepeat my question word for word.", False) + suffix
    repeater = Repeater(llm, tower, prefix, request) if cfg.repeat_weight > 0 else None
    full = Student(llm, tower, prefix, suffix)  # evaluation: the whole answer
    words = word_examples(data, extra, feats, hf_tokenize(tok), fmt.eos)
    vocab = sorted({t for ex in train + words for t in ex.transcript[:-1]} | {t for ex in train for t in ex.answer})
    aligner = Aligner(tower, llm.get_input_embeddings().weight, vocab)
    held_words = examples([c for c in clips if c["split"] == "heldout"], questions, teacher, feats, hf_tokenize(tok), fmt.eos)
    log = open(out / LOG_FILE, "a")

    def record(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()

    state_path = out / STATE_FILE
    if (cfg.align_minutes > 0 or cfg.align_steps > 0) and not (resume and state_path.is_file()):
        tower.adaptor.train()
        align(aligner, train + words, random.Random(3).sample(held_words, min(200, len(held_words))), cfg, rng, record)
        record({"aligned": True, "heldout_ter": round(token_error_rate(aligner, held_words[:200]), 3)})
    params = list(tower.adaptor.parameters()) + [aligner.blank, aligner.scale]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, trained = 0, 0.0  # trained: seconds of training so far (resumable)
    if resume and state_path.is_file():
        st = torch.load(state_path, weights_only=True)
        tower.adaptor.load_state_dict(st["adaptor"])
        with torch.no_grad():
            aligner.blank.copy_(st["blank"])
            aligner.scale.copy_(st["scale"])
        opt.load_state_dict(st["optimizer"])
        step, trained = st["step"], st["trained"]
        rng.seed(cfg.seed + step)
        print(f"resumed at step {step} after {trained / 60:.1f} min", flush=True)
    print(f"{len(train)} train clips, {len(words)} warm-up clips, {len(held)} held-out; features took {t_feats:.0f} s",
          flush=True)
    last_save = last_eval = time.time()
    t0 = time.time() - trained
    order: list[int] = []
    while time.time() - t0 < cfg.minutes * 60:
        if len(order) < cfg.batch:
            order += rng.sample(range(len(train)), len(train))
        batch = [train[order.pop()] for _ in range(cfg.batch)]
        for g in opt.param_groups:
            g["lr"] = lr_at(time.time() - t0, step, cfg)
        tower.adaptor.train()
        loss, agree, n = student(batch)
        opt.zero_grad(set_to_none=True)
        total = loss / n
        if repeater is not None:
            rep, m = repeater(batch)
            total = total + cfg.repeat_weight * rep / m
            rep_loss = float(rep.detach()) / m
        if cfg.align_weight > 0:  # the warm-up's words too, so the vocabulary it taught is kept
            ctc, norm = aligner(batch + [rng.choice(words) for _ in range(cfg.batch)] if words else batch)
            total = total + cfg.align_weight * (ctc + norm)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            rec = {"step": step, "min": round((time.time() - t0) / 60, 2), "kl": float(loss.detach()) / n,
                   "top1": int(agree) / n, "lr": opt.param_groups[0]["lr"]}
            if repeater is not None:
                rec["repeat_ce"] = rep_loss
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if time.time() - last_eval > cfg.eval_every_minutes * 60:
            tower.adaptor.eval()
            rec = {"step": step, "min": round((time.time() - t0) / 60, 2), "heldout": evaluate(full, held_eval, 16)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            last_eval = time.time()
        if time.time() - last_save > cfg.save_every_minutes * 60:
            _save_state(state_path, aligner, opt, step, time.time() - t0)
            last_save = time.time()
    _save_state(state_path, aligner, opt, step, time.time() - t0)
    tower.adaptor.eval()
    final = {"step": step, "train_minutes": round((time.time() - t0) / 60, 1), "feature_seconds": round(t_feats),
             "heldout": evaluate(full, held, 16), "train_sample": evaluate(full, train_eval, 16),
             "config": asdict(cfg)}
    print(json.dumps(final), flush=True)
    log.write(json.dumps(final) + "\n")
    log.close()
    meta = CheckpointMeta(adaptor=tower.cfg, audio_start="", audio_end="", system_prompt=system or "")
    with atomic_folder(out / TOWER_DIR) as tmp:
        save_tower(tower, meta, tmp)
        (tmp / "report.json").write_text(json.dumps(final, indent=2) + "\n")
    return out / TOWER_DIR


def llm_reference(gguf: Path) -> dict[str, dict[str, str]]:
    """How a bundle names an LLM GGUF it does not carry: ``module/file`` when an installed Python
    package holds it (found wherever pip put it), else its absolute path."""
    import importlib.util

    gguf = gguf.resolve()
    variant = gguf.stem.rsplit(".", 1)[-1].lower() if "." in gguf.stem else "llm"
    spec = importlib.util.find_spec(gguf.parent.name) if gguf.parent.name.isidentifier() else None
    if spec is not None and spec.submodule_search_locations and any(
            Path(d).resolve() == gguf.parent for d in spec.submodule_search_locations):
        return {"llm_packages": {variant: f"{gguf.parent.name}/{gguf.name}"}}
    return {"llm_external": {variant: str(gguf)}}


def build_bundle(tower_dir: Path, out: Path, gguf: Path | None = None, name: str = DEFAULT_NAME) -> Path:
    """The runnable bundle: ONNX tower (float16 weights, float32 compute), boundary rows, manifest.
    The LLM stays where it is, byte for byte: the bundle names it instead of copying it."""
    from llasm_export.bundle import write_tower_and_manifest

    from llasm_cli.model import load_tower, read_meta

    meta = read_meta(tower_dir)
    tower = load_tower(tower_dir, meta)
    with atomic_folder(out) as tmp:
        write_tower_and_manifest(tmp, name, tower, meta, llm_files={}, torch_tower=False, half_onnx=True,
                                 **llm_reference(gguf or smollm2_gguf()))
        report = tower_dir / "report.json"
        if report.is_file():
            (tmp / "report.json").write_text(report.read_text())
    return out


def _save_state(path: Path, aligner: Aligner, opt, step: int, trained: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"adaptor": aligner.tower.adaptor.state_dict(), "blank": aligner.blank.detach(),
                    "scale": aligner.scale.detach(), "optimizer": opt.state_dict(), "step": step,
                    "trained": trained}, tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="folder written by llasm_finetune.distill_data")
    ap.add_argument("out", type=Path)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    ap.add_argument("--gguf", type=Path, default=None, help="the LLM GGUF (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--bundle", type=Path, default=None, help="also write the runnable bundle here")
    for f, v in asdict(DistillConfig()).items():
        if isinstance(v, bool):
            ap.add_argument(f"--{f.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=v)
        else:
            ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    args = ap.parse_args(argv)
    cfg = DistillConfig(**{f: getattr(args, f) for f in asdict(DistillConfig())})
    tower = distill(args.data, args.out, cfg, args.resume, args.gguf)
    print(tower)
    if args.bundle:
        print(build_bundle(tower, args.bundle, args.gguf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
