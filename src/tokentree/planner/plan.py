"""Hardware-aware tree size: the target's verify-cost curve, calibrated acceptance, the per-step
cut.

Each step the drafter proposes a large candidate tree; the planner estimates how likely each node
is to be accepted (online calibration by depth and drafter score) and keeps the number of nodes n
that maximises the step's expected new tokens minus what its verify time is worth at the loop's
own throughput, ``1 + (sum of the n best estimates) - rate * t(n + 1)`` (Dinkelbach's rule for the
long-run ratio tokens / seconds: a step that promises more than the average gets a larger tree,
not a smaller one). t is the measured profile, corrected online by the observed verify times.
n = 0 is plain decoding, so when drafts stop paying the planner stops drafting.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import TokentreeError
from ..sampling import Acceptance
from ..tree import TokenTree
from .calibration import TILT_LEVELS, AcceptanceCalibrator, RequestTilt
from .ledger import RequestLedger
from .profile import CostProfile


@dataclass
class PlannerConfig:
    """Planner options."""

    max_nodes: int = 64  # candidate tree size asked from the drafter (hard cap on drafted nodes)

    def __post_init__(self) -> None:
        if not 1 <= self.max_nodes <= 512:
            raise TokentreeError(f"planner max_nodes must be in [1, 512], got {self.max_nodes}")


HYSTERESIS = 0.05  # tokens: a step switches between drafting and plain decoding only on this lead
PROBE_NODES = 4  # the most nodes a probe verifies ...
PROBE_COST = 1.5  # ... and at most this many one-token steps' time (at least one node)
PLAIN_CANDIDATE = 8  # candidate nodes asked for while the planner decodes plainly ...
SHADOW_EVERY_MAX = 8  # ... on every step, or down to one in this many while shadows miss
RATE_DECAY = 0.95  # the loop's throughput averages over about the last 20 steps


@dataclass
class ProbeSchedule:
    """When plain decoding looks best, still verify a small tree every ``interval`` steps.

    Without probes a cautious prior would keep the planner from ever seeing an acceptance. The
    interval doubles (from ``shortest`` up to ``longest``) after a probe that did not pay for its
    verify time, so a workload where trees never pay costs at most a few probes; after a probe
    that paid the next step probes again, so a request whose drafts start paying again gathers
    the evidence to draft within a few steps.
    """

    shortest: int = 16
    longest: int = 512
    interval: int = 16
    waited: int = 0
    probing: bool = False

    def due(self) -> bool:
        self.waited += 1
        self.probing = self.waited >= self.interval
        if self.probing:
            self.waited = 0
        return self.probing

    def observe(self, drafted: int, paid: bool) -> None:
        if self.probing and drafted:
            self.interval = 1 if paid else min(self.longest, max(self.shortest, 2 * self.interval))
        if drafted:
            self.waited = 0
        self.probing = False


class VerifyCost:
    """t(n), the seconds to verify an n-node tree in this run: the profile's curve at the current
    context, rescaled and reshaped by the verify times the loop observes.

    ``load`` is an exponential average of observed seconds over the profile's t(n) at the
    observation's context (machine load, threads: the level of the whole curve; a profile with a
    single context also leaves the growth with the context to it). Each profile size bucket (the
    sizes up to and including that profile size) learns a residual, its observations relative
    to ``load``, shrunk toward 1 with ``strength`` pseudo-observations and forgotten
    exponentially. Sizes never verified keep the profile's shape; sizes verified often follow
    what this run measured, relative to each other.
    """

    def __init__(
        self, profile: CostProfile, strength: float = 4.0, forget: float = 0.99, decay: float = 0.9
    ):
        self.profile, self.strength, self.forget, self.decay = profile, strength, forget, decay
        self.load = 1.0
        self.residual_sum = [0.0] * len(profile.sizes)
        self.residual_weight = [0.0] * len(profile.sizes)

    def _bucket(self, n: int) -> int:
        return min(bisect.bisect_left(self.profile.sizes, n), len(self.profile.sizes) - 1)

    def _residual(self, bucket: int) -> float:
        return (self.residual_sum[bucket] + self.strength) / (
            self.residual_weight[bucket] + self.strength
        )

    def seconds(self, n: int, context: int = 0) -> float:
        """Predicted verify seconds of an ``n``-node tree (root included) after ``context`` cached
        tokens; never below one node's, even where the learned residuals of two buckets disagree
        (a drafted node is never free)."""
        at = self.profile.seconds_at
        one = self.load * at(1, context) * self._residual(self._bucket(1))
        return max(one, self.load * at(n, context) * self._residual(self._bucket(n)))

    def observe(self, n: int, seconds: float, context: int = 0) -> None:
        level = seconds / self.profile.seconds_at(n, context)  # the load this observation implies
        for k in range(len(self.residual_sum)):
            self.residual_sum[k] *= self.forget
            self.residual_weight[k] *= self.forget
        bucket = self._bucket(n)
        self.residual_sum[bucket] += level / self.load  # relative to the load before it
        self.residual_weight[bucket] += 1.0
        self.load += (1 - self.decay) * (level - self.load)


class Planner:
    """Chooses each step's drafted-node count from the verify cost and calibrated acceptance.

    What it learns is shared by the requests it plans (acceptance calibration, the verify-cost
    curve, the loop's throughput); :meth:`begin_request` starts a request's own evidence (its tilts
    and probe schedule), which dominates the shared estimates within a few steps.
    """

    def __init__(
        self, profile: CostProfile, config: PlannerConfig | None = None, replayable: bool = False
    ):
        """``replayable``: ignore measured times (t(n) and the loop's rate come from the profile
        alone), so its choices depend only on what was accepted: a seeded request replays."""
        self.profile = profile
        self.replayable = replayable
        self.config = config or PlannerConfig()
        self.calibrator = AcceptanceCalibrator()
        self.cost = VerifyCost(profile)  # t(n) at the current context, learned online
        self.context = 0  # cached tokens of the sequence being planned (see at)
        # exponentially weighted sums over the observed steps
        self.recent_tokens = self.recent_seconds = 0.0
        self.recent_draft_s = self.recent_steps = 0.0
        self.probe = ProbeSchedule()
        self.tilts = [RequestTilt() for _ in range(TILT_LEVELS)]
        # the first level of a candidate not verified (see observe)
        self._shadow: TokenTree | None = None
        self._chosen = self.config.max_nodes  # the last step's choice (see candidate_size)
        self._shadow_every = 1  # plain steps draft a candidate once in this many (see observe)
        self._asked = True  # the last step drafted a candidate
        self._since_candidate = 0  # plain steps without a candidate since the last one
        self._fresh = False  # begin_request: a request whose first tree is still to be judged
        self.ledger = RequestLedger()  # this request against plain decoding (the guarantee)

    def begin_request(self) -> None:
        """A new request: forget the previous request's tilts; probe soon."""
        self.tilts = [RequestTilt() for _ in range(TILT_LEVELS)]
        self.probe = ProbeSchedule()
        self._chosen = self.config.max_nodes
        self._shadow_every, self._since_candidate = 1, 0
        self._fresh = True  # no step of this request has judged a drafted node yet
        self.ledger = RequestLedger()

    def fork(self) -> Planner:
        """A planner for a sequence decoded beside this one's (a batch): its own request evidence
        (tilts, probes, throughput) over this one's calibration and verify cost, which all forks
        keep learning."""
        other = copy.copy(self)
        other.begin_request()
        other._shadow = None
        return other

    def at(self, context: int) -> None:
        """The sequence now holds ``context`` tokens: the verify cost of the coming steps is the
        profile's at that length."""
        self.context = context

    def seconds(self, n: int) -> float:
        """Predicted verify seconds of an ``n``-node tree at the current context."""
        return self.cost.seconds(n, self.context)

    def candidate_size(self) -> int:
        """Nodes to ask the drafter for: ``max_nodes`` while trees are verified; while the planner
        decodes plainly only PLAIN_CANDIDATE, enough for the shadow's first level, a probe and a
        draft sure enough to start drafting again (the next step asks for the full size), at a
        fraction of the drafting and estimating time of a full candidate; and while the shadows
        of plain steps keep missing, only on one plain step in up to SHADOW_EVERY_MAX (0 on the
        others: no drafting, no learning, a plain step at llama.cpp's own cost)."""
        if self._chosen:
            return self.config.max_nodes
        if self._since_candidate + 1 < self._shadow_every:
            return 0
        return min(self.config.max_nodes, PLAIN_CANDIDATE)

    @property
    def rate(self) -> float:
        """Tokens per second of the loop so far, never below that of plain steps with the same
        drafting time (a root-only step is always available, so a tree must beat it; the drafting
        is paid either way)."""
        drafting = self.recent_draft_s / self.recent_steps if self.recent_steps else 0.0
        plain = 1.0 / (self.seconds(1) + drafting)
        return (
            max(plain, self.recent_tokens / self.recent_seconds) if self.recent_seconds else plain
        )

    def estimates(self, tree: TokenTree, forced: frozenset[int] = frozenset()) -> list[float]:
        """[n] acceptance estimates for this request: the shared calibration times its tilts.

        The request's own evidence weighs more than what other requests taught: the first level's
        tilt learns from every step (plain steps judge their shadow at no cost), and deeper levels
        start from it when it is below 1, so a request whose drafts miss at depth one is trusted
        less deeper too until its deeper nodes are judged (a first level that hits more than
        expected lifts nothing deeper: one level's luck must not buy a large tree). ``forced``:
        nodes a grammar forces, calibrated apart (see AcceptanceCalibrator)."""
        shallow = self.tilts[0].factor
        deeper = [tilt.factor_toward(min(1.0, shallow)) for tilt in self.tilts[1:]]
        return self.calibrator.estimate(tree, [shallow, *deeper], forced)

    def step_value(self, estimates: Sequence[float], n: int) -> float:
        """Expected new tokens with the ``n`` best of ``estimates`` (sorted, descending) minus the
        tokens the loop would make at its own rate in the time verifying them costs."""
        return 1 + sum(estimates[:n]) - self.rate * self.seconds(n + 1)

    def choose(self, tree: TokenTree, forced: frozenset[int] = frozenset()) -> int:
        """How many of ``tree``'s drafted nodes to verify (0 = plain decoding).

        The best size by :meth:`step_value`, with hysteresis: after a drafted step a tree is
        verified while it beats a plain step, but after a plain step only once it beats it by
        HYSTERESIS expected tokens, so values that hover at the edge (one noisy timing) do not
        flip the choice back and forth."""
        if len(tree) == 1:  # nothing drafted (a plain step's skipped candidate)
            return self.settle_choice(tree, 0)
        ranked = sorted(self.estimates(tree, forced)[1:], reverse=True)
        rate = self.rate
        plain_value = 1 - rate * self.seconds(1)
        best_n, best_value = 0, -math.inf
        gained = 0.0
        for n in range(1, len(ranked) + 1):
            gained += ranked[n - 1]
            value = 1 + gained - rate * self.seconds(n + 1)
            if value > best_value:
                best_n, best_value = n, value
        lead = 0.0 if self._chosen else HYSTERESIS
        return self.settle_choice(tree, best_n if best_value > plain_value + lead else 0)

    def settle_choice(self, tree: TokenTree, n: int) -> int:
        """The size to verify of candidate ``tree`` when the cost rule chose ``n`` (here, or for a
        batch by :func:`choose_batch`), after this request's own rules: its first tree is
        probe-sized, every tree fits its risk budget (:meth:`risk_cap`); a plain step verifies a
        probe now and then, and otherwise keeps the
        candidate's first level as shadow evidence (see :meth:`observe`). Recorded for the next
        candidate's size."""
        self._shadow = None
        self._asked = self.candidate_size() > 0  # this step drafted a candidate
        n = self.first_tree_cap(n)
        drafted = len(tree) - 1
        n = min(n, self.risk_cap()) if n else 0
        if n == 0 and drafted and self.probe.due():
            n = min(drafted, self.probe_size())  # a small tree now and then: deeper evidence
        if n == 0 and drafted:
            self._shadow = tree.subset(tree.children[0])
        self._chosen = n
        return n

    def _space_candidates(self, hit: bool) -> None:
        """After a plain step: a candidate whose shadow hit brings candidates back on every
        plain step; one that missed (or had no node) halves their frequency, down to one in
        SHADOW_EVERY_MAX."""
        if not self._asked:
            self._since_candidate += 1
            return
        self._since_candidate = 0
        self._shadow_every = 1 if hit else min(SHADOW_EVERY_MAX, 2 * self._shadow_every)

    def first_tree_cap(self, n: int) -> int:
        """``n``, at most probe-sized while no tree of this request has been judged: what earlier
        requests taught may not apply to it."""
        return min(n, self.probe_size()) if self._fresh else n

    def risk_cap(self) -> int:
        """The most drafted nodes this request may verify now: were none accepted, the step
        would lose t(n + 1) - t(1) against a plain step, which must fit the ledger's budget (its
        allowance plus what its trees have won; see :class:`RequestLedger`) or at most a probe's
        extra time (one node at least), so a request that has lost can still win it back with
        small trees, when the value rule says they pay. No cap
        before a step of this request is timed (its first tree is probe-sized anyway; a batch's
        sequences share their forward's time and are not capped)."""
        if not self.ledger.step_s:
            return self.config.max_nodes
        one = self.seconds(1)
        budget = max(self.ledger.budget_s, (PROBE_COST - 1) * one)
        low, high = 0, self.config.max_nodes  # t(n + 1) grows with n: the largest n that fits
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.seconds(mid + 1) - one <= budget else (low, mid - 1)
        return max(1, low)  # one node at least: plain steps alone never win a loss back

    def probe_size(self) -> int:
        """Nodes of a probe: up to PROBE_NODES, as long as verifying them costs at most PROBE_COST
        steps."""
        limit = PROBE_COST * self.seconds(1)
        return max([1] + [n for n in range(1, PROBE_NODES + 1) if self.seconds(n + 1) <= limit])

    def cut(self, tree: TokenTree, n: int, forced: frozenset[int] = frozenset()) -> TokenTree:
        """``tree`` restricted to its ``n`` drafted nodes with the highest estimates
        (ancestor-closed, see :meth:`TokenTree.ranked`)."""
        return tree.subset(tree.ranked(self.estimates(tree, forced))[:n])

    def observe(
        self,
        tree: TokenTree,
        acceptance: Acceptance,
        draft_s: float,
        verify_s: float | None,
        forced: frozenset[int] = frozenset(),
    ) -> None:
        """Learn from a verified step: acceptance per node (``forced`` nodes: the grammar's),
        drafting time, and the verify cost (``verify_s`` None: the step's time says nothing about
        the tree, e.g. it carried prompt tokens)."""
        judged, verdict = (
            tree,
            acceptance,
        )  # what calibrates: the verified tree, or a plain step's shadow
        if len(tree) == 1 and self._shadow is not None and self._shadow.tokens[0] == tree.tokens[0]:
            judged, verdict = self._shadow, shadow_acceptance(self._shadow, acceptance.bonus)
        if len(tree) == 1:
            self._space_candidates(judged is not tree and verdict.accepted > 0)
        self._shadow = None
        forced = forced if judged is tree else frozenset()
        for tilt, evidence in zip(self.tilts, self.calibrator.update(judged, verdict, forced)):
            tilt.observe(*evidence)
        self._fresh = self._fresh and len(judged) == 1
        paid = acceptance.accepted + 1 >= self.seconds(len(tree)) / self.seconds(1)
        self.probe.observe(len(tree) - 1, paid)
        if verify_s is None:
            return
        if self.replayable:
            draft_s, verify_s = 0.0, self.seconds(len(tree))
        else:
            self.cost.observe(len(tree), verify_s, self.context)
        self.recent_tokens = RATE_DECAY * self.recent_tokens + acceptance.accepted + 1
        self.recent_seconds = RATE_DECAY * self.recent_seconds + draft_s + verify_s
        self.recent_draft_s = RATE_DECAY * self.recent_draft_s + draft_s
        self.recent_steps = RATE_DECAY * self.recent_steps + 1

    def account(
        self, emitted: int, step_s: float, nodes: int, verify_s: float | None = None
    ) -> None:
        """The request's ledger: a timed step of an ``nodes``-node tree emitted ``emitted`` tokens
        in ``step_s`` seconds of wall time. A plain step's own verify (``verify_s``) is what plain
        decoding cost just then, so it only counts the loop's overhead as lost, whatever the
        machine's load; a tree step is priced at this run's learned t(1). (A replayable planner
        counts the profile's times instead, so its choices stay independent of timings.)"""
        plain = verify_s if nodes == 1 and verify_s is not None else self.seconds(1)
        if self.replayable:
            step_s, plain = self.seconds(nodes), self.seconds(1)
        self.ledger.record(emitted, step_s, plain)


def choose_batch(
    ranked: Sequence[Sequence[float]], seconds: Callable[[int], float], rate: float
) -> list[int]:
    """How many drafted nodes of each sequence to verify when all of them share one forward.

    ``ranked[i]``: sequence i's acceptance estimates of its drafted nodes, descending (so any
    prefix is ancestor-closed); ``seconds(m)``: verify time of m rows in one forward; ``rate``:
    the batch's tokens per second. Takes the k best estimates over all sequences for the k that
    maximises ``sum of them - rate * seconds(len(ranked) + k)`` (every sequence verifies its root):
    a node is verified when it beats its marginal cost in this step, whichever sequence it serves.
    """
    merged = heapq.merge(*[[(-estimate, i) for estimate in row] for i, row in enumerate(ranked)])
    counts, best = [0] * len(ranked), [0] * len(ranked)
    gained, best_value = 0.0, -rate * seconds(len(ranked))
    for k, (negative, i) in enumerate(merged, start=1):
        gained -= negative
        counts[i] += 1
        value = gained - rate * seconds(len(ranked) + k)
        if value > best_value:
            best_value, best = value, list(counts)
    return best


def shadow_acceptance(shadow: TokenTree, token: int) -> Acceptance:
    """What verifying ``shadow`` (the root and its children) would have accepted, judged by the
    ``token`` plain decoding produced: exact for greedy decoding, and for sampled decoding a child
    matches with the probability V-det accepts a first child, p(child). Plain steps thus keep
    calibrating depth-1 estimates at no cost, so a request whose drafts start paying again is
    noticed at once, without waiting for a probe."""
    hit = shadow.child_with_token(0, token)
    return Acceptance((0,) if hit is None else (0, hit), token)
