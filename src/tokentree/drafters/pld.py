"""Prompt-lookup decoding: copy what followed earlier occurrences of the last n-gram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..sampling import Acceptance
from ..tree import TokenTree


@dataclass
class PLDConfig:
    """Prompt lookup options (CLI flags ``--pld-<field>``)."""

    max_ngram: int = 4  # longest suffix n-gram searched for
    min_ngram: int = 1  # shortest n-gram tried before giving up
    matches: int = 1  # distinct earlier matches merged into the tree (1 = a chain)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram} and {self.max_ngram}"
            )
        if self.matches < 1:
            raise ValueError(f"matches must be >= 1, got {self.matches}")


def find_continuations(
    context: np.ndarray, ngram: int, length: int, limit: int
) -> list[np.ndarray]:
    """Continuations (up to ``length`` tokens) after the latest ``limit`` earlier matches of the
    last ``ngram`` tokens of ``context`` [L], newest first, distinct, non-empty."""
    if len(context) <= ngram:
        return []
    windows = np.lib.stride_tricks.sliding_window_view(context[:-1], ngram)
    hits = np.flatnonzero((windows == context[-ngram:]).all(axis=1))
    found: list[np.ndarray] = []
    seen: set[bytes] = set()
    for start in hits[::-1]:
        cont = context[start + ngram : start + ngram + length]
        key = cont.tobytes()
        if len(cont) and key not in seen:
            seen.add(key)
            found.append(cont)
            if len(found) == limit:
                break
    return found


class PromptLookupDrafter:
    """PLD: the continuation of the latest match of the last n-gram (n = max..min) as a chain;
    with ``matches > 1`` several matches are merged into a tree, newest first, within the budget.
    Node scores say how long the matched n-gram was (1 for ``max_ngram``, halved per token less)."""

    runs_draft_model = False

    def __init__(self, config: PLDConfig | None = None):
        self.config = config or PLDConfig()
        self.name = "pld" if self.config.matches == 1 else "pld-tree"
        self.default_budget = 10 if self.config.matches == 1 else 16

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        tokens = np.asarray(context, dtype=np.int64)
        paths: list[list[int]] = []
        for ngram in range(self.config.max_ngram, self.config.min_ngram - 1, -1):
            paths = [
                c.tolist() for c in find_continuations(tokens, ngram, budget, self.config.matches)
            ]
            if paths:
                break
        # Nodes are numbered in insertion order (newest match first), and every ancestor precedes
        # its descendants, so the first `budget` nodes below the root form a valid tree. A node's
        # score halves per n-gram length below the longest: the planner's calibration bins by it.
        score = 0.5 ** (self.config.max_ngram - ngram)
        tree = TokenTree.from_paths(int(tokens[-1]), paths, [[score] * len(path) for path in paths])
        return tree.subset(range(1, min(len(tree), budget + 1)))

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        pass

    def reset(self) -> None:
        pass

    def fork(self) -> PromptLookupDrafter:
        return self  # it reads only the context it is given
