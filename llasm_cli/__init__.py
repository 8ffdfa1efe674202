"""llasm: a local voice assistant on a LLaSM-style speech-and-language model."""

import os

# llama.cpp, CTranslate2 and PyTorch all use OpenMP; its default busy-wait makes a thread pool
# spin for ~200 ms after each call, which on a laptop that is doing anything else turns a 50 ms
# prefill into seconds (measured in bench/: 2.2 s vs 0.056 s). Must be set before they load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
