"""Draft-model trees: one mechanism for chain, SpecInfer, Sequoia, RSD-C and DySpec.

The draft model keeps a KV cache of the committed context (its own backend, transformers or
llama.cpp, compacted after each step exactly like the target's). A tree grows level by level: every
level is one draft forward over the nodes added since the last one (``grow``), so draft forwards per
step are bounded by the depth, not by the node count. How many children each node gets is the policy
of each drafter; how they are drawn depends on the request:

- greedy: the draft's top-m tokens (verified by V-greedy);
- sampling, ``Draw.WITHOUT_REPLACEMENT``: Gumbel-top-m from the warped draft distribution (V-RRS);
- sampling, ``Draw.IID``: m i.i.d. draws (V-MSS);
- sampling, ``Draw.DETERMINISTIC``: still the top-m tokens (V-det).
Each node carries the warped q it drew its children from, so the rule can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..backends import GrowingBackend
from ..sampling import Acceptance, Draft, Draw, SamplingParams, gumbel_top_k, warp
from ..tree import TokenTree

CATCH_UP = 16  # context tokens the draft may forward together with its first tree level

# (node, draft probabilities at temperature 1 [V]) -> how many children the node gets
ChildCount = Callable[[int, torch.Tensor], int]


@dataclass
class GrowingTree:
    """A tree under construction: nodes, their rank paths, scores (draft path probability) and q
    rows."""

    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    ranks: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    scores: list[float] = field(default_factory=lambda: [1.0])
    q_rows: dict[int, torch.Tensor] = field(default_factory=dict)

    def add(self, parent: int, rank: int, token: int, prob: float) -> int:
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.ranks.append(self.ranks[parent] + (rank,))
        self.scores.append(self.scores[parent] * prob)
        return len(self.tokens) - 1

    def step_prob(self, node: int) -> float:
        """The draft probability of ``node``'s token given its parent (1 for the root)."""
        if node == 0:
            return 1.0
        parent = self.scores[self.parents[node]]
        return self.scores[node] / parent if parent > 0 else 0.0

    def tree(self) -> TokenTree:
        return TokenTree(tuple(self.tokens), tuple(self.parents), tuple(self.scores))

    def draft(self, draw: Draw, vocab_size: int) -> Draft:
        if draw is Draw.DETERMINISTIC or not self.q_rows:
            return Draft(self.tree())
        q = torch.zeros(len(self.tokens), vocab_size)
        for node, row in self.q_rows.items():
            q[node] = row
        return Draft(self.tree(), draw, q)


class DraftModel:
    """The draft model's cache and tree growth; the shared engine of every draft-model drafter."""

    def __init__(self, backend: GrowingBackend):
        self.backend = backend
        self.forwarded = 0  # nodes of the current tree already in the draft cache

    def room(self, budget: int) -> int:
        """``budget`` within the draft backend's sequence limit (llama.cpp): a tree of n nodes
        forwards at most n sequences."""
        limit = self.backend.max_leaves
        return budget if limit is None else min(budget, limit - 1)

    def start(self, context: Sequence[int]) -> GrowingTree:
        """Sync the cache to ``context[:-1]`` (reusing what it holds) and start a tree at
        ``context[-1]``."""
        self.backend.prefill(context[:-1], defer=CATCH_UP)
        self.forwarded = 0
        return GrowingTree([int(context[-1])])

    def forward_new(self, grown: GrowingTree) -> tuple[list[int], torch.Tensor]:
        """Run the draft over nodes added since the last call; (those nodes, their logits [m,
        V])."""
        nodes = list(range(self.forwarded, len(grown.tokens)))
        logits = self.backend.grow(grown.tree(), self.forwarded)
        self.forwarded = len(grown.tokens)
        return nodes, logits

    def expand(
        self,
        grown: GrowingTree,
        node: int,
        logits: torch.Tensor,
        count: int,
        draw: Draw,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> list[int]:
        """Give ``node`` up to ``count`` children drawn from its draft ``logits`` [V]; the new node
        ids."""
        probs = torch.softmax(logits.float(), dim=-1)
        if count <= 0:
            return []
        if params.greedy or draw is Draw.DETERMINISTIC:
            picks = probs.topk(min(count, probs.shape[-1])).indices.tolist()
        else:
            q = warp(logits[None], params)[0]
            grown.q_rows[node] = q
            if draw is Draw.IID:
                draws = torch.multinomial(
                    q.to(generator.device), count, replacement=True, generator=generator
                )
                picks = draws.tolist()
            else:
                picks = gumbel_top_k(q, count, generator)
        return [
            grown.add(node, rank, token, float(probs[token])) for rank, token in enumerate(picks)
        ]

    def grow_levels(
        self,
        grown: GrowingTree,
        child_count: ChildCount,
        budget: int,
        draw: Draw,
        params: SamplingParams,
        generator: torch.Generator,
        may_expand: Callable[[int], bool] = lambda node: True,
    ) -> GrowingTree:
        """Grow level by level: forward the newest level, give each node ``child_count`` children.

        ``may_expand(node)`` False for every new node ends the growth without a useless forward.
        """
        while len(grown.tokens) - 1 < budget:
            if not any(may_expand(node) for node in range(self.forwarded, len(grown.tokens))):
                break
            nodes, logits = self.forward_new(grown)
            added = 0
            for node, row in zip(nodes, logits):
                room = budget - (len(grown.tokens) - 1)
                count = min(child_count(node, torch.softmax(row.float(), dim=-1)), room)
                added += len(self.expand(grown, node, row, count, draw, params, generator))
            if not added:
                break
        return grown

    def commit(self, tree: TokenTree, acceptance: Acceptance) -> None:
        """Keep the forwarded nodes on the accepted path; the rest is re-forwarded next step if
        needed.

        The path is followed by tokens, so ``tree`` may be any tree the target verified that
        contains it (the drafter's own, a cut of it, or a merge with other drafters' trees).
        """
        forwarded = self.backend.pending
        if forwarded is None:
            return
        self.backend.commit(forwarded.follow([tree.tokens[node] for node in acceptance.nodes]))
        self.forwarded = 0
