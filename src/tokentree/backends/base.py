"""The backend contract: prefill, verify a tree, commit an accepted path.

The engine and the acceptance rules talk to the target only through :class:`Backend`; draft models
run on a :class:`GrowingBackend` (a tree forwarded a level at a time). Either way a
llama.cpp backend can sit beside the transformers one.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from ..tree import TokenTree


def shared_prefix(cached: Sequence[int], wanted: Sequence[int]) -> int:
    """How many leading tokens ``cached`` and ``wanted`` have in common (what a prefill can keep)."""
    shared = 0
    for a, b in zip(cached, wanted):
        if a != b:
            break
        shared += 1
    return shared


class Backend(Protocol):
    """A causal LM with a KV cache of committed tokens.

    The cache holds ``tokens`` (all committed tokens except the pending root). ``verify`` appends
    the tree to the cache and returns logits; ``commit`` keeps only the accepted nodes.
    """

    vocab_size: int
    max_leaves: int | None  # the most root-to-leaf paths one verify takes (None: no limit)

    @property
    def tokens(self) -> list[int]:
        """Token ids whose keys/values are in the cache."""
        ...

    def reset(self) -> None:
        """Empty the cache."""
        ...

    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold exactly ``token_ids``, reusing a common cached prefix.

        A backend may hold back the last (at most ``defer``) missing tokens and forward them with
        the next tree (``grow``/``verify`` at node 0) instead of in a forward of their own.
        """
        ...

    def verify(self, tree: TokenTree) -> torch.Tensor:
        """Score every node of ``tree`` in one forward. Returns [n, V] float32 logits."""
        ...

    def commit(self, nodes: Sequence[int]) -> None:
        """Keep the cache entries of the verified tree's ``nodes`` (ascending, from 0); drop the rest."""
        ...


class GrowingBackend(Backend, Protocol):
    """A backend a draft model runs on: besides the target's contract, a tree can be forwarded in
    parts, a level at a time, before one commit (both backends provide it)."""

    @property
    def pending(self) -> TokenTree | None:
        """The tree forwarded since the last commit (None when there is none)."""
        ...

    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]``; ``tree[:start]`` is what the previous call forwarded.
        Returns [n - start, V] float32 logits."""
        ...
