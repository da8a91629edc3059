"""The OpenAI-compatible HTTP server (``tokentree serve``)."""
