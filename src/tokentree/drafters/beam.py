"""RSD-S: a draft tree from (stochastic) beam search, verified by recursive rejection sampling.

Stochastic beam search (Kool et al., 2019) keeps, at every level, the ``width`` extensions with
the highest perturbed log-probabilities, where each child's Gumbel value is conditioned on its
parent's (the children's maximum equals the parent's value). At each parent the kept children
are a prefix of a Gumbel-top-k order, i.e. drawn from q without replacement, and whether a child
is kept depends only on perturbed *values*; given the earlier siblings, the identity of the next
draw is independent of its value (Gumbel-max: argmax and max are independent, also under the
truncation). So every sibling list is a without-replacement draw with a stopping rule that never
looks at the identity it stops before, which is what V-RRS needs (Jeon et al., 2024, RSD-S).
``tests/test_beam.py`` checks the resulting law against the exact one.

Greedy requests use plain beam search (values = path log-probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import Draft, Draw, warp
from .draft_trees import _DraftModelDrafter
from .model import GrowingTree


@dataclass(frozen=True)
class Beam:
    """A tree node on the beam: its path log-probability under q and its (perturbed) value."""

    node: int
    log_prob: float
    value: float


@dataclass(frozen=True)
class Extension:
    """A kept child: ``beam`` indexes the parent in the step's beam list."""

    beam: int
    token: int
    log_prob: float
    value: float


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def truncated_gumbel(perturbed: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Shift Gumbel values [m, V] so each row's maximum becomes ``top`` [m], order kept (Kool et
    al., eq. 23)."""
    z = perturbed.max(dim=-1, keepdim=True).values
    v = top[:, None] - perturbed + _log1mexp(perturbed - z)
    return top[:, None] - v.clamp_min(0) - torch.log1p(torch.exp(-v.abs()))


def beam_step(
    log_q: torch.Tensor, beams: list[Beam], width: int, generator: torch.Generator | None
) -> list[Extension]:
    """The ``width`` best extensions of ``beams`` (fewer if q's support is smaller).

    log_q: [m, V] log draft probabilities after each beam (-inf outside the support).
    generator None: deterministic beam search by path log-probability; else stochastic beam
    search. Returned grouped by beam, each beam's children in decreasing value (= draw order).
    """
    device = log_q.device
    log_prob = torch.tensor([b.log_prob for b in beams], device=device)[:, None] + log_q
    if generator is None:
        values = log_prob
    else:
        uniform = torch.rand(log_q.shape, generator=generator).clamp_min(1e-20).to(device)
        values = truncated_gumbel(
            log_prob - (-uniform.log()).log(), torch.tensor([b.value for b in beams], device=device)
        )
    k = min(width, log_q.shape[-1])
    best, tokens = values.topk(k, dim=-1)  # per beam: no beam can contribute more than width
    flat = best.flatten()
    keep = flat.topk(min(width, int(torch.isfinite(flat).sum()))).indices.tolist()
    kept = sorted(keep, key=lambda i: (i // k, i % k))
    return [
        Extension(
            i // k,
            int(tokens.flatten()[i]),
            float(log_prob[i // k, tokens.flatten()[i]]),
            float(flat[i]),
        )
        for i in kept
    ]


@dataclass
class BeamConfig:
    """RSD-S (CLI flags ``--beam-<field>``)."""

    width: int = 3  # beams kept per level (the tree has at most width nodes per depth)
    depth: int = 8  # levels at most

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 32:
            raise ValueError(f"width must be in [1, 32], got {self.width}")
        if not 1 <= self.depth <= 32:
            raise ValueError(f"depth must be in [1, 32], got {self.depth}")


class StochasticBeamDrafter(_DraftModelDrafter):
    """RSD-S: one draft forward per level over the current beams; V-RRS when sampling."""

    name = "rsd-s"
    default_budget = 16
    draw = Draw.WITHOUT_REPLACEMENT

    def __init__(self, config: BeamConfig, draft_model: torch.nn.Module):
        super().__init__(draft_model)
        self.config = config

    def _grow(self, context, budget, params, generator) -> Draft:
        grown = self.model.start(context)
        beams = [Beam(0, 0.0, 0.0)]
        for _ in range(self.config.depth):
            room = budget - (len(grown.tokens) - 1)
            if room <= 0 or not beams:
                break
            _, logits = self.model.forward_new(grown)
            beams = self._extend(
                grown, beams, logits, min(self.config.width, room), params, generator
            )
        return self._finish(grown)

    def _extend(
        self,
        grown: GrowingTree,
        beams: list[Beam],
        logits: torch.Tensor,
        width: int,
        params,
        generator: torch.Generator,
    ) -> list[Beam]:
        """Add the next level's kept children to ``grown``; they are the new beams."""
        if params.greedy:
            log_q, sample = torch.log_softmax(logits.float(), dim=-1), None
        else:
            q = warp(logits, params)
            for beam, row in zip(beams, q):
                grown.q_rows[beam.node] = row
            log_q, sample = q.log(), generator
        probs = torch.softmax(logits.float(), dim=-1)  # scores at temperature 1, for the planner
        new_beams = []
        for ext in beam_step(log_q, beams, width, sample):
            parent = beams[ext.beam].node
            rank = sum(1 for p in grown.parents if p == parent)
            node = grown.add(parent, rank, ext.token, float(probs[ext.beam, ext.token]))
            new_beams.append(Beam(node, ext.log_prob, ext.value))
        return new_beams
