"""llasm: a local voice assistant on a LLaSM-style speech-and-language model."""

import os

# llama.cpp, CTranslate2 and PyTorch all use OpenMP; its default busy-wait makes a thread pool
# spin for ~200 ms after each call, which on a laptop that is doing anything else turns a 50 ms
# prefill into seconds (measured in bench/: 2.2 s vs 0.056 s). Must be set before they load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# But waiting passively at every barrier costs llama.cpp a futex wake per op: decoding
# SmolLM2-135M without PyTorch loaded ran at 39 tok/s instead of 127-143 on an idle 2-core AMD
# EPYC. GNU OpenMP's spin count overrides the policy: a short spin (1000 rounds, microseconds)
# bridges the gaps between ops and still sleeps almost at once when another process holds a core.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
