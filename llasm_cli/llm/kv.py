"""What a KV cache holds, as lists of segments: token ids or embedding rows, one position each.

The engine (one sequence) and the scheduler (many) both describe a prompt as segments and keep the
longest prefix their cache already holds; these are the pure functions they share to compare,
merge and cut segment lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llasm_cli.errors import ModelFileError

Segment = Sequence[int] | np.ndarray  # token ids, or embeddings of shape (n, n_embd)


def append_segment(fed: list[Segment], seg: Segment) -> None:
    """Append ``seg`` (which ``fed`` then owns) to a list of segments as ``Engine.fed`` keeps them:
    token ids that follow token ids join their list."""
    if not isinstance(seg, np.ndarray) and fed and not isinstance(fed[-1], np.ndarray):
        fed[-1].extend(seg)
    else:
        fed.append(seg)


def as_segment(seg: Segment, n_embd: int) -> Segment:
    """Token ids as a list, embeddings as a float32 (n, n_embd) array; a wrong width is an error."""
    if isinstance(seg, np.ndarray) and seg.ndim == 2:
        if seg.shape[1] != n_embd:
            raise ModelFileError(f"embeddings of shape {seg.shape} do not fit an LLM {n_embd} wide")
        return np.ascontiguousarray(seg, dtype=np.float32)
    return [int(t) for t in seg]


def common_prefix(a: Sequence[Segment], b: Sequence[Segment]) -> int:
    """Positions two segment lists share from the start: equal token ids, equal embedding rows."""
    n = ia = ib = oa = ob = 0
    while ia < len(a) and ib < len(b):
        sa, sb = a[ia], b[ib]
        if isinstance(sa, np.ndarray) or isinstance(sb, np.ndarray):
            if not (isinstance(sa, np.ndarray) and isinstance(sb, np.ndarray)) or oa or ob:
                break
            if not (sa is sb or (sa.shape == sb.shape and np.array_equal(sa, sb))):
                break
            n, ia, ib = n + len(sa), ia + 1, ib + 1
            continue
        k, limit = 0, min(len(sa) - oa, len(sb) - ob)
        while k < limit and sa[oa + k] == sb[ob + k]:
            k += 1
        n, oa, ob = n + k, oa + k, ob + k
        if k < limit:
            break
        if oa == len(sa):
            ia, oa = ia + 1, 0
        if ob == len(sb):
            ib, ob = ib + 1, 0
    return n


def same_positions(a: Sequence[Segment], b: Sequence[Segment]) -> bool:
    """Whether two segment lists hold the same positions, however each groups them."""
    n = common_prefix(a, b)  # cheap on what is shared as the same objects
    runs_a, runs_b = runs(drop_positions(a, n)), runs(drop_positions(b, n))
    return len(runs_a) == len(runs_b) and all(
        isinstance(x, np.ndarray) == isinstance(y, np.ndarray)
        and (np.array_equal(x, y) if isinstance(x, np.ndarray) else list(x) == list(y))
        for x, y in zip(runs_a, runs_b)
    )


def runs(segments: Sequence[Segment]) -> list[Segment]:
    """Consecutive token lists joined, consecutive embedding arrays joined."""
    groups: list[list[Segment]] = []
    for seg in segments:
        if groups and isinstance(groups[-1][0], np.ndarray) == isinstance(seg, np.ndarray):
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return [np.concatenate(g) if isinstance(g[0], np.ndarray) else [int(t) for s in g for t in s] for g in groups]


def drop_positions(segments: Sequence[Segment], n: int, keep_head: bool = False) -> list[Segment]:
    """The segments after their first ``n`` positions (or, with ``keep_head``, only those ``n``)."""
    head: list[Segment] = []
    tail: list[Segment] = []
    pos = 0
    for seg in segments:
        cut = min(max(n - pos, 0), len(seg))
        if cut:
            head.append(seg[:cut])
        if cut < len(seg):
            tail.append(seg[cut:])
        pos += len(seg)
    return head if keep_head else tail
