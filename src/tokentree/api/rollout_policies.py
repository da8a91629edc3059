"""Rollout policies: where a tree of sampled trajectories branches, and the checks that refuse an
impossible one before anything is decoded. Pure data and pure functions; the rollout itself is
:mod:`tokentree.api.rollouts`.

Which policies keep each leaf a sample of the target's law: ``Independent`` and ``Segments`` do
(every child draws its continuation with fresh randomness from the shared prefix). ``Uncertain``
does not: its alternative children start with a token chosen (the next most likely ones, not
drawn) and near-duplicate branches are pruned, so the joint law of the tree is LATR's, not the
target's; every token's logprob is still the target's exact one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import TokentreeError
from ..logprobs import MAX_TOP
from ..request import Request


@dataclass(frozen=True)
class Independent:
    """``n`` trajectories that share only the prompt."""

    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n)

    @property
    def roots(self) -> int:
        return self.n

    @property
    def most_leaves(self) -> int:
        return self.n

    @property
    def slots(self) -> int:
        """Sequences decoded together at most."""
        return self.n


@dataclass(frozen=True)
class Segments:
    """TreePO: ``width`` branches start from the prompt, and every live branch forks into ``width``
    children each ``segment_tokens`` tokens, ``depth`` times (the last segment runs to the end),
    as long as the tree stays within ``max_leaves`` leaves (branches that fork later keep going
    as one)."""

    width: int
    segment_tokens: int
    depth: int
    max_leaves: int = 16

    def __post_init__(self) -> None:
        for name in ("width", "segment_tokens", "max_leaves"):
            _positive(name, getattr(self, name))
        if self.depth < 0:
            raise TokentreeError(f"depth must be >= 0, got {self.depth}")
        if self.max_leaves < self.width:
            raise TokentreeError(
                f"max_leaves ({self.max_leaves}) must be at least width ({self.width})"
            )

    @property
    def roots(self) -> int:
        return self.width

    @property
    def most_leaves(self) -> int:
        return min(self.max_leaves, self.width ** (self.depth + 1))

    @property
    def slots(self) -> int:
        """Sequences decoded together at most: a fork adds its children before its parent stops."""
        return self.most_leaves + self.width - 1


@dataclass(frozen=True)
class Uncertain:
    """LATR: a branch forks where the sampling law is unsure, at a token whose top-1 and top-2
    probabilities differ by less than ``threshold``: into the sampled token's continuation and
    up to ``top_k - 1`` alternatives that start with the next most likely tokens there. A new
    branch runs ``lookahead`` tokens after its first before it may fork again; then an
    alternative whose ``lookahead`` tokens match an earlier sibling's at ``prune_similar`` or
    more (1 - edit distance / length; None: never pruned) is pruned. ``roots`` branches start
    from the prompt; the tree keeps at most ``max_leaves`` leaves."""

    threshold: float = 0.2
    top_k: int = 2
    lookahead: int = 8
    max_leaves: int = 16
    prune_similar: float | None = 0.9
    roots: int = 1

    def __post_init__(self) -> None:
        for name in ("top_k", "lookahead", "max_leaves", "roots"):
            _positive(name, getattr(self, name))
        if not 0 < self.threshold <= 1:
            raise TokentreeError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 2 <= self.top_k <= MAX_TOP:
            raise TokentreeError(
                f"top_k (children per fork) must be in [2, {MAX_TOP}], got {self.top_k}"
            )
        if self.prune_similar is not None and not 0 <= self.prune_similar <= 1:
            raise TokentreeError(f"prune_similar must be in [0, 1], got {self.prune_similar}")
        if self.max_leaves < self.roots:
            raise TokentreeError(
                f"max_leaves ({self.max_leaves}) must be at least roots ({self.roots})"
            )

    @property
    def most_leaves(self) -> int:
        return self.max_leaves

    @property
    def slots(self) -> int:
        """Sequences decoded together at most: a fork adds its children before its parent stops."""
        return self.max_leaves + 1

    def unsure(self, top: Sequence[tuple[int, float]]) -> bool:
        """Whether a position whose ``top`` (token, logprob), best first, forks."""
        if len(top) < 2:
            return False
        return math.exp(top[0][1]) - math.exp(top[1][1]) < self.threshold

    def alternatives(self, top: Sequence[tuple[int, float]], sampled: int) -> list:
        """The tokens (with logprobs) the alternative children start with: the most likely ones
        other than ``sampled``, within the sampling law's support: (token, logprob) pairs."""
        others = [(t, lp) for t, lp in top if t != sampled and lp > -math.inf]
        return others[: self.top_k - 1]


Policy = Union[Independent, Segments, Uncertain]
POLICIES = (Independent, Segments, Uncertain)


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokentreeError(f"{name} must be a positive integer, got {value!r}")


def similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """1 - the edit distance of two token sequences / the longer one's length (1: equal)."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def check(request: Request, policy: Policy, prompt_tokens: int) -> None:
    """Refuse what no rollout can do, before anything is decoded."""
    if not isinstance(policy, POLICIES):
        raise TokentreeError(
            f"unknown rollout policy {policy!r}: Independent, Segments or Uncertain"
        )
    if request.sampling.greedy and policy.most_leaves > 1:
        raise TokentreeError("rollouts sample their branches: give temperature > 0")
    if isinstance(policy, Segments) and policy.depth * policy.segment_tokens >= (
        request.max_new_tokens
    ):
        raise TokentreeError(
            f"{policy.depth} segments of {policy.segment_tokens} tokens leave nothing of "
            f"max_new_tokens {request.max_new_tokens} for the last one"
        )
    if isinstance(policy, Uncertain):
        _check_uncertain(request, policy)
    if prompt_tokens < 1:
        raise TokentreeError("the prompt is empty")


def _check_uncertain(request: Request, policy: Uncertain) -> None:
    if policy.lookahead >= request.max_new_tokens:
        raise TokentreeError(
            f"lookahead ({policy.lookahead}) must be shorter than max_new_tokens "
            f"({request.max_new_tokens})"
        )
    s = request.sampling
    unwarped = s.temperature == 1 and not s.top_k and s.top_p == 1 and not s.min_p
    if request.logprobs_mode == "raw_logprobs" and not (unwarped and request.constraint is None):
        raise TokentreeError(
            "the uncertain policy forks on the law tokens are drawn from, and the raw logprobs "
            "differ from it under this request's warping or constraint: give "
            "logprobs_mode='processed_logprobs'"
        )
