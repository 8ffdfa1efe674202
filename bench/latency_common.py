"""What every part of the latency bench shares: the clock, the log line, medians, the settle pause."""

from __future__ import annotations

import statistics
import sys
import time

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
now = time.perf_counter

TARGETS = (2.0, 5.0, 10.0, 25.0)
ESPEAK_SPEED = 160
SETTLE_S = 0.05  # pause between measured calls: lets the previous system's worker threads go idle
RSS_TARGET = 1.3  # issue #13: peak RSS of `llasm ask` at most this times the bundle files it loads


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


