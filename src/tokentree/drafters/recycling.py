"""Token Recycling: reuse the target's own top-k candidates, stored per token, to draft trees.

An adjacency matrix ``M[V, k]`` holds, for each token, the top-k next tokens the target predicted
the last time that token was a tree node (every verified node updates its row, accepted or not).
A draft tree fills a static template of rank paths by BFS from the root: the node with rank path
(r1, r2, ...) holds ``M[M[root, r1], r2] ...``. The matrix persists across requests (hot start).

The template is cut to the step's budget by each template node's conditional acceptance rate,
learned online (prior: rank 0 likely, higher ranks less), so the tree shape adapts to the workload.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..sampling import Acceptance
from ..tree import TokenTree

# Rank paths, one per template node: "01" = second-best successor of the best successor of the root.
TEMPLATES = {
    # the paper's 80-node imbalanced tree (8 / 21 / 25 / 15 / 8 / 3 nodes at depths 1..6)
    "paper": """
        0 1 2 3 4 5 6 7
        00 01 02 03 04 05 06 07 10 11 12 13 20 21 22 30 31 40 50 60 70
        000 001 002 003 004 005 006 007 010 011 012 020 021 030 040 050 060 070 100 101 110 200 300 400 500
        0000 0001 0002 0003 0004 0010 0011 0020 0030 0040 0100 0200 1000 2000 3000
        00000 00001 00002 00010 00020 00100 01000 10000
        000000 000001 000100
    """,
    # a CPU-sized tree: deep along rank 0, a little width near the root (20 nodes)
    "small": """
        0 1 2 3
        00 01 02 10 11 20
        000 001 010 100
        0000 0001 0010
        00000 00001
        000000
    """,
}
RANK_PRIOR = (0.55, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.02)  # conditional acceptance by rank, before data


def parse_template(text: str) -> list[tuple[int, ...]]:
    """Rank paths in template order; raises ValueError unless every path's parent precedes it."""
    paths = [tuple(int(c) for c in word) for word in text.split()]
    seen = {()}
    for path in paths:
        if path[:-1] not in seen or path in seen:
            raise ValueError(f"template path {path} repeats or comes before its parent")
        seen.add(path)
    return paths


@dataclass
class RecyclingConfig:
    """Token Recycling options (CLI flags ``--recycling-<field>``)."""

    k: int = 8  # successors stored per token
    template: str = "paper"  # rank-path template: paper (80 nodes) or small (20)
    learning_rate: float = 0.05  # running-average rate of the template nodes' acceptance

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got '{self.template}'")
        needed = 1 + max(max(p) for p in parse_template(TEMPLATES[self.template]))
        if not needed <= self.k <= 64:
            raise ValueError(f"k must be in [{needed}, 64] for template '{self.template}', got {self.k}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")


class RecyclingDrafter:
    name = "recycling"
    default_budget = 16

    def __init__(self, config: RecyclingConfig | None = None):
        self.config = config or RecyclingConfig()
        self.paths = parse_template(TEMPLATES[self.config.template])
        index = {path: i + 1 for i, path in enumerate(self.paths)}
        self.parent = [0] + [index.get(p[:-1], 0) for p in self.paths]  # template node -> parent node
        self.rate = np.array([1.0] + [RANK_PRIOR[min(p[-1], len(RANK_PRIOR) - 1)] for p in self.paths])
        self.matrix: np.ndarray | None = None  # [V, k] successor ids, -1 = unknown
        self._proposed: list[int] = []  # template node of each node of the last tree

    def reset(self) -> None:
        """Per-request reset: the matrix and the learned shape are kept (hot start)."""
        self._proposed = []

    def _ranked(self) -> list[int]:
        """Template nodes, most likely accepted first (path product of rates; parents precede children)."""
        path_rate = self.rate.copy()
        for node in range(1, len(path_rate)):
            path_rate[node] *= path_rate[self.parent[node]]
        return sorted(range(1, len(path_rate)), key=lambda n: (-path_rate[n], n))

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        root = int(context[-1])
        self._proposed = [0]
        if self.matrix is None or budget <= 0:
            return TokenTree.root(root)
        tokens, parents = [root], [-1]
        position = {0: 0}  # template node -> tree node
        for node in self._ranked():
            if len(tokens) > budget:
                break
            up = position.get(self.parent[node])
            if up is None:
                continue
            token = int(self.matrix[tokens[up], self.paths[node - 1][-1]])
            if token < 0:
                continue
            position[node] = len(tokens)
            tokens.append(token)
            parents.append(up)
            self._proposed.append(node)
        return TokenTree(tuple(tokens), tuple(parents))

    def state_dict(self) -> dict:
        """The persistent part: the successor matrix and the learned template rates."""
        matrix = None if self.matrix is None else {
            "rows": int(self.matrix.shape[0]),
            "data": base64.b64encode(self.matrix.astype(np.int32).tobytes()).decode(),
        }
        return {"k": self.config.k, "template": self.config.template, "rate": self.rate.tolist(), "matrix": matrix}

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state["k"] != self.config.k or state["template"] != self.config.template:
            raise ValueError(f"saved with k={state['k']}, template {state['template']}; this drafter uses "
                             f"k={self.config.k}, template {self.config.template}")
        rate = np.asarray(state["rate"], dtype=float)
        if rate.shape != self.rate.shape or not ((rate >= 0) & (rate <= 1)).all():
            raise ValueError("template rates have the wrong size or range")
        matrix = None
        if state["matrix"] is not None:
            rows = int(state["matrix"]["rows"])
            flat = np.frombuffer(base64.b64decode(state["matrix"]["data"], validate=True), dtype=np.int32)
            if rows != vocab_size or flat.size != rows * self.config.k:
                raise ValueError(f"matrix of {flat.size} ids does not fit {vocab_size} x {self.config.k}")
            if flat.size and (flat.min() < -1 or flat.max() >= vocab_size):
                raise ValueError("matrix holds token ids outside the vocabulary")
            matrix = flat.astype(np.int64).reshape(rows, self.config.k)
        self.rate, self.matrix = rate, matrix

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        """Refresh the rows of every verified token from the target's logits; learn the shape."""
        if self.matrix is None:
            self.matrix = np.full((logits.shape[-1], self.config.k), -1, dtype=np.int64)
        top = logits.topk(self.config.k, dim=-1).indices.cpu().numpy()
        self.matrix[np.asarray(tree.tokens)] = top
        if len(self._proposed) == len(tree):
            self._learn(tree, acceptance)

    def _learn(self, tree: TokenTree, acceptance: Acceptance) -> None:
        """Running average of each template node's acceptance, given its parent was accepted."""
        accepted = set(acceptance.nodes)
        lr = self.config.learning_rate
        for node in range(1, len(tree)):
            if tree.parents[node] in accepted:
                template_node = self._proposed[node]
                hit = 1.0 if node in accepted else 0.0
                self.rate[template_node] += lr * (hit - self.rate[template_node])
