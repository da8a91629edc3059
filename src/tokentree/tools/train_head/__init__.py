"""``tokentree train-head``: training prompts and text (``data``), feature extraction and the
training loop (``train``), the command's job (``run``)."""
