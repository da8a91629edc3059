"""Lookahead (Alipay): multi-branch retrieval from tries of earlier token windows.

Two tries: one of the current request (prompt and output so far, rebuilt per request) and one of
all generated outputs, each with the last key tokens of its prompt (global, persists across
requests, size-capped). Retrieval is keyed by the
last 2 tokens (falling back to 1) and returns the most frequent continuations of both as a tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import Acceptance
from ..tree import TokenTree
from .base import fresh_request_copy
from .trie import WindowTrie


@dataclass
class LookaheadConfig:
    """Lookahead options (CLI flags ``--lookahead-<field>``)."""

    window: int = 12  # branch length: tokens per inserted window
    key: int = 2  # match the last `key` tokens first, then fewer
    max_nodes: int = 500_000  # cap on the global trie; counts halve and prune beyond it

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")
        if not 1 <= self.key < self.window:
            raise ValueError(f"key must be in [1, window), got {self.key}")
        if self.max_nodes < 1000:
            raise ValueError(f"max_nodes must be >= 1000, got {self.max_nodes}")


class LookaheadDrafter:
    name = "lookahead"
    default_budget = 16
    runs_draft_model = False

    def __init__(self, config: LookaheadConfig | None = None):
        self.config = config or LookaheadConfig()
        self.global_trie = WindowTrie(self.config.window, self.config.max_nodes)
        self.reset()

    def fork(self) -> LookaheadDrafter:
        """Its own request trie over this global trie (see :class:`ForkingDrafter`)."""
        return fresh_request_copy(self)

    def reset(self) -> None:
        self.request_trie = WindowTrie(self.config.window, 1 << 62)
        self._global_start: int | None = None  # the global trie learns the context from here on
        self._seen = 0  # tokens of the context already inserted
        self._context: list[int] = []

    def _absorb(self, context: Sequence[int]) -> None:
        if self._global_start is None:  # first call of a request: the context is the prompt
            self._global_start = max(
                0, len(context) - self.config.key
            )  # keep the prompt's last keys
        self.request_trie.extend(context, self._seen)
        output = context[self._global_start :]
        self.global_trie.extend(output, max(0, self._seen - self._global_start))
        self._seen = len(context)

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        self._context = list(context)
        self._absorb(self._context)
        paths, scores = [], []
        for trie in (self.request_trie, self.global_trie):
            for k in range(min(self.config.key, len(context)), 0, -1):
                found = trie.continuations(context[-k:], budget)
                if found:
                    paths += [p for p, _ in found]
                    scores += [[s] * len(p) for p, s in found]
                    break
        tree = TokenTree.from_paths(context[-1], paths, scores)
        return tree.best(budget)

    def state_dict(self) -> dict:
        """The persistent part: the global trie."""
        return {"window": self.config.window, "trie": self.global_trie.to_list()}

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state["window"] != self.config.window:
            raise ValueError(
                f"saved with window {state['window']}, this drafter uses {self.config.window}"
            )
        self.global_trie.load_list(state["trie"], vocab_size)
        if self.global_trie.nodes > self.config.max_nodes:
            self.global_trie.halve()

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        # absorb this step's tokens now, so the last step of a request reaches the global trie too
        self._context += acceptance.new_tokens(tree)
        self._absorb(self._context)
