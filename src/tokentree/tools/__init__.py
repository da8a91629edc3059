"""Tools of their own beside generation: ``calibrate`` (Sequoia's positional acceptance),
``quantize`` (GGUF formats where trees pay) and ``train_head`` (a feature head for the eagle
drafter)."""
