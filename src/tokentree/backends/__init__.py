"""Model backends: the narrow contract between models and everything above them."""

from __future__ import annotations

from typing import Any

from .base import Backend, GrowingBackend

__all__ = ["Backend", "GrowingBackend", "make_backend"]


def make_backend(model: Any, draft: bool = False) -> GrowingBackend:
    """The backend for a loaded model: llama.cpp for a :class:`LlamaCppModel`, else transformers.

    ``draft``: the model only drafts, so its logits need not match one-token decoding bit for bit.
    """
    from .llamacpp import LlamaCppBackend, LlamaCppModel

    if isinstance(model, LlamaCppModel):
        return LlamaCppBackend(model, in_order=not draft)
    from .hf import HFBackend

    return HFBackend(model)
