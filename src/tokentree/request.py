"""The one request: what a generation asks for, typed, frozen and validated here only.

Every door builds one :class:`Request` and nothing else checks its fields: the CLI's flags are
generated from its fields (:func:`tokentree.cli.flags.request_flags`), the server's protocol turns a
body into one (:mod:`tokentree.server.protocol`), ``Generator.stream/generate/generate_batch`` and
``BatchSession.add`` take one (keyword overrides build it), the server's jobs carry it, the bench
builds it. A capability that adds a request field (constraints, logprobs) adds it here, with its
check, and every door carries it.

The tree size is decided once per request too: :func:`decide_budget`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence, Union

from .constraints import Constraint
from .drafters import DRAFTERS
from .errors import TokentreeError
from .logprobs import MAX_TOP, MODES
from .sampling import SamplingParams

MAX_BUDGET = 256  # drafted nodes per step: more never pays on any machine measured
MAX_SEED = 2**63 - 1
Budget = Union[int, str, None]  # a node count, "auto" (planned each step) or None (the default)


class RequestError(TokentreeError):
    """A request field with a value no generation can honour; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class Request:
    """What to generate. Fields carry their CLI help (``metadata["help"]``)."""

    max_new_tokens: int = field(default=128, metadata=_help("tokens to generate at most"))
    temperature: float = field(
        default=0.0, metadata=_help("0 = greedy (default); > 0 samples losslessly")
    )
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass (1 = off)"))
    top_k: int = field(default=0, metadata=_help("sample among the k most likely tokens (0 = off)"))
    seed: int | None = field(
        default=None, metadata=_help("make sampling reproducible (default: a fresh seed)")
    )
    min_p: float = field(default=0.0, metadata=_help("drop tokens below min_p x the top one's"))
    budget: Budget = field(
        default=None,
        metadata=_help(
            "drafted tokens per step, or 'auto' to size each step's tree from the measured verify "
            "cost and the observed acceptance (default: auto, except 16 for draft-model trees on "
            "transformers)"
        ),
    )
    stop: tuple[str, ...] = field(default=(), metadata=_help("stop string (repeatable)"))
    drafter: str | None = field(
        default=None, metadata=_help("the drafter of this request (default: the generator's)")
    )
    constraint: Constraint | None = field(
        default=None, metadata=_help("what the output must match (a JSON schema, a regex, ...)")
    )
    logprobs: int | None = field(
        default=None,
        metadata=_help(
            f"report each new token's log-probability and the K (0-{MAX_TOP}) most likely "
            "tokens at its position (default: off)"
        ),
    )
    logprobs_mode: str = field(
        default=MODES[0],
        metadata=_help(
            "raw_logprobs: the model's distribution; processed_logprobs: the one each token was "
            "drawn from (the grammar's mask, temperature, top-k, top-p, min-p)"
        ),
    )

    prompt_logprobs: int | None = field(
        default=None,
        metadata=_help(
            f"report each prompt token's log-probability, rank and the K (0-{MAX_TOP}) most "
            "likely tokens at its position (the model's distribution; default: off)"
        ),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", _stops(self.stop))
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED)
        _check_budget(self.budget)
        if self.drafter is not None:
            _check_drafter(self.drafter)
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise RequestError("constraint", "constraint must be a tokentree.Constraint")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_TOP)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, low=0, high=MAX_TOP)
        if self.logprobs_mode not in MODES:
            raise RequestError("logprobs_mode", f"logprobs_mode must be one of {', '.join(MODES)}")
        self.sampling  # validates the sampling fields

    @cached_property
    def sampling(self) -> SamplingParams:
        """The warping of this request (its checks name the field they fail on)."""
        try:
            return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p)
        except TokentreeError as exc:
            raise RequestError(str(exc).split()[0], str(exc)) from None

    def replace(self, **changes: Any) -> Request:
        """This request with ``changes`` (field names; an unknown one is a clear error)."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise RequestError(
                unknown[0],
                f"unknown request option '{unknown[0]}': the options are {', '.join(FIELDS_ORDER)}",
            )
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def build(cls, request: Request | None = None, **changes: Any) -> Request:
        """``request`` (default: all defaults) with keyword ``changes``: the convenience door."""
        return (request or cls()).replace(**changes)


FIELDS_ORDER = tuple(f.name for f in dataclasses.fields(Request))
FIELDS = frozenset(FIELDS_ORDER)


def _stops(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        raise RequestError("stop", f"stop must be a string or a list of strings, got {stop!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stops):
        raise RequestError("stop", "stop strings must be non-empty strings")
    return stops


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RequestError(name, f"{name} must be {bound}, got {value}")


def _check_budget(budget: Budget) -> None:
    if budget is None or budget == "auto":
        return
    if isinstance(budget, str):
        raise RequestError("budget", f"budget must be a number >= 0 or 'auto', got '{budget}'")
    _check_int("budget", budget, low=0, high=MAX_BUDGET)


def _check_drafter(name: str) -> None:
    if name not in DRAFTERS:
        raise RequestError(
            "drafter", f"unknown drafter '{name}': choose one of {', '.join(DRAFTERS)}"
        )


def decide_budget(requested: Budget, drafter, plans_every_tree: bool) -> int | str:
    """The drafted-node budget of a request (the one place it is decided): ``requested`` when
    given; else planned ("auto") on engines whose batch costs rise steeply (llama.cpp, OpenVINO:
    ``plans_every_tree``) and for drafters whose trees the planner cuts for free; else the
    drafter's own default: draft-model drafters (a sampled draft-model tree the planner shrank
    would be drawn twice) and ``none``."""
    if requested is not None:
        return requested
    if plans_every_tree:
        return "auto"
    if drafter.runs_draft_model or not drafter.default_budget:
        return drafter.default_budget
    return "auto"
