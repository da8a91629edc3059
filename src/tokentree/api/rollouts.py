"""Rollout trees: many sampled trajectories of one prompt that branch in the middle and share
their ancestors' cache cells (TreePO's segment-wise branching, LATR's branching where the model is
unsure), with every token's exact logprob. The policies and their checks:
:mod:`tokentree.api.rollout_policies`.

Branches are sequences of a :class:`BatchSession`: a fork adds the children while their parent is
still running, so each starts from the parent's cells (``BatchEngine`` adopts the longest running
prefix) and only its own new tokens are forwarded; then the parent stops (what it drew past the
fork in its last step is dropped). Each child draws its continuation with a fresh seed of its own,
so under ``Segments`` every leaf's trajectory is a sample of the target's sampling law and
siblings are independent given their shared prefix, which is what makes them a tree.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..errors import TokentreeError
from ..request import MAX_SEED, Request
from .rollout_policies import Independent, Policy, Segments, Uncertain, check, similarity

if TYPE_CHECKING:
    from .generator import Generator
    from .session import BatchSession


@dataclass
class Segment:
    """One node of the rollout tree: ``token_ids`` from ``start`` (a position in the completion)
    under its ``parent`` segment (None: the prompt); ``reason`` it began: "root", "segment" (a
    TreePO fork), "uncertain" (the sampled token's continuation at an unsure position) or
    "alternative" (a child starting with another likely token there); ``finish_reason`` when
    its branch ended in it ("pruned": a near-duplicate of a sibling, no trajectory; None: it
    forked)."""

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
    (``prefix``, with their logprobs), the segment it is writing and why it began; ``scanned``:
    completion positions already looked at for a fork; ``checked``: past its pruning check."""

    slot: int
    prefix: list[int]
    prefix_logprobs: list[float]
    segment: int
    level: int
    reason: str
    scanned: int = 0
    checked: bool = True


# a new branch: its completion prefix, their logprobs, why it began
_Child = tuple[list[int], list[float], str]


class Rollout:
    """One rollout of ``policy`` for ``prompt_ids`` under ``request`` (sampled, logprobs on), on
    ``session`` (None: a session of its own) beside whatever else it decodes: :meth:`start`, then
    :meth:`advance` after each of the session's steps until :attr:`done`, then :meth:`tree`
    (:meth:`run` does it all on a session of its own)."""

    def __init__(
        self,
        gen: Generator,
        prompt_ids: list[int],
        request: Request,
        policy: Policy,
        session: BatchSession | None = None,
    ):
        check(request, policy, len(prompt_ids))
        self.gen, self.prompt_ids, self.policy = gen, list(prompt_ids), policy
        top = policy.top_k if isinstance(policy, Uncertain) else 0  # its forks read the top tokens
        self.request = request.replace(logprobs=max(request.logprobs or 0, top))
        self.seeds = random.Random(request.seed)
        self.session: BatchSession = session or gen.batch_session(policy.slots)
        if self.session.capacity < policy.slots:
            raise TokentreeError(
                f"this rollout decodes up to {policy.slots} branches at once, and this target "
                f"decodes at most {self.session.capacity} sequences together: lower "
                "max_leaves (or n), or raise a server's --max-batch"
            )
        self.segments: list[Segment] = []
        self.branches: list[_Branch] = []
        self.trajectories: list[Trajectory] = []
        self.forwards, self.started = 0, 0.0

    @property
    def cells(self) -> int:
        """Cache cells the whole tree may need beside the prompt."""
        return self.policy.most_leaves * self.request.max_new_tokens

    def check_room(self) -> None:
        """Refuse a tree that would not fit the session's cache even with nothing else in it."""
        room = self.session.cells
        if room is not None and len(self.prompt_ids) + self.cells > room:
            raise TokentreeError(
                f"the prompt ({len(self.prompt_ids)} tokens) and {self.policy.most_leaves} "
                f"branches of {self.request.max_new_tokens} tokens do not fit the cache "
                f"({room} cells): lower max_leaves or max_new_tokens, or raise --n-ctx"
            )

    def run(self) -> RolloutTree:
        """The whole rollout on a session of its own."""
        self.check_room()
        self.start()
        while not self.done:
            self.session.step()
            self.advance()
        return self.tree()

    def start(self) -> None:
        self.started = time.perf_counter()
        for _ in range(self.policy.roots):
            self._start(([], [], "root"), None, start=0, level=0)

    def advance(self) -> None:
        """After a step of the session: prune, fork and finish branches."""
        self.forwards += 1
        for branch in list(self.branches):
            if self._maybe_prune(branch) or self._maybe_fork(branch):
                continue
            if self.session.finished(branch.slot):
                self._finish(branch)  # (a step may cross a segment's end and finish too)

    @property
    def done(self) -> bool:
        return not self.branches

    @property
    def live(self) -> int:
        """Sequences of the session this rollout holds now."""
        return len(self.branches)

    def cancel(self) -> None:
        """Stop every branch and give their slots back."""
        for branch in list(self.branches):
            self._drop(branch)

    def tree(self) -> RolloutTree:
        return RolloutTree(
            self.prompt_ids, self.segments, self.trajectories, self.forwards,
            time.perf_counter() - self.started,
        )  # fmt: skip

    # ------------------------------------------------------------------ branches
    def _start(self, child: _Child, parent: int | None, start: int, level: int) -> None:
        """A new branch after the ``child``'s prefix, its segment from completion position
        ``start`` (its own seed; the cells of a running branch with that prefix are adopted)."""
        prefix, logprobs, reason = child
        segment = self._segment(parent, start, reason)
        request = self.request.replace(
            max_new_tokens=self.request.max_new_tokens - len(prefix),
            seed=self.seeds.randint(0, MAX_SEED),
        )
        slot = self.session.add(self.prompt_ids + prefix, request)
        checked = reason != "alternative" or self._prune_off()
        self.branches.append(
            _Branch(slot, list(prefix), list(logprobs), segment, level, reason, checked=checked)
        )

    def _prune_off(self) -> bool:
        return not isinstance(self.policy, Uncertain) or self.policy.prune_similar is None

    def _segment(self, parent: int | None, start: int, reason: str) -> int:
        self.segments.append(Segment(len(self.segments), parent, start, reason))
        return len(self.segments) - 1

    def _completion(self, branch: _Branch) -> tuple[list[int], list[float]]:
        own = self.session.texts[branch.slot].token_ids
        logprobs = self.session.logprobs(branch.slot) or []
        return branch.prefix + list(own), branch.prefix_logprobs + [e.logprob for e in logprobs]

    def _replace(self, branch: _Branch, end: int, children: list[_Child]) -> None:
        """Close ``branch``'s segment at completion position ``end`` and start ``children`` from
        there in its place (they adopt its cells; then it stops)."""
        tokens, logprobs = self._completion(branch)
        start = self.segments[branch.segment].start
        self._close(branch.segment, tokens[start:end], logprobs[start:end], None)
        for child in children:
            self._start(child, branch.segment, start=end, level=branch.level + 1)
        self._drop(branch)

    def _drop(self, branch: _Branch) -> None:
        self.session.cancel(branch.slot)
        self.session.release(branch.slot)
        self.branches.remove(branch)

    def _maybe_fork(self, branch: _Branch) -> bool:
        if isinstance(self.policy, Segments):
            return self._fork_segment(branch, self.policy)
        if isinstance(self.policy, Uncertain):
            return self._fork_unsure(branch, self.policy)
        return False

    def _fork_segment(self, branch: _Branch, policy: Segments) -> bool:
        """At a segment's end: the segment closes, ``width`` children start from its prefix (each
        with a fresh seed) and the parent stops (while the tree has room)."""
        if branch.level >= policy.depth:
            return False
        tokens, logprobs = self._completion(branch)
        end = self.segments[branch.segment].start + policy.segment_tokens
        if len(tokens) < end:
            return False
        if len(self.branches) + len(self.trajectories) + policy.width - 1 > policy.max_leaves:
            return False  # every branch ends as one leaf: the tree has room for no more
        if self.session.finished(branch.slot) and len(tokens) == end:
            return False  # it ended exactly there (an EOS, a stop): nothing continues
        child = (tokens[:end], logprobs[:end], "segment")
        self._replace(branch, end, [child] * policy.width)
        return True

    def _fork_unsure(self, branch: _Branch, policy: Uncertain) -> bool:
        """At the first new position where the law is unsure (past the branch's lookahead, with
        room left for the lookahead after it): the sampled token's continuation and the
        alternatives start there, and the branch stops."""
        if not branch.checked:
            return False  # an alternative waits for its pruning check
        tokens, logprobs = self._completion(branch)
        entries, own = self.session.logprobs(branch.slot) or [], len(branch.prefix)
        start = self.segments[branch.segment].start
        cooldown = 0 if branch.reason == "root" else 1 + policy.lookahead
        first = max(branch.scanned, own, start + cooldown)
        last = min(own + len(entries), self.request.max_new_tokens - policy.lookahead)
        branch.scanned = max(first, own + len(entries))
        room = policy.max_leaves - len(self.branches) - len(self.trajectories)
        for i in range(first, last):
            top = entries[i - own].top
            alternatives = policy.alternatives(top, tokens[i])[:room] if room else []
            if not alternatives or not policy.unsure(top):
                continue
            children = [(tokens[: i + 1], logprobs[: i + 1], "uncertain")] + [
                (tokens[:i] + [t], logprobs[:i] + [lp], "alternative") for t, lp in alternatives
            ]
            self._replace(branch, i, children)
            return True
        return False

    def _maybe_prune(self, branch: _Branch) -> bool:
        """An alternative whose first ``lookahead`` tokens after its own match an earlier
        sibling's closely is pruned, once every earlier sibling has as many to compare."""
        if branch.checked:
            return False
        policy = self.policy
        assert isinstance(policy, Uncertain) and policy.prune_similar is not None
        mine = self._window(branch.segment, policy.lookahead)
        node = self.segments[branch.segment]
        siblings = [s.id for s in self.segments[: node.id]
                    if s.parent == node.parent and s.finish_reason != "pruned"]  # fmt: skip
        windows = [self._window(s, policy.lookahead) for s in siblings]
        if mine is None or any(w is None for w in windows):
            return False
        branch.checked = True
        if not any(similarity(mine, w) >= policy.prune_similar for w in windows):
            return False
        tokens, logprobs = self._completion(branch)
        self._close(branch.segment, tokens[node.start :], logprobs[node.start :], "pruned")
        self._drop(branch)
        return True

    def _window(self, segment: int, length: int) -> list[int] | None:
        """The ``length`` tokens of ``segment`` after its first (fewer where it ended sooner);
        None while its branch is still writing them."""
        node = self.segments[segment]
        live = next((b for b in self.branches if b.segment == segment), None)
        if live is None:
            return node.token_ids[1 : 1 + length]
        tokens = self._completion(live)[0][node.start + 1 :]
        if len(tokens) < length and not self.session.finished(live.slot):
            return None
        return tokens[:length]

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


__all__ = ["Independent", "Policy", "Rollout", "RolloutTree", "Segments", "Uncertain", "check"]
