"""Rollout trees: many sampled trajectories of one prompt that branch in the middle and share
their ancestors' cache cells (TreePO's segment-wise branching), with every token's exact logprob.

Branches are sequences of a :class:`BatchSession`: a fork adds the children while their parent is
still running, so each starts from the parent's cells (``BatchEngine`` adopts the longest running
prefix) and only its own new tokens are forwarded; then the parent stops (what it drew past the
segment's end in its last step is dropped). Each child draws its continuation with a fresh seed of
its own, so every leaf's trajectory is a sample of the target's sampling law and siblings are
independent given their shared prefix, which is what makes them a tree.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Union

from ..errors import TokentreeError
from ..request import MAX_SEED, Request

if TYPE_CHECKING:
    from .generator import Generator
    from .session import BatchSession


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


Policy = Union[Independent, Segments]


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokentreeError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class Segment:
    """One node of the rollout tree: ``token_ids`` from ``start`` (a position in the completion)
    under its ``parent`` segment (None: the prompt); ``reason`` it began ("root" or "segment"
    fork); ``finish_reason`` when the trajectory ended in it (None: it forked)."""

    id: int
    parent: int | None
    start: int
    reason: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Trajectory:
    """A leaf's whole sample, ready for a GRPO-style trainer: the completion's tokens with their
    log-probabilities under the target, and the segments it passed through."""

    completion_ids: list[int]
    logprobs: list[float]
    segments: list[int]
    finish_reason: str


@dataclass
class RolloutTree:
    """The tree of segments and its flat trajectories; ``forwards``: target forwards taken,
    ``wall_s``: seconds from the first prefill to the last token."""

    prompt_ids: list[int]
    segments: list[Segment]
    trajectories: list[Trajectory]
    forwards: int
    wall_s: float

    @property
    def new_tokens(self) -> int:
        """Tokens generated (shared prefixes counted once)."""
        return sum(len(s.token_ids) for s in self.segments)

    def to_dict(self) -> dict:
        return asdict(self) | {"new_tokens": self.new_tokens}


@dataclass
class _Branch:
    """A running sequence of the tree: its slot, the completion tokens before its sequence's own
    (``prefix``, with their logprobs) and the segment it is writing."""

    slot: int
    prefix: list[int]
    prefix_logprobs: list[float]
    segment: int
    level: int


class Rollout:
    """One rollout of ``policy`` for ``prompt_ids`` under ``request`` (sampled, logprobs on)."""

    def __init__(self, gen: Generator, prompt_ids: list[int], request: Request, policy: Policy):
        check(request, policy, len(prompt_ids))
        self.gen, self.prompt_ids, self.policy = gen, list(prompt_ids), policy
        self.request = request.replace(logprobs=request.logprobs or 0)
        self.seeds = random.Random(request.seed)
        self.session: BatchSession = gen.batch_session(policy.slots)
        if len(self.session.free_slots) < policy.slots:
            raise TokentreeError(
                f"this rollout decodes up to {policy.slots} branches at once, and this target "
                f"decodes at most {len(self.session.free_slots)} sequences together: lower "
                "max_leaves (or n)"
            )
        if not self.session.fits(len(prompt_ids), policy.most_leaves * request.max_new_tokens):
            raise TokentreeError(
                f"the prompt ({len(prompt_ids)} tokens) and {policy.most_leaves} branches of "
                f"{request.max_new_tokens} tokens do not fit the cache: lower max_leaves or "
                "max_new_tokens, or raise --n-ctx"
            )
        self.segments: list[Segment] = []
        self.branches: list[_Branch] = []
        self.trajectories: list[Trajectory] = []

    def run(self) -> RolloutTree:
        started, forwards = time.perf_counter(), 0
        for _ in range(self.policy.roots):
            self._start([], [], None, level=0)
        while self.session.busy:
            self.session.step()
            forwards += 1
            for branch in list(self.branches):
                if not self._maybe_fork(branch) and self.session.finished(branch.slot):
                    self._finish(branch)  # (a step may cross a segment's end and finish too)
        return RolloutTree(
            self.prompt_ids, self.segments, self.trajectories, forwards,
            time.perf_counter() - started,
        )  # fmt: skip

    # ------------------------------------------------------------------ branches
    def _start(self, prefix: list[int], logprobs: list[float], parent: int | None, level: int):
        """A new branch after ``prefix`` (its own seed; the cells of a running branch with that
        prefix are adopted)."""
        segment = self._segment(parent, len(prefix), "root" if parent is None else "segment")
        request = self.request.replace(
            max_new_tokens=self.request.max_new_tokens - len(prefix),
            seed=self.seeds.randint(0, MAX_SEED),
        )
        slot = self.session.add(self.prompt_ids + prefix, request)
        self.branches.append(_Branch(slot, list(prefix), list(logprobs), segment, level))

    def _segment(self, parent: int | None, start: int, reason: str) -> int:
        self.segments.append(Segment(len(self.segments), parent, start, reason))
        return len(self.segments) - 1

    def _completion(self, branch: _Branch) -> tuple[list[int], list[float]]:
        own = self.session.texts[branch.slot].token_ids
        logprobs = self.session.logprobs(branch.slot) or []
        return branch.prefix + list(own), branch.prefix_logprobs + [e.logprob for e in logprobs]

    def _maybe_fork(self, branch: _Branch) -> bool:
        """At a segment's end: the segment closes, ``width`` children start from its prefix (each
        with a fresh seed, adopting the parent's cells) and the parent stops (while the tree has
        room)."""
        policy = self.policy
        if not isinstance(policy, Segments) or branch.level >= policy.depth:
            return False
        tokens, logprobs = self._completion(branch)
        start = self.segments[branch.segment].start
        if len(tokens) - start < policy.segment_tokens:
            return False
        if len(self.branches) + len(self.trajectories) + policy.width - 1 > policy.max_leaves:
            return False  # every branch ends as one leaf: the tree has room for no more
        end = start + policy.segment_tokens
        if self.session.finished(branch.slot) and len(tokens) == end:
            return False  # it ended exactly there (an EOS, a stop): nothing continues
        self._close(branch.segment, tokens[start:end], logprobs[start:end], None)
        for _ in range(policy.width):
            self._start(tokens[:end], logprobs[:end], branch.segment, branch.level + 1)
        self.session.cancel(branch.slot)
        self.session.release(branch.slot)
        self.branches.remove(branch)
        return True

    def _finish(self, branch: _Branch) -> None:
        reason = self.session.finish_reason(branch.slot)
        tokens, logprobs = self._completion(branch)
        self.session.release(branch.slot)
        self.branches.remove(branch)
        start = self.segments[branch.segment].start
        self._close(branch.segment, tokens[start:], logprobs[start:], reason)
        path, node = [], branch.segment
        while node is not None:
            path.append(node)
            node = self.segments[node].parent
        self.trajectories.append(Trajectory(tokens, logprobs, path[::-1], reason))

    def _close(self, segment: int, tokens, logprobs, reason: str | None) -> None:
        node = self.segments[segment]
        node.token_ids, node.logprobs, node.finish_reason = list(tokens), list(logprobs), reason


def check(request: Request, policy: Policy, prompt_tokens: int) -> None:
    """Refuse what no rollout can do, before anything is decoded."""
    if not isinstance(policy, (Independent, Segments)):
        raise TokentreeError(f"unknown rollout policy {policy!r}: Independent or Segments")
    if request.sampling.greedy and policy.most_leaves > 1:
        raise TokentreeError("rollouts sample their branches: give temperature > 0")
    if isinstance(policy, Segments) and policy.depth * policy.segment_tokens >= (
        request.max_new_tokens
    ):
        raise TokentreeError(
            f"{policy.depth} segments of {policy.segment_tokens} tokens leave nothing of "
            f"max_new_tokens {request.max_new_tokens} for the last one"
        )
    if prompt_tokens < 1:
        raise TokentreeError("the prompt is empty")
