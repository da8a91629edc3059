"""User-facing errors: the CLI and server print these as one line, never as a traceback."""


class TokentreeError(Exception):
    """A mistake in the user's input or environment, with a message that says how to fix it."""


class UnsupportedModelError(TokentreeError):
    """The model's cache or attention cannot verify a token tree."""
