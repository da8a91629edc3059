"""Constrained decoding: what a request may output (``spec``) and each sequence's place in its
grammar, which shapes and masks its trees (``state``)."""

from .spec import KINDS, Constraint, ConstraintError
from .state import ALL, GrammarCounts, GrammarState, TokenGrammar, allowed_tokens, masked

__all__ = [
    "ALL",
    "KINDS",
    "Constraint",
    "ConstraintError",
    "GrammarCounts",
    "GrammarState",
    "TokenGrammar",
    "allowed_tokens",
    "masked",
]
