"""Acceptance rules: pure functions from (tree, target logits) to the accepted path.

Only V-greedy exists so far; the sampling rules (V-RRS, V-MSS, V-det) will sit beside it with the
same signature and the same :class:`Acceptance` result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import TokenTree


@dataclass(frozen=True)
class Acceptance:
    """Result of verifying one tree.

    nodes: accepted node indices from the root (always starting with 0), in tree order.
    bonus: the token the target chose after the last accepted node.
    """

    nodes: tuple[int, ...]
    bonus: int

    @property
    def accepted(self) -> int:
        """Drafted tokens accepted (the root and the bonus not counted)."""
        return len(self.nodes) - 1

    def new_tokens(self, tree: TokenTree) -> list[int]:
        """Tokens this step commits: the accepted drafted tokens, then the bonus."""
        return [tree.tokens[i] for i in self.nodes[1:]] + [self.bonus]


def accept_greedy(tree: TokenTree, logits: torch.Tensor) -> Acceptance:
    """V-greedy: follow the child equal to the target argmax until a miss.

    logits: [n, V] target logits, row i = distribution after node i.
    """
    if logits.shape[0] != len(tree):
        raise ValueError(f"logits has {logits.shape[0]} rows for a tree of {len(tree)} nodes")
    best = logits.argmax(dim=-1).tolist()
    nodes = [0]
    while True:
        child = tree.child_with_token(nodes[-1], best[nodes[-1]])
        if child is None:
            return Acceptance(tuple(nodes), best[nodes[-1]])
        nodes.append(child)
