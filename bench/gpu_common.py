"""What the GPU run's modules share: where things are, the steps and their time budgets, a finished
command, the two ways a step ends early, and the child program that asks llama_cpp what it is."""

from __future__ import annotations

import json
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


DEMO = ROOT / "llasm_cli" / "models" / "demo"


EXAMPLES = ROOT / "examples" / "demo"


DEFAULT_CARRY = ROOT / "build" / "gpu-carry"


SCHEMA = 1


STEPS = ("env", "install", "build", "import_order", "info", "tiny_bundle", "ask", "latency_realtime",
         "latency_whole", "serve")


BUDGET = {"env": (40, 60), "install": (90, 30), "build": (480, 30), "import_order": (60, 120), "info": (30, 60),
          "tiny_bundle": (60, 180), "ask": (120, 240), "latency_realtime": (120, 240), "latency_whole": (120, 240),
          "serve": (90, 180)}


RESERVE_S = 8  # kept back at the deadline to write the results


NEEDS_LLAMA = {"import_order", "info", "tiny_bundle", "ask", "latency_realtime", "latency_whole", "serve"}


LOG_TAIL = 6000  # characters of each command's output kept in gpu_run.log


FREE_CRASH = "free(): invalid pointer"


CUT_SHORT = "stopped at its time budget"


class OutOfTime(Exception):
    pass


class Skip(Exception):
    pass


class Proc:
    def __init__(self, cmd, rc, out, err, seconds, timed_out):
        self.cmd, self.rc, self.out, self.err, self.seconds, self.timed_out = cmd, rc, out, err, seconds, timed_out

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def tail(self, n: int = 400) -> str:
        return (self.err or self.out or "").strip()[-n:]


def signal_name(rc: int | None) -> str | None:
    if rc is None or rc >= 0:
        return None
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def last_json(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


LLAMA_PROBE = r"""
import json
import llama_cpp
print(json.dumps({"version": llama_cpp.__version__, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
                  "path": llama_cpp.__file__}))
"""

