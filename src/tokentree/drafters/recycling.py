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

from ..reductions import top_k
from ..sampling import Acceptance
from ..tree import TokenTree
from .base import fresh_request_copy
from .template import TEMPLATES, TemplateShape, parse_template


@dataclass
class RecyclingConfig:
    """Token Recycling options (CLI flags ``--recycling-<field>``)."""

    k: int = 8  # successors stored per token
    template: str = "paper"  # rank-path template: paper (80 nodes) or small (20)
    learning_rate: float = 0.05  # running-average rate of the template nodes' acceptance

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(
                f"template must be one of {', '.join(TEMPLATES)}, got '{self.template}'"
            )
        needed = 1 + max(max(p) for p in parse_template(TEMPLATES[self.template]))
        if not needed <= self.k <= 64:
            raise ValueError(
                f"k must be in [{needed}, 64] for template '{self.template}', got {self.k}"
            )
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")


class RecyclingDrafter:
    name = "recycling"
    default_budget = 16
    runs_draft_model = False

    def __init__(self, config: RecyclingConfig | None = None):
        self.config = config or RecyclingConfig()
        self.shape = TemplateShape(self.config.template)
        self._learned = self  # whose matrix this drafter reads and writes (a fork's: its parent's)
        self._matrix: np.ndarray | None = None
        self._proposed: list[int] = []  # template node of each node of the last tree
        self._tree: TokenTree | None = None  # the last tree

    @property
    def matrix(self) -> np.ndarray | None:
        """[V, k] successor ids, -1 = unknown (made at the first observe, shared with every
        fork)."""
        return self._learned._matrix

    @matrix.setter
    def matrix(self, value: np.ndarray | None) -> None:
        self._learned._matrix = value

    def reset(self) -> None:
        """Per-request reset: the matrix and the learned shape are kept (hot start)."""
        self._proposed, self._tree = [], None

    def fork(self) -> RecyclingDrafter:
        """Its own last tree over this drafter's matrix and template rates (see
        :class:`ForkingDrafter`)."""
        return fresh_request_copy(self)

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        self._tree = self._propose(context, budget)
        return self._tree

    def _propose(self, context: Sequence[int], budget: int) -> TokenTree:
        root = int(context[-1])
        self._proposed = [0]
        if self.matrix is None or budget <= 0:
            return TokenTree.root(root)
        tokens, parents = [root], [-1]
        position = {0: 0}  # template node -> tree node
        for node in self.shape.ranked():
            if len(tokens) > budget:
                break
            up = position.get(self.shape.parent[node])
            if up is None:
                continue
            token = int(self.matrix[tokens[up], self.shape.rank(node)])
            if token < 0:
                continue
            position[node] = len(tokens)
            tokens.append(token)
            parents.append(up)
            self._proposed.append(node)
        return TokenTree(tuple(tokens), tuple(parents))

    def state_dict(self) -> dict:
        """The persistent part: the successor matrix and the learned template rates."""
        matrix = (
            None
            if self.matrix is None
            else {
                "rows": int(self.matrix.shape[0]),
                "data": base64.b64encode(self.matrix.astype(np.int32).tobytes()).decode(),
            }
        )
        return {
            "k": self.config.k,
            "template": self.config.template,
            "rate": self.shape.rate.tolist(),
            "matrix": matrix,
        }

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state["k"] != self.config.k or state["template"] != self.config.template:
            raise ValueError(
                f"saved with k={state['k']}, template {state['template']}; this drafter uses "
                f"k={self.config.k}, template {self.config.template}"
            )
        matrix = None
        if state["matrix"] is not None:
            rows = int(state["matrix"]["rows"])
            flat = np.frombuffer(
                base64.b64decode(state["matrix"]["data"], validate=True), dtype=np.int32
            )
            if rows != vocab_size or flat.size != rows * self.config.k:
                raise ValueError(
                    f"matrix of {flat.size} ids does not fit {vocab_size} x {self.config.k}"
                )
            if flat.size and (flat.min() < -1 or flat.max() >= vocab_size):
                raise ValueError("matrix holds token ids outside the vocabulary")
            matrix = flat.astype(np.int64).reshape(rows, self.config.k)
        self.shape.load_rates(state["rate"])
        self.matrix = matrix

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        """Refresh the rows of every verified token from the target's logits; learn the shape."""
        if self.matrix is None:
            self.matrix = np.full((logits.shape[-1], self.config.k), -1, dtype=np.int64)
        top = top_k(logits, self.config.k)[1].cpu().numpy()
        self.matrix[np.asarray(tree.tokens)] = top
        located = (
            None if self._tree is None else self._tree.locate(tree)
        )  # the verified tree may be a cut
        if located is not None:
            template_nodes = [self._proposed[node] for node in located]
            self.shape.learn(tree, template_nodes, acceptance, self.config.learning_rate)
