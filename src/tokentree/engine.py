"""The speculative loop: propose -> verify -> accept -> compact -> observe -> emit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .backends.base import Backend
from .drafters.base import Drafter
from .errors import TokentreeError
from .sampling import accept_greedy
from .stats import GenerationStats


@dataclass
class DecodeRequest:
    """What to generate. Sampling fields are validated here; temperature > 0 is not supported yet."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    budget: int | None = None  # drafted nodes per step (root excluded); None = the drafter's default

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise TokentreeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise TokentreeError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TokentreeError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise TokentreeError(f"top_k must be >= 0, got {self.top_k}")
        if self.budget is not None and self.budget < 0:
            raise TokentreeError(f"budget must be >= 0, got {self.budget}")
        if self.temperature > 0:
            raise TokentreeError("sampling (temperature > 0) is not supported yet; use temperature 0 (greedy)")


@dataclass
class Engine:
    """Runs the loop over a backend (the target) and a drafter."""

    backend: Backend
    drafter: Drafter
    eos_ids: frozenset[int] = field(default_factory=frozenset)

    def run(self, prompt_ids: Sequence[int], request: DecodeRequest, stats: GenerationStats) -> Iterator[list[int]]:
        """Yield the new tokens of each step; ``stats`` is updated as steps complete.

        Stops after an EOS token (which is emitted) or ``request.max_new_tokens`` tokens.
        """
        if not prompt_ids:
            raise TokentreeError("the prompt is empty: give at least one token")
        start = time.perf_counter()
        context = [int(t) for t in prompt_ids]
        self.drafter.reset()
        self.backend.prefill(context[:-1])
        stats.prompt_tokens = len(context)
        stats.prefill_s = time.perf_counter() - start
        remaining = request.max_new_tokens
        budget = self.drafter.default_budget if request.budget is None else request.budget
        while remaining > 0:
            t0 = time.perf_counter()
            tree = self.drafter.propose(context, min(budget, remaining - 1))
            t1 = time.perf_counter()
            logits = self.backend.verify(tree)
            acceptance = accept_greedy(tree, logits)
            self.backend.commit(acceptance.nodes)
            t2 = time.perf_counter()
            self.drafter.observe(tree, logits, acceptance)
            new = _until_eos(acceptance.new_tokens(tree)[:remaining], self.eos_ids)
            context.extend(new)
            remaining -= len(new)
            stats.record_step(len(tree) - 1, acceptance.accepted, len(new), t1 - t0, t2 - t1)
            stats.total_s = time.perf_counter() - start
            yield new
            if new[-1] in self.eos_ids:
                return


def _until_eos(tokens: list[int], eos_ids: Iterable[int]) -> list[int]:
    """``tokens`` cut after the first EOS (kept)."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
