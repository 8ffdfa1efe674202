"""Does speaking a question equal typing it? The default model on held-out voices and questions.

    python bench/eval_distill.py DATA --tower runs/distill/tower --bundle EARS_BUNDLE [--limit 80]

DATA is the folder ``python -m llasm_finetune.distill_data`` wrote; only its held-out questions,
spoken in held-out voices, are used (never seen in training). Each clip is heard clean, with
noise (white or pink, 15 dB SNR), through a telephone band, and 10% faster or slower. For each:

- top-1: teacher-forced agreement between the speech-fed and the text-fed LLM over the typed
  answer's tokens (the same frozen LLM reads the typed question for the reference);
- same answer: the greedy spoken answer's first sentence equals the typed answer's (normalised);
- facts: for questions with a known answer, accuracy of the spoken answers vs the typed ones.

Measured twice: in PyTorch (the training graph, float32) and through the exported bundle with the
runtime's own code path (Assistant + conversation.answer, temperature 0: what ``llasm ask`` runs;
``--cli N`` also runs N clean clips through the ``llasm ask`` command and checks it answers the same).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONDITIONS = ("clean", "noise", "phone", "tempo")


def condition(x: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """The clean clip as heard under ``kind`` (one of CONDITIONS), at a fixed level: noise 15 dB below
    the speech, white or pink; a telephone band; 10% faster or slower."""
    from llasm_finetune.augment import add_noise, phone_band, speed

    rng = random.Random(seed)
    if kind == "noise":
        return add_noise(x, 15.0, rng.random() < 0.5, seed).astype(np.float32)
    if kind == "phone":
        return phone_band(x, 16000).astype(np.float32)
    if kind == "tempo":
        return speed(x, 16000, rng.choice((0.9, 1.1))).astype(np.float32)
    return x


def first_sentence(text: str) -> str:
    """Normalised first sentence: lower case, words only."""
    s = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def has_fact(text: str, facts: list[str]) -> bool:
    t = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
    return any(f in t for f in facts)


class TorchSide:
    """The training graph: frozen LLM (transformers, from the GGUF) + the trained tower."""

    def __init__(self, tower_dir: Path, gguf: Path) -> None:
        import torch
        from llasm_finetune.distill import PREFIX, SUFFIX, load_llm

        from llasm_cli.model import load_tower

        self.torch = torch
        self.tower = load_tower(tower_dir).eval()
        self.llm, self.tok = load_llm(gguf)
        emb = self.llm.get_input_embeddings().weight
        self.prefix = emb[self.tok(PREFIX, add_special_tokens=False).input_ids]
        self.suffix = emb[self.tok(SUFFIX, add_special_tokens=False).input_ids]
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")

    def _embeds(self, samples: np.ndarray):
        torch = self.torch
        b = self.tower.adaptor.boundary
        audio = self.tower.adapt(self.tower.chunked_features(samples)[None])[0]
        return torch.cat([self.prefix, b[:1], audio, b[1:], self.suffix])

    def top1(self, samples: np.ndarray, answer: list[int], teacher_top: np.ndarray) -> tuple[int, int]:
        torch = self.torch
        with torch.inference_mode():
            head = self._embeds(samples)
            x = torch.cat([head, self.llm.get_input_embeddings()(torch.tensor(answer[:-1]))])[None]
            logits = self.llm(inputs_embeds=x).logits[0, head.shape[0] - 1 :]
        pred = logits.argmax(-1).numpy()[: len(answer)]
        return int((pred == teacher_top[: len(answer)]).sum()), len(answer)

    def answer(self, samples: np.ndarray, max_tokens: int) -> str:
        torch = self.torch
        with torch.inference_mode():
            x = self._embeds(samples)[None]
            out = self.llm.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                    max_new_tokens=max_tokens, do_sample=False, eos_token_id=self.eos,
                                    pad_token_id=self.eos)
        return self.tok.decode(out[0], skip_special_tokens=True)


class BundleSide:
    """The runtime: the exported bundle through the code ``llasm ask`` runs."""

    def __init__(self, bundle: Path, backend: str, threads: int) -> None:
        from llasm_cli.assistant import Assistant

        self.bot = Assistant(bundle, backend=backend, n_threads=threads)

    def answer(self, samples: np.ndarray | None, text: str | None, max_tokens: int) -> str:
        from llasm_cli.conversation import answer

        return answer(self.bot, samples, text=text, sampling=self.bot.default_sampling(0.0), max_tokens=max_tokens)

    def top1(self, samples: np.ndarray, answer: list[int], teacher_top: np.ndarray) -> tuple[int, int]:
        from llasm_cli.conversation import ask

        conv = ask(self.bot, samples)
        logits = conv.prefill()
        agree = 0
        for i, tok in enumerate(answer):
            agree += int(int(np.argmax(logits)) == int(teacher_top[i]))
            if i + 1 < len(answer):
                logits = self.bot.engine.eval([[tok]])
        return agree, len(answer)


def main(argv: list[str] | None = None) -> int:
    from llasm_cli.audio.decode import load_audio

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--tower", type=Path, required=True, help="the trained tower folder (distill's OUT/tower)")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--gguf", type=Path, default=None, help="the LLM GGUF the tower was trained for (default: SmolLM2)")
    ap.add_argument("--limit", type=int, default=80, help="held-out questions per condition")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cli", type=int, default=10, help="clean clips also run through `llasm ask` (subprocess)")
    ap.add_argument("--no-torch", action="store_true", help="bundle only")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here too")
    args = ap.parse_args(argv)

    questions = {json.loads(x)["id"]: json.loads(x) for x in (args.data / "questions.jsonl").read_text().splitlines()}
    clips = [json.loads(x) for x in (args.data / "clips.jsonl").read_text().splitlines()]
    held = [c for c in clips if c["split"] == "heldout"]
    factual = [c for c in held if "facts" in questions[c["question"]]]
    other = [c for c in held if "facts" not in questions[c["question"]]]
    rng = random.Random(0)
    half = args.limit // 2
    chosen = rng.sample(factual, min(half, len(factual)))
    chosen += rng.sample(other, min(args.limit - len(chosen), len(other)))
    teacher = np.load(args.data / "teacher.npz")
    from llasm_finetune.distill_data import smollm2_gguf

    sides = {"bundle": BundleSide(args.bundle, args.backend, args.threads)}
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        sides["pytorch"] = TorchSide(args.tower, args.gguf or smollm2_gguf(), args.data)
    typed = {}
    t0 = time.time()
    for c in chosen:
        q = questions[c["question"]]
        typed[q["id"]] = sides["bundle"].answer(None, q["text"], args.max_tokens)
    rows = []
    for cond in CONDITIONS:
        for name, side in sides.items():
            agree = n = same = facts_spoken = facts_typed = n_facts = 0
            for i, c in enumerate(chosen):
                q = questions[c["question"]]
                x = condition(load_audio(args.data / c["audio"]), cond, i)
                a, m = side.top1(x, q["answer_ids"], teacher[f"{q['id']}/ids"][:, 0])
                agree, n = agree + a, n + m
                spoken = side.answer(x, None, args.max_tokens)
                ref = typed[q["id"]] if name == "bundle" else q["answer"]
                same += first_sentence(spoken) == first_sentence(ref)
                if "facts" in q:
                    n_facts += 1
                    facts_spoken += has_fact(spoken, q["facts"])
                    facts_typed += has_fact(ref, q["facts"])
            rows.append({"condition": cond, "path": name, "clips": len(chosen), "top1": agree / max(n, 1),
                         "same_answer": same / len(chosen), "facts_spoken": facts_spoken / max(n_facts, 1),
                         "facts_typed": facts_typed / max(n_facts, 1), "fact_questions": n_facts})
            r = rows[-1]
            print(f"[{time.time() - t0:6.0f} s] {cond:6s} {name:8s} top-1 {r['top1']:.1%}  same answer "
                  f"{r['same_answer']:.1%}  facts spoken {r['facts_spoken']:.1%} / typed {r['facts_typed']:.1%}",
                  file=sys.stderr, flush=True)
    cli_same = cli_n = 0
    for c in [c for c in chosen][: args.cli]:
        proc = subprocess.run([sys.executable, "-m", "llasm_cli", "ask", str(args.data / c["audio"]), "-m",
                               str(args.bundle), "--temperature", "0", "--max-tokens", str(args.max_tokens), "--json"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            got = json.loads(proc.stdout)["answer"].strip()
            cli_same += got == sides["bundle"].answer(load_audio(args.data / c["audio"]), None, args.max_tokens)
        cli_n += 1
    print("\n| condition | path | clips | top-1 agreement | same answer as typed | facts: spoken | facts: typed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['condition']} | {r['path']} | {r['clips']} | {r['top1']:.1%} | {r['same_answer']:.1%} | "
              f"{r['facts_spoken']:.1%} | {r['facts_typed']:.1%} (n={r['fact_questions']}) |")
    if cli_n:
        print(f"\n`llasm ask` subprocess: {cli_same}/{cli_n} clean clips answered exactly as the in-process path")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cli_same": cli_same, "cli_n": cli_n}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
