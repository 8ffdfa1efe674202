"""llasm: a local voice assistant on a LLaSM-style speech-and-language model."""

__version__ = "0.1.0"
