"""Model files: the bundle's layout and manifest, GGUF keys and checks, published GGUF pairs."""
