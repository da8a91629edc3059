"""The speculative loop: propose -> verify -> accept -> compact -> observe -> emit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .backends.base import Backend
from .drafters.base import Drafter, StochasticDrafter
from .errors import TokentreeError
from .planner import Planner
from .sampling import (
    Acceptance,
    Draft,
    Draw,
    PositionNoise,
    SamplingParams,
    accept,
    accept_coupled,
)
from .stats import GenerationStats

GREEDY = SamplingParams()
PROMPT_TAIL = 64  # last prompt tokens forwarded with the first tree (one forward fewer than prefilling them)


@dataclass
class DecodeRequest:
    """What to generate; the sampling fields are validated by :class:`SamplingParams`."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # None = a fresh random seed per run
    min_p: float = 0.0
    budget: int | str | None = None  # drafted nodes per step (root excluded); None = the drafter's default;
    # "auto" = chosen each step by the engine's planner

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise TokentreeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.budget, str) and self.budget != "auto":
            raise TokentreeError(f"budget must be a number >= 0 or 'auto', got '{self.budget}'")
        if isinstance(self.budget, int) and self.budget < 0:
            raise TokentreeError(f"budget must be >= 0, got {self.budget}")
        self.sampling  # validates

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p)


@dataclass
class Engine:
    """Runs the loop over a backend (the target) and a drafter.

    ``rule`` is the acceptance rule (default: the lossless one for each draft); tests swap in a
    deliberately biased rule to show the distribution tests can tell. ``planner`` sizes each step's
    tree when a request asks for ``budget="auto"``. With ``couple_seeded`` a seeded sampled request
    draws every position with noise keyed by its seed (:func:`accept_coupled`): its text depends on
    the seed alone, whatever the drafter learned; without it, seeded requests use ``rule`` like the
    others and repeat only with the same drafter state.
    """

    backend: Backend
    drafter: Drafter
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    rule: Callable[[Draft, torch.Tensor, SamplingParams, torch.Generator], Acceptance] = accept
    planner: Planner | None = None
    couple_seeded: bool = True

    def run(self, prompt_ids: Sequence[int], request: DecodeRequest, stats: GenerationStats) -> Iterator[list[int]]:
        """Yield the new tokens of each step; ``stats`` is updated as steps complete.

        Stops after an EOS token (which is emitted) or ``request.max_new_tokens`` tokens.
        """
        if not prompt_ids:
            raise TokentreeError("the prompt is empty: give at least one token")
        start = time.perf_counter()
        context = [int(t) for t in prompt_ids]
        self.drafter.reset()
        self.backend.prefill(context[:-1], defer=PROMPT_TAIL)
        stats.prompt_tokens = len(context)
        stats.prefill_s = time.perf_counter() - start
        remaining = request.max_new_tokens
        budget = self.drafter.default_budget if request.budget is None else request.budget
        if budget == "auto" and self.planner is None:
            raise TokentreeError("budget 'auto' needs a planner (tokentree.load(...) provides one)")
        params = request.sampling
        generator = _generator(request.seed)
        coupled = self.couple_seeded and request.seed is not None and not params.greedy
        noise = PositionNoise(request.seed) if coupled else None
        draw_params = GREEDY if noise is not None else params  # coupled: deterministic drafts, V-greedy on noise
        planner = self.planner
        if planner is not None and request.seed is not None and not params.greedy and noise is None:
            planner = Planner(planner.profile, planner.config, replayable=True)  # same seed, same text
        if planner is not None:
            planner.begin_request()
        while remaining > 0:
            t0 = time.perf_counter()
            if budget == "auto":
                draft = self._planned_draft(planner, context, remaining - 1, draw_params, generator)
            else:
                draft = self._draft(context, min(budget, remaining - 1), draw_params, generator)
            capped = draft.capped(self.backend.max_leaves)
            stats.capped_steps += capped is not draft
            draft = capped
            tree = draft.tree
            t1 = time.perf_counter()
            logits = self.backend.verify(tree)
            if noise is None:
                acceptance = self.rule(draft, logits, params, generator)
            else:
                acceptance = accept_coupled(tree, logits, params, noise, request.max_new_tokens - remaining)
            self.backend.commit(acceptance.nodes)
            t2 = time.perf_counter()
            self.drafter.observe(tree, logits, acceptance)
            if planner is not None and budget == "auto":  # the first verify also forwarded the prompt's tail
                planner.observe(tree, acceptance, t1 - t0, t2 - t1 if stats.steps else None)
            new = _until_eos(acceptance.new_tokens(tree)[:remaining], self.eos_ids)
            context.extend(new)
            remaining -= len(new)
            stats.record_step(len(tree) - 1, acceptance.accepted, len(new), t1 - t0, t2 - t1)
            stats.total_s = time.perf_counter() - start
            yield new
            if new[-1] in self.eos_ids:
                return


    def _draft(self, context: list[int], budget: int, params: SamplingParams, generator: torch.Generator) -> Draft:
        """A sampled draft from drafters that can draw one (when sampling), else a deterministic one."""
        if not params.greedy and isinstance(self.drafter, StochasticDrafter):
            return self.drafter.propose_sampled(context, budget, params, generator)
        return Draft(self.drafter.propose(context, budget))

    def _planned_draft(self, planner: Planner, context: list[int], room: int, params: SamplingParams,
                       generator: torch.Generator) -> Draft:
        """A large candidate, then (if the planner wants fewer nodes) its best n nodes.

        Deterministic candidates (every greedy draft, V-det drafts) are simply cut: which nodes
        stay depends on no random draw. A sampled draft cut by its scores would keep a sibling
        because of its identity, which the acceptance rules do not allow, so it is drawn afresh at
        the chosen size instead.
        """
        candidate = self._draft(context, min(planner.candidate_size(), room), params, generator)
        n = planner.choose(candidate.tree)
        if n >= len(candidate.tree) - 1:
            return candidate
        if candidate.draw is Draw.DETERMINISTIC:
            return Draft(planner.cut(candidate.tree, n))
        return self._draft(context, n, params, generator)


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _until_eos(tokens: list[int], eos_ids: Iterable[int]) -> list[int]:
    """``tokens`` cut after the first EOS (kept)."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
