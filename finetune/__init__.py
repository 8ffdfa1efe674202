"""The PyTorch side of llasm: the training recipe (the model it trains is defined in llasm_cli/model.py)."""
