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
import hashlib
import heapq
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .backends.base import Backend
from .errors import TokentreeError
from .files import write_atomically
from .ledger import RequestLedger
from .models import cache_dir
from .sampling import Acceptance
from .tree import TokenTree

PROFILE_SIZES = tuple(range(1, 33)) + (
    48,
    64,
    96,
    128,
)  # every size up to 32: CPU curves are not smooth
PROFILE_VERSION = 2
PROFILE_CONTEXT = 256  # cached tokens of the default profile
LONG_PROFILE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)  # sizes measured at longer contexts


@dataclass(frozen=True)
class CostProfile:
    """Verify latency of trees of ``sizes[i]`` nodes (root included): ``seconds[i]``, at
    ``context_len``; ``longer``: the same measured at longer contexts (ascending), so that
    :meth:`seconds_at` follows the context a request has reached."""

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    context_len: int
    key: str = ""
    measured_at: float = 0.0
    longer: tuple[CostProfile, ...] = ()

    def __post_init__(self) -> None:
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError("profile sizes must be ascending, distinct and start at 1")
        if len(self.seconds) != len(self.sizes) or min(self.seconds) <= 0:
            raise ValueError("profile needs one positive time per size")
        contexts = [self.context_len] + [p.context_len for p in self.longer]
        if contexts != sorted(set(contexts)) or any(p.longer for p in self.longer):
            raise ValueError("longer profiles must be at ascending, longer contexts")

    def ratio(self, n: int) -> float:
        """t(n) / t(1), linear between measured sizes and beyond the last two."""
        sizes, secs = self.sizes, self.seconds
        if n <= 1 or len(sizes) == 1:
            return 1.0 if n <= 1 else secs[-1] / secs[0]
        i = next((k for k in range(1, len(sizes)) if sizes[k] >= n), len(sizes) - 1)
        lo, hi = i - 1, i
        slope = (secs[hi] - secs[lo]) / (sizes[hi] - sizes[lo])
        return max(secs[lo] + slope * (n - sizes[lo]), secs[0]) / secs[0]

    def seconds_at(self, n: int, context: int) -> float:
        """t(n) after ``context`` cached tokens: linear between the measured contexts, the
        shortest's below it, and beyond the longest along the last two's slope (never falling:
        attention grows with the context)."""
        curves = (self, *self.longer)
        points = [(p.context_len, p.seconds[0] * p.ratio(n)) for p in curves]
        if len(points) == 1 or context <= points[0][0]:
            return points[0][1]
        i = next((k for k in range(1, len(points)) if points[k][0] >= context), len(points) - 1)
        (c0, t0), (c1, t1) = points[i - 1], points[i]
        slope = (t1 - t0) / (c1 - c0)
        if context > c1:
            return t1 + max(slope, 0.0) * (context - c1)
        return t0 + slope * (context - c0)

    def to_dict(self) -> dict:
        return {"version": PROFILE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> CostProfile:
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')} is not {PROFILE_VERSION}")
        return cls(
            tuple(data["sizes"]),
            tuple(data["seconds"]),
            int(data["context_len"]),
            data.get("key", ""),
            float(data.get("measured_at", 0.0)),
            tuple(cls.from_dict({"version": PROFILE_VERSION, **p}) for p in data.get("longer", ())),
        )


def probe_tree(n: int, vocab_size: int, seed: int = 0, max_leaves: int | None = None) -> TokenTree:
    """A random tree of ``n`` nodes shaped like real drafts (mostly deep, some branching).

    With ``max_leaves`` a node that would open one leaf too many extends the previous node instead.
    """
    gen = torch.Generator().manual_seed(seed + n)
    parents, has_child, leaves = [-1], [False] * n, 1
    for i in range(1, n):
        parent = max(0, i - 1 - int(torch.randint(0, 3, (), generator=gen)))
        if has_child[parent] and max_leaves is not None and leaves >= max_leaves:
            parent = i - 1  # the newest node is always a leaf: extending it keeps the count
        leaves += has_child[parent]
        has_child[parent] = True
        parents.append(parent)
    tokens = torch.randint(3, min(1000, vocab_size), (n,), generator=gen).tolist()
    return TokenTree(tuple(tokens), tuple(parents))


def padded_profile(profile: CostProfile, pad: Callable[[int], int]) -> CostProfile:
    """The profile of a backend that runs a tree of n nodes as ``pad(n)`` rows, measured at
    padded sizes: every n up to the largest measured size costs what ``pad(n)`` cost (a step
    curve, where interpolating between the measured sizes would price 9-15 nodes below 16)."""

    def spread(curve: CostProfile) -> CostProfile:
        cost = dict(zip(curve.sizes, curve.seconds))
        sizes = tuple(n for n in range(1, curve.sizes[-1] + 1) if pad(n) in cost)
        seconds = tuple(cost[pad(n)] for n in sizes)
        return replace(curve, sizes=sizes, seconds=seconds)

    return replace(spread(profile), longer=tuple(spread(curve) for curve in profile.longer))


def measure_profile(
    backend: Backend,
    sizes: Sequence[int] = PROFILE_SIZES,
    context_len: int = PROFILE_CONTEXT,
    repeats: int = 3,
    key: str = "",
    progress=None,
    chain: bool = False,
    longer: Sequence[int] = (),
) -> CostProfile:
    """Time ``backend.verify`` for each tree size after a ``context_len``-token prefix (median of
    repeats); trees shaped like real drafts, or single chains with ``chain``. ``longer``: also
    after these longer contexts (at LONG_PROFILE_SIZES), as the profile's ``longer`` curves."""
    seconds = _verify_times(backend, sizes, context_len, repeats, progress, chain)
    curves = tuple(
        CostProfile(
            LONG_PROFILE_SIZES,
            _verify_times(backend, LONG_PROFILE_SIZES, length, repeats, progress, chain),
            length,
        )
        for length in longer
    )
    return CostProfile(tuple(sizes), tuple(seconds), context_len, key, time.time(), curves)


NOISE = 1.15  # a tree timed this much dearer than a larger one was disturbed: timed again
REMEASURE_ROUNDS = 2


def _verify_times(
    backend: Backend, sizes: Sequence[int], context_len: int, repeats: int, progress, chain: bool
) -> list[float]:
    """t(n) for each size: the fastest of ``repeats`` timings (interference only ever slows a
    verify down); sizes timed dearer than a larger tree (:func:`disturbed`) are timed again, up to
    REMEASURE_ROUNDS times, and what disorder remains is smoothed by :func:`isotonic`."""
    context = torch.randint(
        3, min(1000, backend.vocab_size), (context_len,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    backend.reset()
    backend.prefill(context)
    seconds = []
    for n in sizes:
        seconds.append(_time_verify(backend, context, n, repeats, chain))
        if progress is not None:
            progress(n, context_len, seconds[-1])
    for _ in range(REMEASURE_ROUNDS):
        for i in disturbed(seconds):
            seconds[i] = min(seconds[i], _time_verify(backend, context, sizes[i], repeats, chain))
    backend.reset()
    return isotonic(seconds)


def _time_verify(backend: Backend, context: list[int], n: int, repeats: int, chain: bool) -> float:
    """The fastest of ``repeats`` verifies of an n-node probe tree after ``context`` (one more
    run first warms up); the backend is back at ``context`` after."""
    tree = probe_tree(n, backend.vocab_size, max_leaves=1 if chain else backend.max_leaves)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.verify(tree)
        backend.commit((0,))
        times.append(time.perf_counter() - start)
        backend.prefill(context)  # back to the prefix
    return min(times[1:])


def disturbed(seconds: Sequence[float]) -> list[int]:
    """Indices of timings more than NOISE times a later (larger) size's: a verify of more nodes
    is never cheaper, so these were slowed by something else."""
    later_min = math.inf
    out = []
    for i in range(len(seconds) - 1, -1, -1):
        if seconds[i] > NOISE * later_min:
            out.append(i)
        later_min = min(later_min, seconds[i])
    return sorted(out)


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent
    violators): what remains of timing disorder, averaged away."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def profile_key(source: str, precision: str, device: str) -> str:
    """What a profile depends on: model, precision (dtype or gguf), device, threads and torch
    version."""
    text = f"{source}|{precision}|{device}|{torch.get_num_threads()}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_path(key: str) -> Path:
    return cache_dir() / "profiles" / f"{key}.json"


def load_profile(key: str, max_age_days: float = 30.0) -> CostProfile | None:
    """The cached profile for ``key``, or None when missing, stale, unreadable or disordered
    (a larger tree timed cheaper than a smaller one beyond noise: measured under load, so the
    planner would chase its dips; measured again)."""
    path = profile_path(key)
    try:
        profile = CostProfile.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - profile.measured_at > max_age_days * 86400:
        return None
    if any(disturbed(curve.seconds) for curve in (profile, *profile.longer)):
        return None
    return profile


def save_profile(profile: CostProfile) -> Path:
    return write_atomically(
        profile_path(profile.key), (json.dumps(profile.to_dict(), indent=1) + "\n").encode()
    )


MAX_RATE = 0.98  # no conditional acceptance rate is estimated above this
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
        group_rate = (group_hits + self.strength * self.prior_rate) / (group_trials + self.strength)
        hits, trials = self.counts.get(key, (0.0, 0.0))
        return (hits + self.strength * group_rate) / (trials + self.strength)

    def _bins(self, tree: TokenTree) -> list[tuple[int, int, int] | None]:
        scores = tree.scores or (1.0,) * len(tree)
        ranks = [0] * len(tree)
        for kids in tree.children:
            for rank, kid in enumerate(kids):
                ranks[kid] = rank
        return [None] + [
            self.bin_of(tree.depths[v], scores[v], ranks[v]) for v in range(1, len(tree))
        ]

    def estimate(
        self, tree: TokenTree, tilts: Sequence[float] = (1.0,) * TILT_LEVELS
    ) -> list[float]:
        """[n] estimated acceptance probability per node (1 for the root); each conditional rate is
        multiplied by the tilt of its level (this request's evidence, see :class:`RequestTilt`;
        ``tilts[tilt_level(depth)]``), capped at MAX_RATE."""
        previous_sibling = {
            after: before for kids in tree.children for before, after in zip(kids, kids[1:])
        }
        bins = self._bins(tree)
        estimates = [1.0] * len(tree)
        for node in range(1, len(tree)):  # parents and earlier siblings come first in node order
            tilt = tilts[tilt_level(tree.depths[node])]
            estimates[node] = estimates[tree.parents[node]] * min(
                MAX_RATE, tilt * self._rate(bins[node])
            )
            if node in previous_sibling:
                estimates[node] = min(estimates[node], estimates[previous_sibling[node]])
        return estimates

    def update(self, tree: TokenTree, acceptance: Acceptance) -> list[tuple[float, float]]:
        """Count each node whose parent was accepted: one trial, a hit if it was accepted too.

        Returns per tilt level (see :func:`tilt_level`) the (hits, expected hits) of those trials,
        expected by the rates before this update.
        """
        for counts in self.counts.values():
            counts[0] *= self.forget
            counts[1] *= self.forget
        accepted = set(acceptance.nodes)
        bins = self._bins(tree)
        evidence = [[0.0, 0.0] for _ in range(TILT_LEVELS)]
        for node in range(1, len(tree)):
            if tree.parents[node] not in accepted:
                continue
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

    def estimates(self, tree: TokenTree) -> list[float]:
        """[n] acceptance estimates for this request: the shared calibration times its tilts.

        The request's own evidence weighs more than what other requests taught: the first level's
        tilt learns from every step (plain steps judge their shadow at no cost), and deeper levels
        start from it when it is below 1, so a request whose drafts miss at depth one is trusted
        less deeper too until its deeper nodes are judged (a first level that hits more than
        expected lifts nothing deeper: one level's luck must not buy a large tree)."""
        shallow = self.tilts[0].factor
        deeper = [tilt.factor_toward(min(1.0, shallow)) for tilt in self.tilts[1:]]
        return self.calibrator.estimate(tree, [shallow, *deeper])

    def step_value(self, estimates: Sequence[float], n: int) -> float:
        """Expected new tokens with the ``n`` best of ``estimates`` (sorted, descending) minus the
        tokens the loop would make at its own rate in the time verifying them costs."""
        return 1 + sum(estimates[:n]) - self.rate * self.seconds(n + 1)

    def choose(self, tree: TokenTree) -> int:
        """How many of ``tree``'s drafted nodes to verify (0 = plain decoding).

        The best size by :meth:`step_value`, with hysteresis: after a drafted step a tree is
        verified while it beats a plain step, but after a plain step only once it beats it by
        HYSTERESIS expected tokens, so values that hover at the edge (one noisy timing) do not
        flip the choice back and forth."""
        if len(tree) == 1:  # nothing drafted (a plain step's skipped candidate)
            return self.settle_choice(tree, 0)
        ranked = sorted(self.estimates(tree)[1:], reverse=True)
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

    def cut(self, tree: TokenTree, n: int) -> TokenTree:
        """``tree`` restricted to its ``n`` drafted nodes with the highest estimates
        (ancestor-closed,
        see :meth:`TokenTree.ranked`)."""
        return tree.subset(tree.ranked(self.estimates(tree))[:n])

    def observe(
        self, tree: TokenTree, acceptance: Acceptance, draft_s: float, verify_s: float | None
    ) -> None:
        """Learn from a verified step: acceptance per node, drafting time, and the verify cost
        (``verify_s`` None: the step's time says nothing about the tree, e.g. it carried prompt
        tokens)."""
        judged, verdict = (
            tree,
            acceptance,
        )  # what calibrates: the verified tree, or a plain step's shadow
        if len(tree) == 1 and self._shadow is not None and self._shadow.tokens[0] == tree.tokens[0]:
            judged, verdict = self._shadow, shadow_acceptance(self._shadow, acceptance.bonus)
        if len(tree) == 1:
            self._space_candidates(judged is not tree and verdict.accepted > 0)
        self._shadow = None
        for tilt, evidence in zip(self.tilts, self.calibrator.update(judged, verdict)):
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
