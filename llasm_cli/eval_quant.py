"""Quantized LLM variants against the reference precision: does the smaller file answer the same?

    llasm eval-quant BUNDLE [--audio DIR] [--text "..."] [--variants q8_0,q4_k_m] [--json]

The reference variant (f32, else the most precise one the bundle has) answers every prompt greedily;
that answer is then fed to every variant one token at a time (teacher forcing), and at each answer
position the variant's next-token scores are compared with the reference's:

- top-1 agreement: the share of positions where the variant's most likely token is the reference's
  (the answer's tokens and the token that ended it);
- mean KL(reference || variant) of the two next-token distributions, in nats per position;
- identical answers: the share of prompts where every position agrees, i.e. where the variant's own
  greedy answer would be the reference's, word for word;
- decode speed: single-token evaluations per second over the answer (what answering costs), and
  the file size.

Every variant sees the same prompts: the audio is encoded once, by the reference's tower, and the
same embeddings and token ids go into each variant. By default every variant also runs with the
same context settings (an f32 KV cache and attention without flash attention, llasm's exact mode),
so only the LLM's weights differ; ``as_run`` runs each as ``llasm ask --variant`` does instead (f32
exact, the others with llama.cpp's defaults: an f16 KV cache and flash attention), which adds their
rounding to the comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llasm_cli.errors import AudioFileError, BundleError
from llasm_cli.llm.logits import log_softmax

# Most precise first: the first of these a bundle has is the reference when it has no f32.
PRECISION_ORDER = ("f32", "bf16", "f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s",
                   "q4_1", "q4_0", "iq4_nl", "iq4_xs", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# Typed questions used when no prompt is given (and added to spoken ones by the benchmark).
DEFAULT_TEXTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain in one sentence why the sky is blue.",
)


@dataclass
class Prompt:
    """One question: a spoken clip (16 kHz samples), typed text, or both."""

    name: str
    samples: np.ndarray | None = None
    text: str | None = None


@dataclass
class VariantScore:
    variant: str
    file: str
    size_bytes: int
    positions: int  # answer positions compared (answer tokens + the token that ended each answer)
    top1: float  # share of positions whose argmax is the reference's token
    mean_kl: float  # mean KL(reference || variant), nats per position
    max_kl: float
    identical_answers: float  # share of prompts agreeing at every position
    tokens_per_s: float  # teacher-forced single-token decode rate
    reference: bool = False


@dataclass
class QuantReport:
    model: str
    reference: str
    note: str  # how the reference was chosen, or why it is not f32
    context: str  # "exact" (every variant: f32 KV cache and attention) or "as-run"
    prompts: list[str]
    answer_tokens: int  # reference answer tokens over all prompts
    scores: list[VariantScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        """The scores as a Markdown table, most precise variant first."""
        rows = ["| variant | file | top-1 agreement | mean KL (nats) | identical answers | decode tokens/s |",
                "|---|---:|---:|---:|---:|---:|"]
        for s in self.scores:
            name = f"{s.variant} (reference)" if s.reference else s.variant
            rows.append(f"| {name} | {s.size_bytes / 1e6:.1f} MB | {100 * s.top1:.2f}% | {s.mean_kl:.5f} | "
                        f"{100 * s.identical_answers:.0f}% | {s.tokens_per_s:.1f} |")
        return "\n".join(rows)


def precision_rank(variant: str) -> int:
    v = variant.lower()
    return PRECISION_ORDER.index(v) if v in PRECISION_ORDER else len(PRECISION_ORDER)


def pick_reference(variants: Sequence[str]) -> tuple[str, str]:
    """(reference variant, a note saying how it was chosen)."""
    if not variants:
        raise BundleError("the model has no LLM variant to evaluate")
    ref = min(variants, key=precision_rank)
    if ref == "f32":
        return ref, "reference: f32"
    return ref, f"no f32 in this model: the reference is {ref}, the most precise variant present"


def audio_prompts(folder: Path) -> list[Prompt]:
    """Every audio file in ``folder`` (sorted by name) as a spoken prompt."""
    from llasm_cli.audio.decode import load_audio

    folder = Path(folder)
    if not folder.is_dir():
        raise AudioFileError(f"audio folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise AudioFileError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return [Prompt(p.name, samples=load_audio(p)) for p in files]


def text_prompts(texts: Sequence[str]) -> list[Prompt]:
    return [Prompt(f"text: {t}", text=t) for t in texts]


def eval_quant(
    model, prompts: Sequence[Prompt], variants: Sequence[str] | None = None, max_tokens: int = 64,
    backend: str = "auto", n_threads: int | None = None, n_ctx: int = 2048, as_run: bool = False,
    progress: Callable[[str], None] = lambda step: None,
) -> QuantReport:
    """Score each LLM variant of ``model`` (a bundle path or Bundle) against the reference on ``prompts``."""
    from llasm_cli.assistant import Assistant
    from llasm_cli.formats.bundle import Bundle
    from llasm_cli.formats.published import open_model

    bundle = model if isinstance(model, Bundle) else open_model(model)
    present = bundle.variants()
    chosen = list(dict.fromkeys(variants)) if variants else present
    unknown = [v for v in chosen if v not in present]
    if unknown:
        raise BundleError(f"the model has no LLM variant {unknown}; it has {present}")
    if not prompts:
        raise AudioFileError("no prompts: give spoken clips, typed text, or both")
    reference, note = pick_reference(present)
    chosen = sorted(set(chosen) | {reference}, key=lambda v: (precision_rank(v), v))

    progress("encoding the prompts")
    bot = Assistant(bundle, backend=backend, llm_variant=reference, n_ctx=n_ctx, n_threads=n_threads)
    try:  # the reference's tower and tokenizer: the same embeddings and ids go into every variant
        segs = []
        for p in prompts:
            embd = bot.tower.encode(p.samples) if p.samples is not None else None
            segs.append(bot.prompt(bot.messages(embd, p.text, None, system=None)))
    finally:
        bot.close()
    targets: list[tuple[list[int], bool]] = []
    ref_logprobs: list[np.ndarray] = []
    scores = []
    for v in chosen:  # the reference first: it answers, and its log-probabilities are what the others meet
        progress(f"teacher-forcing {v}" if targets else f"answering with the reference ({v})")
        engine = _open_engine(bundle, v, n_ctx, n_threads, exact=(v == "f32") if as_run else True)
        try:
            if not targets:
                n_vocab = engine.n_vocab
                targets = [_greedy(engine, s, max_tokens) for s in segs]
            elif engine.n_vocab != n_vocab:
                raise BundleError(f"LLM variant {v} has {engine.n_vocab} tokens, the reference {n_vocab}")
            logprobs, seconds, fed = zip(*(_teacher_force(engine, s, t) for s, t in zip(segs, targets)))
        finally:
            engine.close()
        if not ref_logprobs:
            ref_logprobs = list(logprobs)
        scores.append(_score(v, bundle.llm_path(v), v == reference, targets, ref_logprobs, logprobs,
                             sum(fed) / max(sum(seconds), 1e-9)))
    return QuantReport(model=str(bundle.root), reference=reference, note=note, context="as-run" if as_run else "exact",
                       prompts=[p.name for p in prompts],
                       answer_tokens=sum(len(t) - int(ended) for t, ended in targets), scores=scores)


def _open_engine(bundle, variant: str, n_ctx: int, n_threads: int | None, exact: bool):
    """The variant's LLM in a llama.cpp engine, its GGUF checked first (llama.cpp aborts on a malformed file)."""
    from llasm_cli.formats.gguf_check import validate_llm
    from llasm_cli.llm.engine import Engine

    path = bundle.llm_path(variant)
    validate_llm(path)
    engine = Engine(path, n_ctx=n_ctx, n_threads=n_threads, exact=exact)
    engine.warmup()
    return engine


def _greedy(engine, segs: list, max_tokens: int) -> tuple[list[int], bool]:
    """The reference answer: (its tokens plus the end-of-generation token if one ended it, ended)."""
    engine.reset()
    logits = engine.eval(segs)
    out: list[int] = []
    for _ in range(max_tokens):
        tok = int(np.argmax(logits))
        out.append(tok)
        if engine.is_eog(tok):
            return out, True
        if engine.n_past >= engine.n_ctx:
            break
        logits = engine.eval([[tok]])
    return out, False


def _teacher_force(engine, segs: list, target: tuple[list[int], bool]) -> tuple[np.ndarray, float, int]:
    """Log-probabilities at each answer position (n_positions, n_vocab), seconds spent decoding the
    answer's tokens one by one, and how many were decoded."""
    tokens, _ = target
    engine.reset()
    rows = [log_softmax(engine.eval(segs)).astype(np.float32)]
    seconds = 0.0
    for tok in tokens[:-1]:  # the last token (the end of the answer, or where it was cut) is compared, not fed
        start = time.perf_counter()
        logits = engine.eval([[tok]])
        seconds += time.perf_counter() - start
        rows.append(log_softmax(logits).astype(np.float32))
    return np.stack(rows), seconds, len(rows) - 1


def _score(variant: str, path: Path, is_ref: bool, targets, ref_lp, var_lp, rate: float) -> VariantScore:
    agree = positions = identical = 0
    kls: list[np.ndarray] = []
    for (tokens, _), r, q in zip(targets, ref_lp, var_lp, strict=True):
        hits = np.argmax(q, axis=-1) == np.asarray(tokens[: len(q)])
        agree += int(hits.sum())
        positions += hits.size
        identical += int(hits.all())
        p = np.exp(r.astype(np.float64))
        kls.append((p * (r.astype(np.float64) - q.astype(np.float64))).sum(axis=-1))
    kl = np.concatenate(kls) if kls else np.zeros(0)
    return VariantScore(
        variant=variant, file=path.name, size_bytes=path.stat().st_size, positions=positions,
        top1=agree / max(positions, 1), mean_kl=float(kl.mean()) if kl.size else 0.0,
        max_kl=float(kl.max()) if kl.size else 0.0, identical_answers=identical / max(len(targets), 1),
        tokens_per_s=rate, reference=is_ref,
    )
