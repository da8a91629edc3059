"""The backend contract: prefill, verify a tree, commit an accepted path.

The engine and the acceptance rules talk to the target only through :class:`Backend`; draft models
run on a :class:`GrowingBackend` (a tree forwarded a level at a time). Either way a
llama.cpp backend can sit beside the transformers one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..errors import TokentreeError
from ..tree import TokenTree


def shared_prefix(cached: Sequence[int], wanted: Sequence[int]) -> int:
    """How many leading tokens ``cached`` and ``wanted`` have in common (what a prefill can
    keep)."""
    shared = 0
    for a, b in zip(cached, wanted):
        if a != b:
            break
        shared += 1
    return shared


def bucket(rows: int) -> int:
    """The padded row count of a forward of ``rows`` nodes: the next power of two."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass(frozen=True)
class StaticConfig:
    """``--static-cache`` / ``--compile``: a fixed cache and fixed forward shapes."""

    slots: int  # cache positions: the prompt, the answer and one tree must fit
    compile: bool = False  # the tree forward through torch.compile (CUDA graphs on a GPU)

    def __post_init__(self) -> None:
        if self.slots < 16:
            raise TokentreeError(f"--static-cache must be at least 16 tokens, got {self.slots}")

    def fit_profile(
        self, sizes: Sequence[int], context: int, longer: Sequence[int], long_sizes: Sequence[int]
    ) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        """The verify-cost profile's tree sizes (their buckets: a forward costs its padded size),
        context and longer contexts that fit the cache (a tree takes half of it at most)."""
        sizes = tuple(sorted({bucket(n) for n in sizes if 2 * bucket(n) <= self.slots}))
        context = min(context, self.slots - bucket(max(sizes)))
        longer = tuple(c for c in longer if c + bucket(max(long_sizes)) <= self.slots)
        return sizes, context, longer


def check_extends(pending: TokenTree | None, tree: TokenTree, start: int) -> None:
    """RuntimeError unless ``tree[:start]`` is the tree ``pending`` forwarded by the previous
    ``grow`` (nothing to check when ``start`` is 0)."""
    if start == 0:
        return
    if (
        pending is None
        or len(pending) != start
        or pending.tokens != tree.tokens[:start]
        or pending.parents != tree.parents[:start]
    ):
        raise RuntimeError("grow must extend the tree forwarded by the previous call")


class TreeBook:
    """What every backend keeps the same way: ``_tokens`` (committed, in the cache) and
    ``_pending`` (the tree forwarded since the last commit), read through ``tokens`` and
    ``pending``."""

    _tokens: list[int]
    _pending: TokenTree | None
    _lead: list[int]  # prompt tokens a prefill held back for the next tree (backends that defer)
    prompt_tail = 64  # see Backend.prompt_tail
    plans_every_tree = False  # see Backend.plans_every_tree

    @property
    def tokens(self) -> list[int]:
        """Token ids whose keys/values (or state) the cache holds."""
        return list(self._tokens)

    @property
    def pending(self) -> TokenTree | None:
        """The tree forwarded since the last commit (None when there is none)."""
        return self._pending

    def verify(self, tree: TokenTree) -> torch.Tensor:
        """Score every node of ``tree`` in one forward: [n, V] float32 logits."""
        if self._pending is not None:
            raise RuntimeError("verify called twice without commit")
        return self.grow(tree, 0)

    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]`` (each backend implements it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement grow")

    def _grow_after_lead(self, tree: TokenTree) -> torch.Tensor:
        """Forward ``_lead`` (prompt tokens a prefill held back) and ``tree`` in one call; the
        tree's logits."""
        lead, self._lead = self._lead, []
        logits = self.grow(tree.behind(lead), 0)
        self._tokens.extend(lead)
        self._pending = tree
        return logits[len(lead) :]


class Backend(Protocol):
    """A causal LM with a KV cache of committed tokens.

    The cache holds ``tokens`` (all committed tokens except the pending root). ``verify`` appends
    the tree to the cache and returns logits; ``commit`` keeps only the accepted nodes.
    """

    vocab_size: int
    max_leaves: int | None  # the most root-to-leaf paths one verify takes (None: no limit)
    prompt_tail: int  # prompt tokens it prefers to forward with the first tree (one forward fewer)
    # verify costs rise steeply with the tree (CPU engines): every request's trees are planned
    # unless it fixes a budget (see tokentree.request.decide_budget)
    plans_every_tree: bool

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
        """Keep the cache entries of the verified tree's ``nodes`` (ascending, from 0); drop the
        rest."""
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


class BatchTarget(Protocol):
    """A target decoding several sequences per forward: ``lanes[slot]`` is a :class:`Backend` over
    that slot's part of one shared cache (llama.cpp sequence ids, or cells of a packed transformers
    cache), and :meth:`verify_many` verifies several lanes' trees in one forward."""

    lanes: Sequence[Backend]
    capacity: int | None  # cache cells in all (None: the cache grows as lanes need)

    def verify_many(self, slots: Sequence[int], trees: Sequence[TokenTree]) -> list[torch.Tensor]:
        """Each slot's tree in one forward; returns each tree's [n_i, V] float32 logits."""
        ...

    def adopt(self, slot: int, source: int, count: int) -> None:
        """Let lane ``slot`` start from the first ``count`` cached tokens of lane ``source`` (a
        shared prompt prefix is forwarded once)."""
        ...

    def release(self, slot: int) -> None:
        """The sequence in ``slot`` left: its lane lets go of its cells."""
        ...

    def clear(self) -> None:
        """No sequence is running: free every cell."""
        ...

    def spare_cells(self, owed: int) -> int | None:
        """Cells left for drafted nodes after ``owed`` more committed tokens and every lane's prompt
        tail still to be forwarded (None: no fixed limit)."""
        ...


class LaneSlots:
    """What both batch targets do the same way over their ``lanes`` (each lane a backend with
    ``adopt(source, count)`` and ``reset()``)."""

    lanes: Sequence

    def adopt(self, slot: int, source: int, count: int) -> None:
        self.lanes[slot].adopt(self.lanes[source], count)

    def release(self, slot: int) -> None:
        self.lanes[slot].reset()

    def reset_lanes(self) -> None:
        for lane in self.lanes:
            lane.reset()
