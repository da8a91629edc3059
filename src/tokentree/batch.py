"""Many sequences per target forward: each sequence drafts its own tree, one ``llama_decode``
verifies all of them, and each keeps its accepted path.

The llama.cpp context is shared: sequence i of a batch owns the block ``slot_ids(i)`` of the
context's sequence ids (its context and its tree's paths, see :mod:`tokentree.backends.sequences`),
so the trees of a step need no mask beyond what each sequence's ids already say. Sequences join
(:meth:`BatchEngine.add`, a prefill of their own) and leave (finished or :meth:`BatchEngine.cancel`)
between steps. Every sequence is decoded as :class:`Engine` would decode it alone (the same
:class:`SequenceRun` steps: its acceptance rule judges its tree by the target's logits for it), so
each follows the target; only the tree sizes are chosen together under ``budget="auto"``
(:func:`choose_batch`: a node must beat its marginal cost in the shared forward). llama.cpp's CPU
kernels round a sequence's logits differently when other sequences share its cache and batch,
as in llama.cpp's own parallel decoding, so at a near-tie a greedy answer can differ from decoding
it alone (see :class:`LlamaCppBackend`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from .backends.base import shared_prefix
from .backends.llamacpp import LlamaCppBackend, LlamaCppModel, verify_many
from .drafters.base import Drafter, fork
from .engine import DecodeRequest, Engine, SequenceRun
from .errors import TokentreeError
from .planner import RATE_DECAY, Planner, choose_batch
from .stats import GenerationStats


def slot_ids(slot: int, slots: int, max_sequences: int) -> range:
    """The sequence ids of slot ``slot`` of ``slots``: an equal block of the context's ids each, the
    last id left out (the batch's trash sequence, see :class:`LlamaCppBackend`)."""
    per = (max_sequences - 1) // slots
    return range(slot * per, (slot + 1) * per)


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
    """Decodes up to ``max_batch`` sequences at once over one llama.cpp model.

    Each sequence gets a :class:`LlamaCppBackend` over its slot's sequence ids, a fork of
    ``drafter`` (its own request state, the learned tables shared) and, with ``budget="auto"``, a
    fork of ``planner`` (its own tilts, the calibration and verify cost shared).

    Cells a sequence lets go (rejected nodes, finished sequences) stay occupied by the trash
    sequence until the batch is empty, so each sequence's cells stay in position order (see
    :class:`LlamaCppBackend` for what else llama.cpp's rounding depends on); trees shrink to plain
    steps when the cache has no room left for them.
    """

    def __init__(self, model: LlamaCppModel, drafter: Drafter, eos_ids: frozenset[int], max_batch: int,
                 planner: Planner | None = None, engine: Engine | None = None):
        limit = model.config.max_sequences - 1  # the last id is the trash
        if not 1 <= max_batch <= limit:
            raise TokentreeError(f"max_batch must be in 1..{limit} (the llama.cpp context's sequences, less one), "
                                 f"got {max_batch}")
        self.model, self.drafter, self.planner = model, drafter, planner
        self.trash = limit
        self.lanes = [LlamaCppBackend(model, sequences=slot_ids(i, max_batch, limit + 1), trash=self.trash)
                      for i in range(max_batch)]
        self._cleared_at = model.decoded_rows  # cells in use: rows decoded since the cache was last emptied
        self.engine = engine or Engine(self.lanes[0], drafter, eos_ids, planner=planner)
        self.runs: dict[int, SequenceRun] = {}  # slot -> its running sequence
        self.rates = BatchRates()

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in range(len(self.lanes)) if slot not in self.runs]

    def add(self, prompt_ids: Sequence[int], request: DecodeRequest, stats: GenerationStats,
            drafter: Drafter | None = None, planner: Planner | None = None) -> int:
        """Prefill a new sequence into a free slot (between steps); returns the slot. ``drafter`` and
        ``planner`` (forked for it) default to the batch's."""
        free = self.free_slots
        if not free:
            raise TokentreeError(f"the batch is full ({len(self.lanes)} sequences)")
        slot, lane = free[0], self.lanes[free[0]]
        if not self.runs:
            self._empty_cache()
        self._share_prefix(lane, prompt_ids)
        planner = planner or self.planner
        run = self.engine.start(prompt_ids, request, stats, lane, fork(drafter or self.drafter),
                                None if planner is None else planner.fork())
        run.own_forward = False
        self.runs[slot] = run
        return slot

    def cancel(self, slot: int) -> None:
        """Stop the sequence in ``slot`` (between steps) and free its cache cells."""
        if self.runs.pop(slot, None) is not None:
            self.lanes[slot].reset()
            if not self.runs:
                self._empty_cache()

    def _empty_cache(self) -> None:
        """No sequence is running: free every cell (the trash's)."""
        for lane in self.lanes:
            lane.reset()
        self.model.lib.llama_memory_seq_rm(self.model.memory, self.trash, -1, -1)
        self._cleared_at = self.model.decoded_rows

    def _share_prefix(self, lane: LlamaCppBackend, prompt_ids: Sequence[int]) -> None:
        """Let ``lane`` start from the running sequence whose cached tokens share the longest prefix
        with ``prompt_ids`` (n samples of one prompt, a common system prompt)."""
        best, shared = None, 0
        for slot in self.runs:
            other = self.lanes[slot]
            common = shared_prefix(other.tokens, prompt_ids[:-1])
            if common > shared:
                best, shared = other, common
        if best is not None:
            lane.adopt(best, shared)

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether a sequence of this size has room in the cache beside the running ones (an empty
        batch frees every cell first)."""
        if not self.runs:
            return prompt_tokens + max_new_tokens <= self.model.config.n_ctx
        return prompt_tokens + max_new_tokens <= self._spare_cells(list(self.runs.values()))

    def _spare_cells(self, runs: list[SequenceRun]) -> int:
        """Cache cells left for drafted nodes this step, after one cell per token every running
        sequence may still need and the prompt tails still to be forwarded."""
        used = self.model.decoded_rows - self._cleared_at
        owed = sum(run.remaining + len(self.lanes[slot]._lead) for slot, run in self.runs.items())
        return self.model.config.n_ctx - used - owed

    def step(self) -> dict[int, list[int]]:
        """One forward for every running sequence; returns each slot's new tokens. Finished
        sequences (EOS, length) leave the batch."""
        slots = list(self.runs)
        if not slots:
            return {}
        runs = [self.runs[slot] for slot in slots]
        drafts = self._fit(runs, self._drafts(runs))
        started = time.perf_counter()
        logits = verify_many([self.lanes[slot] for slot in slots], [d.tree for d in drafts])
        forward_s = time.perf_counter() - started
        timed = all(run.stats.steps for run in runs)  # a sequence's first step forwards its prompt's tail too
        new = {}
        for slot, run, rows in zip(slots, runs, logits):
            new[slot] = run.settle(rows, forward_s)
            if run.done:
                self.cancel(slot)
        if timed:
            rows = sum(len(d.tree) for d in drafts)
            for cost in {id(run.planner.cost): run.planner.cost for run in runs if run.planner}.values():
                cost.observe(rows, forward_s)  # each planner's verify cost (forks share their parent's)
            self.rates.observe(sum(len(t) for t in new.values()), forward_s)
        return new

    def _fit(self, runs: list[SequenceRun], drafts: list) -> list:
        """``drafts``, the largest turned into plain steps until their nodes fit the spare cells."""
        spare = self._spare_cells(runs)
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
            ranked = [sorted(run.planner.estimates(c.tree)[1:], reverse=True) for run, c in zip(planned, candidates)]
            fixed_rows = sum(len(d.tree) for d in drafts.values())
            cost = planned[0].planner.cost
            rate = self.rates.rate(floor=len(runs) / cost.seconds(len(runs)))
            counts = choose_batch(ranked, lambda m: cost.seconds(m + fixed_rows), rate)
            for run, candidate, n in zip(planned, candidates, counts):
                drafts[id(run)] = run.take(candidate, n)
        return [drafts[id(run)] for run in runs]
