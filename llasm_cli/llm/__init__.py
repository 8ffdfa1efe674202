"""The llama.cpp layer: the library's set-up, the context that holds one conversation (engine),
many at once (scheduler), and what a KV cache holds (kv)."""
