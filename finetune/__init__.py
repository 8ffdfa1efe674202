"""The PyTorch side of llasm: the LLaSM model definition and its training recipe."""
