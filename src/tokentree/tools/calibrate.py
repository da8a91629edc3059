"""``tokentree calibrate``: measure Sequoia's positional acceptance vector for a target/draft pair.

For each prompt the target writes its greedy continuation; one forward of each model over the
whole text then gives, at every generated position, the rank of the target's token among the
draft's candidates. ``vector[i]`` is the share of positions where that rank is i: the probability
that the (i+1)-th sibling of a greedy top-k tree is the one accepted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..api import Generator
from ..bench.suites import load_suite, round_robin, select
from ..drafters.sequoia import save_calibration
from ..errors import TokentreeError


@dataclass
class CalibrateConfig:
    """Options of ``tokentree calibrate`` (one field per flag)."""

    suite: str = "spec-bench"
    prompts: str | None = None
    limit: int = 2  # prompts per category
    max_new_tokens: int = 64
    ranks: int = 8  # length of the vector
    out: str = "sequoia-calibration.json"

    def __post_init__(self) -> None:
        if self.limit < 1 or self.max_new_tokens < 1 or not 1 <= self.ranks <= 32:
            raise TokentreeError(
                "calibrate needs --limit >= 1, --max-new-tokens >= 1 and --ranks in [1, 32]"
            )


@torch.inference_mode()
def draft_ranks(generator: Generator, prompt_ids: list[int], new_ids: list[int]) -> list[int]:
    """Rank of each target token ``new_ids[j]`` among the draft's predictions at that position."""
    ids = torch.tensor([prompt_ids + new_ids], device=generator.draft.model.device)
    logits = generator.draft.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    chosen = logits.gather(-1, torch.tensor(new_ids, device=logits.device)[:, None])
    return (logits > chosen).sum(-1).tolist()


def calibrate(generator: Generator, config: CalibrateConfig) -> tuple[float, ...]:
    if generator.draft is None:
        raise TokentreeError("calibrate needs a draft model")
    prompts = round_robin(select(load_suite(config.suite, config.prompts), None, config.limit))
    counts, total = [0] * config.ranks, 0
    for index, prompt in enumerate(prompts, start=1):
        prompt_ids = generator.encode([{"role": "user", "content": prompt.turns[0]}])
        new_ids = generator.generate(
            prompt_ids, max_new_tokens=config.max_new_tokens, drafter="pld"
        ).token_ids
        for rank in draft_ranks(generator, prompt_ids, new_ids) if new_ids else []:
            total += 1
            if rank < config.ranks:
                counts[rank] += 1
        print(f"calibrate: {index}/{len(prompts)} prompts, {total} positions", file=sys.stderr)
    if not total:
        raise TokentreeError("no tokens were generated: nothing to calibrate on")
    vector = tuple(c / total for c in counts)
    save_calibration(config.out, vector, generator.target.source, generator.draft.source, total)
    return vector
