"""The hybrid drafter: several drafters' trees merged into one, ranked by calibrated acceptance.

Each source proposes its own tree; a per-source :class:`AcceptanceCalibrator` turns its nodes'
depth and score into an honest probability of acceptance (learned from what the target accepted).
Paths merge into one trie (a node shared by several sources keeps its best estimate) and the
``budget`` most likely nodes are kept. Sources are asked cheapest first; an expensive source
(a draft model) is skipped on steps where the cheaper ones already promise ``skip_above``
accepted tokens, and whenever its measured payoff (the tokens it added beyond the cheaper
sources, valued at the current seconds per token) is below its drafting time (LLMCad-style
fallback: call the draft model only when it pays; probed at doubling intervals to notice a change).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..planner import AcceptanceCalibrator, ProbeSchedule
from ..sampling import Acceptance
from ..tree import TokenTree
from .base import Drafter, GuidedDrafter, LearningDrafter, SharingDrafter, clear_caches, fork


@dataclass
class HybridConfig:
    """Hybrid options (CLI flags ``--hybrid-<field>``)."""

    sources: str = "stand,pld"  # drafter names, cheapest first (draft-model drafters need --draft)
    # skip draft-model sources when the others promise this many accepted tokens
    skip_above: float = 2.0

    def __post_init__(self) -> None:
        names = [n.strip() for n in self.sources.split(",") if n.strip()]
        if not names or len(set(names)) != len(names) or {"hybrid", "auto", "none"} & set(names):
            raise ValueError(
                "sources must be distinct drafter names (not hybrid/auto/none), got "
                f"'{self.sources}'"
            )
        if self.skip_above < 0:
            raise ValueError(f"skip_above must be >= 0, got {self.skip_above}")

    @property
    def names(self) -> list[str]:
        return [n.strip() for n in self.sources.split(",") if n.strip()]


@dataclass
class PayoffGate:
    """Whether an expensive source earns its drafting time, from exponential averages of its calls.

    gain:   tokens accepted per call beyond the leading run the cheaper sources' nodes gave
    cost_s: drafting seconds per call
    While it does not pay it is still called now and then (``probes``): the interval doubles after
    each probe that does not pay either and resets after one that does, so a source that never
    pays costs a few probes rather than a fixed share of the steps.
    """

    decay: float = 0.8
    probes: ProbeSchedule = field(default_factory=lambda: ProbeSchedule(shortest=8, longest=256))
    gain: float | None = None
    cost_s: float = 0.0
    _price: float | None = None  # seconds per token when the last call was decided

    def should_call(self, seconds_per_token: float | None) -> bool:
        self._price = seconds_per_token
        return self.pays(seconds_per_token) or self.probes.due()

    def pays(self, seconds_per_token: float | None) -> bool:
        return (
            self.gain is None
            or seconds_per_token is None
            or self.gain * seconds_per_token >= self.cost_s
        )

    def record(self, gain: float, cost_s: float) -> None:
        if self.gain is None:
            self.gain, self.cost_s = gain, cost_s
        else:
            self.gain = self.decay * self.gain + (1 - self.decay) * gain
            self.cost_s = self.decay * self.cost_s + (1 - self.decay) * cost_s
        self.probes.observe(1, int(self.pays(self._price)))


@dataclass
class StepClock:
    """Seconds per emitted token of the running loop, from the time between successive proposals.

    The hybrid drafter records each step without its expensive sources' time and extra tokens, so
    ``per_token`` is what a token costs when they are not called. A request's first step is not
    timed: its verify also forwards the prompt's tail.
    """

    decay: float = 0.8
    seconds: float | None = None
    tokens: float | None = None
    _last: float | None = None
    _first_step: bool = True

    def tick(self) -> float | None:
        """Call at each proposal; returns the period since the previous one (None for the first two
        proposals of a request)."""
        now, last, first = time.perf_counter(), self._last, self._first_step
        self._last = now
        self._first_step = last is None
        return None if last is None or first else now - last

    def record(self, period: float, tokens: int) -> None:
        if self.seconds is None:
            self.seconds, self.tokens = period, float(tokens)
        else:
            self.seconds = self.decay * self.seconds + (1 - self.decay) * period
            self.tokens = self.decay * self.tokens + (1 - self.decay) * tokens

    @property
    def per_token(self) -> float | None:
        return None if self.seconds is None else self.seconds / max(self.tokens, 1.0)

    def pause(self) -> None:
        """Between requests: the next period would count idle time, the one after it the prompt."""
        self._last, self._first_step = None, True


def expected_accepted(tree: TokenTree) -> float:
    """Sum of node scores below the root when scores are acceptance probabilities."""
    return sum((tree.scores or (0.0,) * len(tree))[1:])


def restrict(source: TokenTree, verified: TokenTree) -> tuple[list[int], list[int]]:
    """Source nodes also in ``verified`` (same token path; ascending, root first) and their
    verified rows."""
    present, rows, index = [0], [0], {0: 0}
    for node in range(1, len(source)):
        parent = index.get(source.parents[node])
        match = None if parent is None else verified.child_with_token(parent, source.tokens[node])
        if match is not None:
            index[node] = match
            present.append(node)
            rows.append(match)
    return present, rows


class HybridDrafter:
    name = "hybrid"
    default_budget: int | str = 16
    runs_draft_model = False  # its sources may: they are gated one by one (PayoffGate)

    def __init__(
        self,
        config: HybridConfig,
        build: Callable[[str], Drafter],
        name: str = "hybrid",
        default_budget: int | str = 16,
    ):
        self.config = config
        self.name, self.default_budget = name, default_budget
        self.sources = [build(n) for n in config.names]
        self.calibrators = [AcceptanceCalibrator() for _ in self.sources]
        self.gates = {
            i: PayoffGate() for i, source in enumerate(self.sources) if source.runs_draft_model
        }
        self.clock = StepClock()
        self._proposed: list[tuple[int, TokenTree]] = []
        self._costs: dict[int, float] = {}
        self._last_step: tuple[float, int] | None = None  # (expensive seconds, tokens without them)

    def reset(self) -> None:
        for source in self.sources:
            source.reset()
        self._proposed, self._last_step = [], None
        self.clock.pause()

    def fork(self) -> HybridDrafter:
        """Forks of its sources (each must fork) and its own step state; the calibrators and gates
        are shared, so what one sequence teaches them applies to all (see
        :class:`ForkingDrafter`)."""
        other = copy.copy(self)
        other.sources = [fork(source) for source in self.sources]
        other.clock = StepClock()
        other._proposed, other._costs, other._last_step = [], {}, None
        return other

    def clear_caches(self) -> None:
        for source in self.sources:
            clear_caches(source)

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        root = int(context[-1])
        self._proposed, self._costs = [], {}
        period = self.clock.tick()
        if period is not None and self._last_step is not None:
            # the last step as it would have been without the expensive sources: the price they
            # must beat
            self.clock.record(period - self._last_step[0], self._last_step[1])
        self._last_step = None
        merged = TokenTree.root(root)
        for i, source in enumerate(self.sources):
            if i in self.gates and (
                expected_accepted(merged) >= self.config.skip_above
                or not self.gates[i].should_call(self.clock.per_token)
            ):
                continue
            start = time.perf_counter()
            if isinstance(source, GuidedDrafter):  # the cheaper sources' tree as its guesses
                tree = source.propose_guided(context, budget, merged)
            else:
                tree = source.propose(context, budget)
            self._costs[i] = time.perf_counter() - start
            self._proposed.append((i, tree))
            estimated = TokenTree(
                tree.tokens, tree.parents, tuple(self.calibrators[i].estimate(tree))
            )
            merged = TokenTree.from_paths(
                root,
                _paths_of(merged) + _paths_of(estimated),
                _scores_of(merged) + _scores_of(estimated),
            )
            merged = merged.best(budget)
        return merged

    def node_sources(self, tree: TokenTree) -> list[str]:
        """Which sources proposed each node of ``tree`` (this step's, before :meth:`observe`):
        their names joined by "+" (see :class:`tokentree.trace.ExplainingDrafter`)."""
        names: list[list[str]] = [[] for _ in tree.tokens]
        for i, source_tree in self._proposed:
            for row in restrict(source_tree, tree)[1][1:]:
                names[row].append(self.sources[i].name)
        return [""] + ["+".join(n) or "?" for n in names[1:]]

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        """Each source learns from the verified part of its tree; its calibrator from what was
        accepted."""
        if not self._proposed:  # a planned plain step that drafted nothing: nothing to learn
            self._last_step = None  # nor a step for the clock
            return
        new_tokens = acceptance.new_tokens(tree)
        cheap_rows: set[int] = set()
        gained, spent = 0, 0.0
        for i, source_tree in self._proposed:
            present, rows = restrict(source_tree, tree)
            if i in self.gates:
                cheap_run = next(
                    (k for k, node in enumerate(acceptance.nodes[1:]) if node not in cheap_rows),
                    acceptance.accepted,
                )
                gained, spent = gained + acceptance.accepted - cheap_run, spent + self._costs[i]
                self.gates[i].record(acceptance.accepted - cheap_run, self._costs[i])
            else:
                cheap_rows.update(rows)
            sub = source_tree.subset(present[1:])  # node j of sub is present[j]
            nodes = tuple(sub.follow([tree.tokens[node] for node in acceptance.nodes]))
            sub_acceptance = Acceptance(nodes, new_tokens[len(nodes) - 1])
            self.calibrators[i].update(sub, sub_acceptance)
            self.sources[i].observe(sub, _select_rows(logits, rows), sub_acceptance)
        self._last_step = (spent, len(new_tokens) - gained)  # timed when the next step starts
        self._proposed = []

    def knowledge_delta(self, final: bool = False) -> dict:
        return {
            "sources": self.config.names,
            "deltas": [
                s.knowledge_delta(final) if isinstance(s, SharingDrafter) else None
                for s in self.sources
            ],
        }

    def absorb_knowledge(self, delta: dict) -> None:
        if delta.get("sources") != self.config.names:
            return  # another mix of sources: nothing here reads its knowledge
        for source, part in zip(self.sources, delta["deltas"]):
            if part is not None and isinstance(source, SharingDrafter):
                source.absorb_knowledge(part)

    def state_dict(self) -> dict:
        return {
            "sources": self.config.names,
            "states": [
                s.state_dict() if isinstance(s, LearningDrafter) else None for s in self.sources
            ],
        }

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state.get("sources") != self.config.names:
            raise ValueError(
                f"saved for sources {state.get('sources')}, this drafter uses {self.config.names}"
            )
        for source, saved in zip(self.sources, state["states"]):
            if saved is not None and isinstance(source, LearningDrafter):
                source.load_state_dict(saved, vocab_size)


def _select_rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``logits[rows]``: a view when the rows are consecutive (a copy of full-vocabulary rows costs
    about as much as reducing them)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return logits[rows[0] : rows[0] + len(rows)]
    return logits[rows]


def _paths_of(tree: TokenTree) -> list[list[int]]:
    return [[tree.tokens[v] for v in path[1:]] for path in tree.paths if len(path) > 1]


def _scores_of(tree: TokenTree) -> list[list[float]]:
    scores = tree.scores or (1.0,) * len(tree)
    return [[scores[v] for v in path[1:]] for path in tree.paths if len(path) > 1]
