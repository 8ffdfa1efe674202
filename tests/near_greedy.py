"""Is an answer llasm's own? The in-process greedy answer, or -- where llama.cpp's rounding lets a
near tie fall either way -- a greedy answer up to that rounding.

llama.cpp's CPU kernels do not compute a position bit for bit alike in every context: a position
decoded in a batch of many tokens rounds differently from one decoded in a small batch, and with
flash attention (F16) a sequence whose KV cells lie out of position order in a cache shared with
other sequences does too. On SmolLM2-135M that moves logits by up to about 1 (measured 0.4-0.9), so
where the best two tokens are that close, a server decoding several conversations in one batch may
pick the other one. A request served alone on a fresh context is computed exactly as llasm's own
path computes it (the same batches, cells in position order): compare those with ``==``. Answers
given while other conversations shared the batches and the cache are checked with ``departure``:
the answer is followed through llasm's own path token by token (teacher forcing), and every token
it holds must be within ``TIE`` of the best token there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TIE = 2.5  # logits: twice the largest difference measured between batched and single decoding, and some


def prompt_of(bot, turns: list[tuple[Path | np.ndarray | None, str | None]], max_tokens: int,
              system: str | None = None) -> list:
    """Prompt segments of the last of ``turns`` (audio, typed text), the earlier ones answered greedily by
    llasm (their answers' very tokens in the prompt, as the server feeds back the answers it gave)."""
    from llasm_cli.audio.decode import load_audio
    from llasm_cli.conversation import Conversation
    from llasm_cli.llm.engine import Sampling

    bot.engine.reset()
    conv = Conversation(bot, system=system)
    for i, (wav, text) in enumerate(turns):
        audio = load_audio(wav) if isinstance(wav, Path) else wav
        conv.add_user(audio, text=text)
        if i < len(turns) - 1:
            for _ in conv.respond(Sampling(temperature=0), max_tokens):
                pass
    return bot.prompt(conv.messages())


def departure(bot, segments: list, text: str, max_tokens: int, tie: float = TIE) -> str | None:
    """None if ``text`` (an answer cut at ``max_tokens``, its leading whitespace stripped, as the server
    sends it) is a greedy answer to ``segments`` up to ``tie``; otherwise where and how it departs.

    The answer's tokens are not known, only its text: every token within ``tie`` of the best whose
    piece continues the text is tried, best first (a piece may be a prefix of the one chosen)."""
    engine = bot.engine
    engine.reset()
    target = text.encode()
    deepest = [-1, ""]  # (bytes matched, what llasm says there) of the furthest dead end

    def ends(logits: np.ndarray) -> bool:
        return any(engine.is_eog(int(t)) for t in np.flatnonzero(logits >= logits.max() - tie))

    def walk(logits: np.ndarray, off: int, steps: int, lead: bool) -> bool:
        if off == len(target):  # the answer ended here: cut at max_tokens, or the end of text is (nearly) best
            if steps == max_tokens or ends(logits):
                return True
        elif steps < max_tokens:
            best = float(logits.max())
            for tok in np.argsort(-logits)[:64]:
                tok = int(tok)
                if best - float(logits[tok]) > tie:
                    break
                if engine.is_eog(tok):
                    continue
                piece = engine.piece(tok)
                part = piece.lstrip() if lead else piece
                if not (part or lead) or not target.startswith(part, off):
                    continue
                n = engine.n_past
                if walk(engine.eval([[tok]]), off + len(part), steps + 1, lead and not part):
                    return True
                engine.truncate(n)
        if off > deepest[0]:
            deepest[:] = [off, engine.piece(int(np.argmax(logits))).decode(errors="replace")]
        return False

    if walk(engine.eval(segments), 0, 0, True):
        return None
    off, said = deepest
    where = f"after {target[:off].decode(errors='replace')!r}" if off else "at once"
    return (f"{text!r} is not llasm's answer up to rounding: it departs {where}, where llasm says {said!r} "
            f"and no token within {tie} of that continues it")
