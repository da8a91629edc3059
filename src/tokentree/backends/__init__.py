"""Model backends: the narrow contract between models and everything above them."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .base import Backend, BatchTarget, GrowingBackend

__all__ = ["Backend", "BatchTarget", "GrowingBackend", "make_backend", "make_batch_target"]


def make_backend(model: Any, draft: bool = False, static: Any = None) -> GrowingBackend:
    """The backend for a loaded model: llama.cpp for a :class:`LlamaCppModel`, OpenVINO for an
    :class:`OpenVINOModel`, else transformers.

    ``draft``: the model only drafts, so its logits need not match one-token decoding bit for bit.
    ``static``: a :class:`~tokentree.backends.hf.static.StaticConfig` for a transformers model
    over a preallocated cache with fixed forward shapes (None: a growing cache).
    """
    from .llamacpp import LlamaCppBackend, LlamaCppModel

    if isinstance(model, LlamaCppModel):
        if static is not None:
            raise UnsupportedModelError("--static-cache is for the hf backend (transformers)")
        return LlamaCppBackend(model, in_order=not draft)
    from .openvino import OpenVINOBackend, OpenVINOModel

    if isinstance(model, OpenVINOModel):
        if static is not None:
            raise UnsupportedModelError("--static-cache is for the hf backend (transformers)")
        return OpenVINOBackend(model)
    from .hf.ssm_backend import SSMBackend, is_state_space

    if is_state_space(model):
        if draft:
            raise UnsupportedModelError(
                "a state-space model verifies trees as a target but cannot be a draft model yet "
                "(it forwards whole trees, not one level at a time)"
            )
        if static is not None:
            raise UnsupportedModelError("--static-cache takes attention models, not state-space")
        return SSMBackend(model)
    if static is not None:
        from .hf.static import StaticHFBackend

        return StaticHFBackend(model, static)
    from .hf.backend import HFBackend

    return HFBackend(model)


def make_batch_target(model: Any, max_batch: int) -> BatchTarget:
    """Up to ``max_batch`` sequences per forward over a loaded model (for llama.cpp at most the
    context's sequence ids allow, less one): lanes of one llama.cpp context, or of a packed
    transformers cache."""
    from .llamacpp import LlamaCppModel

    if isinstance(model, LlamaCppModel):
        from .llamacpp_batch import LlamaCppBatch

        return LlamaCppBatch(model, min(max_batch, model.config.max_sequences - 1))
    from .openvino import OpenVINOModel

    if isinstance(model, OpenVINOModel):
        raise UnsupportedModelError(
            "the openvino backend decodes one sequence per inference for now (its state is one "
            "sequence's cache): use --max-batch 1 and n = 1, or --backend llamacpp / hf for batches"
        )
    from .hf.batch import PackedBatch

    return PackedBatch(model, max_batch)
