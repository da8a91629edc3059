"""The Python API: ``tokentree.load(...)`` returns a :class:`Generator`; requests are
:class:`~tokentree.request.Request` objects (or keyword changes that build one)."""

from ..models import LoadedModel, resolve_device, resolve_dtype
from ..request import Request, RequestError
from .generator import Generator, Prompt, draft_source
from .loading import (
    BACKENDS,
    llama_cpp_installed,
    load,
    load_draft,
    load_with_model_options,
    openvino_installed,
    resolve_backend,
)
from .rollouts import Independent, RolloutTree, Segments, Uncertain
from .session import BatchSession
from .stream import GenerationStream, Output

__all__ = [
    "BACKENDS",
    "BatchSession",
    "GenerationStream",
    "Generator",
    "Independent",
    "LoadedModel",
    "Output",
    "Prompt",
    "Request",
    "RequestError",
    "RolloutTree",
    "Segments",
    "Uncertain",
    "draft_source",
    "llama_cpp_installed",
    "load",
    "load_draft",
    "load_with_model_options",
    "openvino_installed",
    "resolve_backend",
    "resolve_device",
    "resolve_dtype",
]
