"""Checkpoint -> runnable GGUF bundle (LLM GGUF + audio tower + manifest)."""
