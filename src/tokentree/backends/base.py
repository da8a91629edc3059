"""The backend contract: prefill, verify a tree, commit an accepted path.

Drafters, acceptance rules and the engine talk to models only through this protocol, so a
llama.cpp backend can sit beside the transformers one.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from ..tree import TokenTree


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
