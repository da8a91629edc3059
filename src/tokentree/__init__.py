"""tokentree: lossless token-tree speculative decoding."""

from .api import GenerationStream, Generator, Output, load
from .constraints import Constraint, ConstraintError
from .errors import TokentreeError, UnsupportedModelError
from .request import Request, RequestError
from .tree import TokenTree

__version__ = "0.1.0"
__all__ = [
    "Constraint",
    "ConstraintError",
    "GenerationStream",
    "Generator",
    "Output",
    "Request",
    "RequestError",
    "TokenTree",
    "TokentreeError",
    "UnsupportedModelError",
    "load",
    "__version__",
]
