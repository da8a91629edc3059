"""Many sequences per target forward: each sequence drafts its own tree, one forward verifies all
of them, and each keeps its accepted path.

The target is a :class:`~tokentree.backends.base.BatchTarget`: slot i of a batch is a lane, a
backend over its own part of one shared cache (llama.cpp sequence ids, see
:mod:`tokentree.backends.llamacpp_batch`; cells of a packed transformers cache under a block mask,
see :mod:`tokentree.backends.hf.batch`), so the trees of a step go into one forward. Sequences join
(:meth:`BatchEngine.add`, a prefill of their own) and leave (finished or :meth:`BatchEngine.cancel`)
between steps. Every sequence is decoded as :class:`Engine` would decode it alone (the same
:class:`SequenceRun` steps: its acceptance rule judges its tree by the target's logits for it), so
each follows the target; only the tree sizes are chosen together under ``budget="auto"``
(:func:`choose_batch`: a node must beat its marginal cost in the shared forward). llama.cpp's CPU
kernels round a sequence's logits differently when other sequences share its cache and batch,
as in llama.cpp's own parallel decoding, so at a near-tie a greedy answer can differ from decoding
it alone (see :class:`LlamaCppBackend`); on transformers the difference is the float summation
order of a wider attention (fp32: about 1e-7).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from .backends.base import BatchTarget, shared_prefix
from .constraints import TokenGrammar
from .drafters.base import Drafter, fork
from .engine import DecodeRequest, Engine, SequenceRun
from .errors import TokentreeError
from .planner import RATE_DECAY, Planner, choose_batch
from .stats import GenerationStats


@dataclass
class BatchRates:
    """The batch's own throughput, tokens per second over about the last 20 steps (RATE_DECAY)."""

    tokens: float = 0.0
    seconds: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        self.tokens = RATE_DECAY * self.tokens + tokens
        self.seconds = RATE_DECAY * self.seconds + seconds

    def rate(self, floor: float) -> float:
        return max(floor, self.tokens / self.seconds) if self.seconds else floor


class BatchEngine:
    """Decodes up to ``len(target.lanes)`` sequences at once over one :class:`BatchTarget`.

    Each sequence gets a lane, a fork of ``drafter`` (its own request state, the learned tables
    shared) and, with ``budget="auto"``, a fork of ``planner`` (its own tilts, the calibration and
    verify cost shared). Trees shrink to plain steps when the cache has no room left for them.
    """

    def __init__(
        self,
        target: BatchTarget,
        drafter: Drafter,
        eos_ids: frozenset[int],
        planner: Planner | None = None,
        engine: Engine | None = None,
        grammar: TokenGrammar | None = None,
    ):
        """``grammar``: the tokenizer constrained requests start from (see
        :class:`tokentree.constraints.TokenGrammar`)."""
        self.target, self.drafter, self.planner = target, drafter, planner
        self.lanes = target.lanes
        self.engine = engine or Engine(
            self.lanes[0], drafter, eos_ids, planner=planner, grammar=grammar
        )
        self.runs: dict[int, SequenceRun] = {}  # slot -> its running sequence
        self.rates = BatchRates()

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in range(len(self.lanes)) if slot not in self.runs]

    def add(
        self,
        prompt_ids: Sequence[int],
        request: DecodeRequest,
        stats: GenerationStats,
        drafter: Drafter | None = None,
        planner: Planner | None = None,
        slot: int | None = None,
    ) -> int:
        """Prefill a new sequence into a free slot (between steps; ``slot``: this one, which must be
        free); returns the slot. ``drafter`` and ``planner`` (forked for it) default to the
        batch's."""
        free = self.free_slots
        if not free:
            raise TokentreeError(f"the batch is full ({len(self.lanes)} sequences)")
        if slot is not None and slot not in free:
            raise TokentreeError(f"slot {slot} is still decoding a sequence")
        slot = free[0] if slot is None else slot
        lane = self.lanes[slot]
        if not self.runs:
            self.target.clear()
        self._share_prefix(slot, prompt_ids)
        planner = planner or self.planner
        run = self.engine.start(
            prompt_ids,
            request,
            stats,
            lane,
            fork(drafter or self.drafter),
            None if planner is None else planner.fork(),
        )
        run.own_forward = False
        self.runs[slot] = run
        return slot

    def cancel(self, slot: int) -> None:
        """Stop the sequence in ``slot`` (between steps) and free its cache cells."""
        if self.runs.pop(slot, None) is not None:
            self.target.release(slot)
            if not self.runs:
                self.target.clear()

    def _share_prefix(self, slot: int, prompt_ids: Sequence[int]) -> None:
        """Let ``slot`` start from the running sequence whose cached tokens share the longest prefix
        with ``prompt_ids`` (n samples of one prompt, a common system prompt)."""
        best, shared = None, 0
        for other in self.runs:
            common = shared_prefix(self.lanes[other].tokens, prompt_ids[:-1])
            if common > shared:
                best, shared = other, common
        if best is not None:
            self.target.adopt(slot, best, shared)

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether a sequence of this size has room in the cache beside the running ones (an empty
        batch frees every cell first)."""
        room = self.target.capacity if not self.runs else self._spare_cells()
        return room is None or prompt_tokens + max_new_tokens <= room

    def _spare_cells(self) -> int | None:
        """Cache cells left for drafted nodes this step, after one cell per token every running
        sequence may still need (None: no fixed limit)."""
        return self.target.spare_cells(sum(run.remaining for run in self.runs.values()))

    def step(self) -> dict[int, list[int]]:
        """One forward for every running sequence; returns each slot's new tokens. Finished
        sequences (EOS, length) leave the batch."""
        slots = list(self.runs)
        if not slots:
            return {}
        runs = [self.runs[slot] for slot in slots]
        drafts = self._fit(runs, self._drafts(runs))
        started = time.perf_counter()
        logits = self.target.verify_many(slots, [d.tree for d in drafts])
        forward_s = time.perf_counter() - started
        timed = all(
            run.stats.steps for run in runs
        )  # a sequence's first step forwards its prompt's tail too
        new = {}
        for slot, run, rows in zip(slots, runs, logits):
            new[slot] = run.settle(rows, forward_s)
            if run.done:
                self.cancel(slot)
        if timed:
            rows = sum(len(d.tree) for d in drafts)
            planners = [run.planner for run in runs if run.planner]
            context = max((p.context for p in planners), default=0)
            for cost in {id(p.cost): p.cost for p in planners}.values():
                cost.observe(rows, forward_s, context)  # forks share their parent's cost
            self.rates.observe(sum(len(t) for t in new.values()), forward_s)
        return new

    def _fit(self, runs: list[SequenceRun], drafts: list) -> list:
        """``drafts``, the largest turned into plain steps until their nodes fit the spare cells."""
        spare = self._spare_cells()
        if spare is None:
            return drafts
        order = sorted(range(len(runs)), key=lambda i: -len(drafts[i].tree))
        while order and sum(len(d.tree) - 1 for d in drafts) > spare:
            i = order.pop(0)
            drafts[i] = runs[i].plain()
        return drafts

    def _drafts(self, runs: list[SequenceRun]):
        """Each run's draft; the planned ones sized together (see :func:`choose_batch`)."""
        planned = [run for run in runs if run.planner is not None]
        drafts = {id(run): run.draft() for run in runs if run.planner is None}
        if planned:
            candidates = [run.candidate() for run in planned]
            ranked = [
                sorted(run.planner.estimates(c.tree, run.forced(c.tree))[1:], reverse=True)
                for run, c in zip(planned, candidates)
            ]
            fixed_rows = sum(len(d.tree) for d in drafts.values())
            cost = planned[0].planner.cost
            context = max(run.planner.context for run in planned)  # the longest row's attention
            rate = self.rates.rate(floor=len(runs) / cost.seconds(len(runs), context))
            counts = choose_batch(ranked, lambda m: cost.seconds(m + fixed_rows, context), rate)
            for run, candidate, n in zip(planned, candidates, counts):
                drafts[id(run)] = run.take(candidate, n)
        return [drafts[id(run)] for run in runs]
