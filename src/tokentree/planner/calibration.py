"""Acceptance estimates: per-node rates calibrated online by depth, drafter score and rank,
tilted per request by what its own trees have shown."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..sampling import Acceptance
from ..tree import TokenTree

MAX_RATE = 0.98  # no conditional acceptance rate is estimated above this
FORCED_LEVEL = 1  # the score level of nodes a grammar forced (drafter scores give levels <= 0)
# their rate before any is judged: the target nearly always spells forced text the grammar's way
# (a prior as cautious as a drafter's would keep a fresh planner from verifying them at all where
# two rows cost 1.5 steps, as on llama.cpp on a 2-core CPU)
FORCED_PRIOR = 0.9
TILT_LEVELS = 2  # first-level nodes and deeper ones get a tilt each


def tilt_level(depth: int) -> int:
    """0 for the root's children, 1 below: plain steps judge only the first level (shadow
    evidence), so its shared rates can move far from the deeper ones', and one ratio cannot
    correct both."""
    return min(depth, TILT_LEVELS) - 1


class AcceptanceCalibrator:
    """P(node accepted) learned online from verified trees.

    A node can only be accepted if its parent was, so the calibrator learns the conditional rate
    P(accepted | parent accepted) per bin (depth, drafter-score level, sibling rank) from the nodes
    whose parent was accepted, and a node's estimate is its parent's times that rate. Counts are
    exponentially forgotten and smoothed hierarchically: a bin's rate is shrunk toward its
    (score level, rank) group's rate over all depths, which is shrunk toward ``prior_rate`` (so
    an untrained estimate is ``prior_rate ** depth``, and a depth seen rarely borrows from the
    others instead of staying at the prior). Estimates never increase from a parent to its child,
    nor from a sibling to the next (drafters list better siblings first), so the best n nodes of
    any tree form an ancestor-closed set.
    """

    def __init__(self, prior_rate: float = 0.6, strength: float = 3.0, forget: float = 0.998):
        self.prior_rate, self.strength, self.forget = prior_rate, strength, forget
        self.counts: dict[tuple[int, ...], list[float]] = {}  # bin or group -> [accepted, proposed]

    @staticmethod
    def bin_of(depth: int, score: float, rank: int) -> tuple[int, int, int]:
        level = 0 if score >= 1 else max(-12, math.floor(math.log2(max(score, 1e-9))))
        return min(depth, 16), level, min(rank, 2)

    def _rate(self, key: tuple[int, int, int]) -> float:
        group_hits, group_trials = self.counts.get(key[1:], (0.0, 0.0))
        prior = FORCED_PRIOR if key[1] == FORCED_LEVEL else self.prior_rate
        group_rate = (group_hits + self.strength * prior) / (group_trials + self.strength)
        hits, trials = self.counts.get(key, (0.0, 0.0))
        return (hits + self.strength * group_rate) / (trials + self.strength)

    def _bins(
        self, tree: TokenTree, forced: frozenset[int] = frozenset()
    ) -> list[tuple[int, int, int] | None]:
        """Each node's bin; ``forced`` nodes (tokens a grammar forces, see GrammarState.shape) get
        bins of their own: their tokens are the grammar's, not a drafter's guess (they are
        rejected only where the target spells the forced text with other tokens)."""
        scores = tree.scores or (1.0,) * len(tree)
        ranks = [0] * len(tree)
        for kids in tree.children:
            for rank, kid in enumerate(kids):
                ranks[kid] = rank
        return [None] + [
            (min(tree.depths[v], 16), FORCED_LEVEL, 0)
            if v in forced
            else self.bin_of(tree.depths[v], scores[v], ranks[v])
            for v in range(1, len(tree))
        ]

    def estimate(
        self,
        tree: TokenTree,
        tilts: Sequence[float] = (1.0,) * TILT_LEVELS,
        forced: frozenset[int] = frozenset(),
    ) -> list[float]:
        """[n] estimated acceptance probability per node (1 for the root); each conditional rate is
        multiplied by the tilt of its level (this request's evidence, see :class:`RequestTilt`;
        ``tilts[tilt_level(depth)]``; not for ``forced`` nodes, whose rate is no drafter's),
        capped at MAX_RATE."""
        previous_sibling = {
            after: before for kids in tree.children for before, after in zip(kids, kids[1:])
        }
        bins = self._bins(tree, forced)
        estimates = [1.0] * len(tree)
        for node in range(1, len(tree)):  # parents and earlier siblings come first in node order
            tilt = 1.0 if node in forced else tilts[tilt_level(tree.depths[node])]
            estimates[node] = estimates[tree.parents[node]] * min(
                MAX_RATE, tilt * self._rate(bins[node])
            )
            if node in previous_sibling:
                estimates[node] = min(estimates[node], estimates[previous_sibling[node]])
        return estimates

    def update(
        self, tree: TokenTree, acceptance: Acceptance, forced: frozenset[int] = frozenset()
    ) -> list[tuple[float, float]]:
        """Count each node whose parent was accepted: one trial, a hit if it was accepted too.

        Returns per tilt level (see :func:`tilt_level`) the (hits, expected hits) of those trials,
        expected by the rates before this update (``forced`` nodes are no evidence of the drafter:
        they count in their own bins only).
        """
        for counts in self.counts.values():
            counts[0] *= self.forget
            counts[1] *= self.forget
        accepted = set(acceptance.nodes)
        bins = self._bins(tree, forced)
        evidence = [[0.0, 0.0] for _ in range(TILT_LEVELS)]
        for node in range(1, len(tree)):
            if tree.parents[node] not in accepted:
                continue
            if node not in forced:
                level = evidence[tilt_level(tree.depths[node])]
                level[0] += node in accepted
                level[1] += self._rate(bins[node])
            for key in (bins[node], bins[node][1:]):
                counts = self.counts.setdefault(key, [0.0, 0.0])
                counts[0] += node in accepted
                counts[1] += 1
        return [(hits, expected) for hits, expected in evidence]


@dataclass
class RequestTilt:
    """How this request's acceptances compare with what the shared calibration expected.

    The calibrator learns over all requests and forgets slowly, so after a run of code requests
    it still expects long accepted runs when a summary request begins. The tilt is the ratio of
    this request's hits to the hits the calibrator expected, over exponentially forgotten recent
    steps with trials (``decay`` per such step, about the last four) with ``strength`` pseudo-hits
    at ratio 1 (kept small: a prior that outweighs a few steps' evidence keeps a request that
    accepts little drafting at a loss): a request that accepts nothing brings its estimates down
    within two or three steps, one that accepts more than the others lifts them. Reset at every
    request.
    """

    decay: float = 0.75
    strength: float = 0.3
    hits: float = 0.0
    expected: float = 0.0

    @property
    def factor(self) -> float:
        return self.factor_toward(1.0)

    def factor_toward(self, prior: float) -> float:
        """The tilt with its pseudo-hits at ratio ``prior`` instead of 1: deeper levels, which
        plain steps never judge, start from this request's first-level tilt (see
        :meth:`Planner.estimates`)."""
        return (self.hits + self.strength * prior) / (self.expected + self.strength)

    def observe(self, hits: float, expected: float) -> None:
        """One step's evidence; a step without trials (plain decoding) changes nothing."""
        if not expected and not hits:
            return
        self.hits = self.decay * self.hits + hits
        self.expected = self.decay * self.expected + expected
