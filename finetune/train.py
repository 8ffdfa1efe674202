"""Two-stage LLaSM training, top to bottom: setup -> train -> save.

(Kept in one file on purpose, like nanoGPT's train.py: config, loop, checkpoints and the
distributed set-up read in order; over 400 lines for that reason.)

    python -m llasm_finetune.train finetune/configs/stage1.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m llasm_finetune.train finetune/configs/stage2.yaml

Stage 1 (modality adaptation): Whisper and the LLM frozen, the adaptor learns from ASR pairs.
Stage 2 (cross-modal instruction tuning): Whisper frozen, adaptor + LLM (full or LoRA) learn
from spoken instruction dialogues; loss only on the assistant's answers.
The output folder holds ``final/``, a checkpoint `llasm export` takes as it is.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llasm_cli.files import atomic_folder, atomic_write_text
from llasm_cli.prompt import DEFAULT_TEMPLATE

from .checkpoint import load_checkpoint, save_checkpoint
from .data import FEATURE_DTYPES, IGNORE, DialogueDataset, FeatureStore, Sample, asr_sample, collate, split_eval

# --- config ----------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """One stage of training. YAML keys are these fields; unknown keys are an error."""

    stage: int  # 1: adaptor only on ASR pairs; 2: adaptor + LLM on instruction dialogues
    init: str  # checkpoint to start from (stage 2: stage 1's ``final``)
    data: str  # stage 1: ASR manifest (JSONL); stage 2: conversations (JSON)
    out: str
    eval_data: str | None = None  # held-out file; else eval_fraction of data
    eval_fraction: float = 0.02
    steps: int = 1000
    batch_size: int = 8  # global batch per optimizer step = batch_size * grad_accum
    grad_accum: int = 1
    lr: float = 1e-3  # adaptor learning rate
    llm_lr: float = 2e-5  # stage 2: LLM learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    train_llm: str = "none"  # "none" | "full" | "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    precision: str = "auto"  # "fp32" | "bf16" | "fp16" | "auto" (bf16 on GPUs that have it)
    grad_checkpointing: bool = False
    fsdp: bool = False  # shard the LLM (full fine-tuning of large models under torchrun)
    encoder_input: list = field(default_factory=lambda: ["padded"])  # feature kinds to train on
    encoder_input_share: list = field(default_factory=list)  # per mode: share of samples it sees (default all)
    feature_cache: str | None = None  # folder for frozen encoder features
    feature_dtype: str = "float32"  # "bfloat16": frozen features computed about 2x faster, within a few %
    feature_dropout: float = 0.0  # training only: zero this share of feature values (scaled), against memorising
    feature_noise: float = 0.0  # training only: add Gaussian noise of this many feature std
    transcribe_prompt: str = "Transcribe:"  # stage 1's typed instruction
    system_prompt: str | None = None  # None: the checkpoint's
    max_len: int = 2048
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    stop_at: int | None = None  # save a state and stop at this step (continue later with --resume)
    num_workers: int = 0  # DataLoader worker processes collating batches ahead of the step
    on_error: str = "skip"  # bad records: "skip" (warn) or "fail"
    seed: int = 0
    device: str = "auto"

    @classmethod
    def load(cls, path: str | None, overrides: list[str]) -> TrainConfig:
        import yaml

        data: dict = {}
        if path:
            data = yaml.safe_load(Path(path).read_text()) or {}
        for item in overrides:
            key, _, value = item.partition("=")
            data[key.strip().replace("-", "_")] = yaml.safe_load(value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SystemExit(f"unknown config keys: {unknown}; known: {sorted(known)}")
        cfg = cls(**data)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.stage not in (1, 2):
            raise SystemExit("stage must be 1 or 2")
        if self.train_llm not in ("none", "full", "lora"):
            raise SystemExit("train_llm must be none, full or lora")
        if self.stage == 1 and self.train_llm != "none":
            raise SystemExit("stage 1 keeps the LLM frozen (train_llm: none)")
        if set(self.encoder_input) - {"padded", "unpadded", "chunked"} or not self.encoder_input:
            raise SystemExit("encoder_input lists padded, unpadded and/or chunked")
        if self.encoder_input_share and (len(self.encoder_input_share) != len(self.encoder_input)
                                         or not all(0 < x <= 1 for x in self.encoder_input_share)):
            raise SystemExit("encoder_input_share gives one share in (0, 1] per encoder_input mode")
        if not (0 <= self.feature_dropout < 1 and self.feature_noise >= 0):
            raise SystemExit("feature_dropout must be in [0, 1) and feature_noise >= 0")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise SystemExit(f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}")


# --- setup -----------------------------------------------------------------------------------


def setup_distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun this joins the process group (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(name: str, rank: int) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def load_samples(cfg: TrainConfig, path: str) -> list[Sample]:
    """ASR manifest (stage 1) or instruction dialogues (stage 2) as samples."""
    from .records import read_asr_manifest, read_conversations

    if cfg.stage == 1:
        recs = read_asr_manifest(path, on_error=cfg.on_error, check_audio=True)
        return [asr_sample(f"asr-{i}", str(r.audio), r.text, cfg.transcribe_prompt) for i, r in enumerate(recs)]
    return [conversation_sample(c) for c in read_conversations(path, on_error=cfg.on_error, check_audio=True)]


def conversation_sample(conv) -> Sample:
    """A LLaSM-style conversation (``<audio>`` marks the speech in a human turn) as a sample."""
    from llasm_cli.prompt import AUDIO

    from .records import AUDIO_MARKER

    messages, audio = [], []
    for turn in conv.turns:
        role = "user" if turn.role == "human" else "assistant"
        content: str | list = turn.value
        if turn.audio is not None:  # the marker becomes an audio slot; the rest stays literal text
            before, _, after = turn.value.partition(AUDIO_MARKER)
            content = [p for p in (before, AUDIO, after) if p is AUDIO or p]
            audio.append(str(turn.audio))
        messages.append((role, content))
    return Sample(conv.id, messages, audio)


def set_trainable(model, cfg: TrainConfig):
    """Freeze what the stage keeps fixed; returns the optimizer's parameter groups."""
    model.requires_grad_(False)
    model.tower.adaptor.requires_grad_(True)
    groups = [{"params": list(model.tower.adaptor.parameters()), "lr": cfg.lr}]
    if cfg.train_llm == "full":
        model.llm.requires_grad_(True)
        groups.append({"params": list(model.llm.parameters()), "lr": cfg.llm_lr})
    elif cfg.train_llm == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise SystemExit("train_llm: lora needs peft: pip install peft") from None
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model.llm = get_peft_model(model.llm, lora)
        groups.append({"params": [p for p in model.llm.parameters() if p.requires_grad], "lr": cfg.llm_lr})
    return groups


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Batches:
    """Endless, resumable batch order: epoch e is a permutation seeded by (seed, e).

    Each rank takes every world-th item of the global order, so N processes with batch b/N see
    exactly what one process with batch b sees.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world

    def global_batch(self, index: int) -> list[int]:
        per_epoch = self.n // self.batch
        epoch, k = divmod(index, per_epoch)
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[k * self.batch : (k + 1) * self.batch]

    def local_batch(self, index: int) -> list[int]:
        return self.global_batch(index)[self.rank :: self.world]


class MicroBatches(torch.utils.data.Dataset):
    """Collated micro-batches in training order, so DataLoader workers can build them ahead."""

    def __init__(self, data: DialogueDataset, batches: Batches, start: int, steps: int, accum: int, pad_id: int) -> None:
        self.data, self.batches, self.start, self.steps, self.accum, self.pad_id = data, batches, start, steps, accum, pad_id

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum

    def __getitem__(self, i: int) -> dict:
        step, k = divmod(i, self.accum)
        idx = self.batches.local_batch(self.start + step)
        return collate([self.data[j] for j in idx[k :: self.accum]], self.pad_id)


# --- loss and evaluation ---------------------------------------------------------------------


def perturb(batch: dict, cfg: TrainConfig) -> dict:
    """Dropout and noise on the frozen features: with few voices per utterance the model otherwise
    learns each clip by heart instead of listening (training clips 100%, new voices 81%)."""
    if not (cfg.feature_dropout or cfg.feature_noise):
        return batch
    out = []
    for b, pos, f in batch["feats"]:
        if cfg.feature_noise:
            f = f + torch.randn_like(f) * (cfg.feature_noise * f.std())
        if cfg.feature_dropout:
            f = torch.nn.functional.dropout(f, cfg.feature_dropout)
        out.append((b, pos, f))
    return batch | {"feats": out}


def loss_sums(model, batch: dict, device: torch.device, dtype: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens, and how many there were."""
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with ctx:
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["feats"])
    labels = batch["labels"].to(device)[:, 1:]
    logits = logits[:, :-1].float()
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, int((labels != IGNORE).sum())


@torch.no_grad()
def evaluate(model, data: DialogueDataset, cfg: TrainConfig, device, dtype, pad_id: int) -> float:
    """Mean answer-token loss over the held-out set."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), cfg.batch_size):
        items = [data[i] for i in range(start, min(len(data), start + cfg.batch_size))]
        s, n = loss_sums(model, collate(items, pad_id), device, dtype)
        total, count = total + float(s), count + n
    model.train()
    return total / max(count, 1)


# --- checkpoints -----------------------------------------------------------------------------


def save_state(out: Path, step: int, model, optimizer, cfg: TrainConfig, keep: int) -> None:
    """Trainable weights + optimizer + RNG at ``step``, written atomically into out/state-XXXXXXX."""
    dest = out / f"state-{step:07d}"
    trainable = {n: p.detach().cpu() for n, p in _unwrap(model).named_parameters() if p.requires_grad}
    with atomic_folder(dest) as tmp:
        torch.save(
            {"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(), "config": asdict(cfg),
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}},
            tmp / "state.pt",
        )
    for old in sorted(out.glob("state-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_state(out: Path) -> Path | None:
    states = sorted(out.glob("state-*/state.pt"))
    return states[-1] if states else None


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# --- main ------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    rank, world = setup_distributed()
    if world == 1:
        return _train(cfg, resume, progress, rank, world)
    try:
        result = _train(cfg, resume, progress, rank, world)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)  # the failed run's frames hold its DDP model
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            _leave_process_group(finished=False)
        raise
    _leave_process_group(finished=True)
    return result


def _leave_process_group(finished: bool) -> None:
    """Leave the process group in an order that cannot deadlock.

    A gloo worker thread frees a finished collective (and, for a barrier, the ones it waited on)
    after the caller has moved on, and freeing what they hold takes the GIL, while the group's
    destructor joins those threads holding the GIL: tearing the group down right after a
    collective, or at exit through DDP's reducer, could hang or abort. So what holds the group
    (DDP's reducer, FSDP, optimizer, loader) is out of scope by now and collected while the group
    lives; a last barrier waits for every rank, and its handle stays here until the group is
    destroyed and its threads joined, so no worker is left freeing anything; then it is freed here.
    """
    gc.collect()
    last = dist.barrier(async_op=True) if finished else None
    if last is not None:
        last.wait()
    dist.destroy_process_group()
    del last


def _train(cfg: TrainConfig, resume: bool, progress: bool, rank: int, world: int) -> Path:
    if cfg.batch_size % world:
        raise SystemExit(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    device = pick_device(cfg.device, rank)
    dtype = autocast_dtype(cfg.precision, device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))

    # model: frozen Whisper, the stage's trainable parts
    model, tokenizer, meta = load_checkpoint(Path(cfg.init))
    model.tower.cfg.encoder_input = sorted(set(meta.adaptor.encoder_input) | set(cfg.encoder_input))
    try:  # chunked input: the model config's chunk and left context must fit its stack factor
        replace(model.tower.cfg)  # __post_init__ checks it
    except ValueError as exc:
        raise SystemExit(f"encoder_input: {exc}") from None
    model.to(device)
    groups = set_trainable(model, cfg)
    if cfg.grad_checkpointing:
        model.llm.gradient_checkpointing_enable()
    template = tokenizer.chat_template or DEFAULT_TEMPLATE
    system = meta.system_prompt if cfg.system_prompt is None else cfg.system_prompt
    audio_ids = (model.audio_start_id, model.audio_end_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # data: samples -> token ids + frozen features (computed once)
    samples = load_samples(cfg, cfg.data)
    if cfg.eval_data:
        train_s, eval_s = samples, load_samples(cfg, cfg.eval_data)
    else:
        train_s, eval_s = split_eval(samples, cfg.eval_fraction, cfg.seed)
    stores = [FeatureStore(model.tower, mode, cfg.feature_cache, cfg.feature_dtype) for mode in cfg.encoder_input]
    shares = cfg.encoder_input_share or [1.0] * len(stores)
    train_data = DialogueDataset(train_s, tokenizer, template, audio_ids, stores, system, cfg.max_len, shares)
    # held-out loss on one mode, one that covers every clip (no encodes just for evaluation)
    eval_store = next((st for st, sh in zip(stores, shares) if sh >= 1), stores[0])
    eval_data = DialogueDataset(eval_s, tokenizer, template, audio_ids, [eval_store], system, cfg.max_len)
    _precompute([train_data, eval_data], rank, progress)

    if world > 1:
        if cfg.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            model.llm = FSDP(model.llm, use_orig_params=True)
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    batches = Batches(len(train_data), cfg.batch_size * cfg.grad_accum, cfg.seed, rank, world)

    start = 0
    state_file = latest_state(out) if resume else None
    if state_file is not None:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        params = dict(_unwrap(model).named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["step"]
        if rank == 0:
            print(f"resumed from {state_file.parent.name} (step {start})", file=sys.stderr)

    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    board = _tensorboard(out) if rank == 0 else None
    bar = _progress(cfg.steps, start) if (rank == 0 and progress) else None
    model.train()
    t_last, tokens_seen = time.perf_counter(), 0
    loader = iter(torch.utils.data.DataLoader(
        MicroBatches(train_data, batches, start, cfg.steps, cfg.grad_accum, pad_id),
        batch_size=None, num_workers=cfg.num_workers,
    ))
    for step in range(start, cfg.steps):
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * lr_factor(step, cfg)
        idx = batches.local_batch(step)
        # normalise by the answer tokens of the whole global batch, so any split gives one result
        n_local = sum(train_data.answer_tokens(j) for j in idx)
        n_global = torch.tensor(float(n_local))
        if world > 1:
            dist.all_reduce(n_global)
        loss_total = 0.0
        for k in range(cfg.grad_accum):
            sync = contextlib.nullcontext() if (world == 1 or k == cfg.grad_accum - 1) else model.no_sync()
            with sync:
                s, _ = loss_sums(model, perturb(next(loader), cfg), device, dtype)
                (s * world / n_global).backward()
            loss_total += float(s.detach())
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += n_local
        loss = torch.tensor(loss_total)
        if world > 1:
            dist.all_reduce(loss)
        loss = float(loss) / float(n_global)
        done = step + 1
        if rank == 0:
            rec = {"step": done, "loss": round(loss, 5), "lr": optimizer.param_groups[0]["lr"]}
            if done % cfg.log_every == 0 or done == cfg.steps:
                dt = time.perf_counter() - t_last
                rec["tokens_per_s"] = round(tokens_seen * world / max(dt, 1e-9), 1)
                t_last, tokens_seen = time.perf_counter(), 0
            if done % cfg.eval_every == 0 or done == cfg.steps:
                rec["eval_loss"] = round(evaluate(_unwrap(model), eval_data, cfg, device, dtype, pad_id), 5)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            if board is not None:
                for key, value in rec.items():
                    if key != "step":
                        board.add_scalar(key, value, done)
            if bar:
                bar.update(loss, rec["lr"], rec.get("eval_loss"))
            if (done % cfg.save_every == 0 or done == cfg.stop_at) and done < cfg.steps:
                save_state(out, done, model, optimizer, cfg, cfg.keep_checkpoints)
        if done == cfg.stop_at and done < cfg.steps:
            if bar:
                bar.close()
            return out / f"state-{done:07d}"
    if bar:
        bar.close()
    if board is not None:
        board.close()
    final = out / "final"
    if rank == 0:
        m = _unwrap(model)
        if cfg.train_llm == "lora":
            m.llm = m.llm.merge_and_unload()
        meta.adaptor.encoder_input = model_inputs = sorted(set(meta.adaptor.encoder_input) | set(cfg.encoder_input))
        m.tower.cfg.encoder_input = model_inputs
        if cfg.system_prompt is not None:
            meta.system_prompt = cfg.system_prompt
        save_checkpoint(m.to("cpu").float(), tokenizer, meta, final, spm_model=_spm_file(Path(cfg.init)))
        metrics.close()
    return final


def _tensorboard(out: Path):
    """A TensorBoard writer when tensorboard is installed; metrics.jsonl is written regardless."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _spm_file(ckpt: Path) -> Path | None:
    f = ckpt / "llm" / "tokenizer.model"
    return f if f.is_file() else None


def _precompute(datasets: list[DialogueDataset], rank: int, progress: bool) -> None:
    """Frozen encoder features for every clip, before the first step (each rank computes its own)."""
    n = sum(len(d.clips()) for d in datasets)
    if n == 0:
        return
    if rank == 0 and progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("encoding audio (frozen Whisper)", total=n)
            for d in datasets:
                d.precompute(lambda: bar.advance(task))
    else:
        for d in datasets:
            d.precompute()


class _progress:
    """A rich progress bar with loss, learning rate and eval loss."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=start, info="")
        self.eval = None

    def update(self, loss: float, lr: float, eval_loss: float | None) -> None:
        self.eval = eval_loss if eval_loss is not None else self.eval
        info = f"loss {loss:.4f}  lr {lr:.2e}" + (f"  eval {self.eval:.4f}" if self.eval is not None else "")
        self.p.update(self.task, advance=1, info=info)

    def close(self) -> None:
        self.p.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (see finetune/configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=200 lr=3e-4")
    parser.add_argument("--resume", action="store_true", help="continue from the latest state in out/")
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # no YAML file, only key=value pairs
        args.overrides.insert(0, args.config)
        args.config = None
    cfg = TrainConfig.load(args.config, args.overrides)
    final = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)


if __name__ == "__main__":
    main()
