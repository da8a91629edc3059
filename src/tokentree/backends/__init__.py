"""Model backends: the narrow contract between models and everything above them."""

from .base import Backend

__all__ = ["Backend"]
