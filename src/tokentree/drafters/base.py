"""The drafter contract."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from ..sampling import Acceptance, Draft, SamplingParams
from ..tree import TokenTree


class Drafter(Protocol):
    """Proposes a token tree continuing ``context``; learns from what the target did."""

    name: str
    default_budget: int  # drafted tokens per step when the request does not say

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        """A tree rooted at ``context[-1]`` with at most ``budget`` nodes below the root."""
        ...

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        """See the verified ``tree``, its target ``logits`` [n, V] and what was accepted."""
        ...

    def reset(self) -> None:
        """Forget per-request state (called before each generation).

        Caches of earlier text (a draft model's KV cache) stay, so a request that shares a prefix
        with the previous one reuses them, like the target's cache does.
        """
        ...


def clear_caches(drafter: object) -> None:
    """Drop whatever KV cache ``drafter`` keeps of earlier requests (benchmarks start every run cold)."""
    clear = getattr(drafter, "clear_caches", None)
    if clear is not None:
        clear()


def uses_draft_model(drafter: object) -> bool:
    """Whether ``drafter`` runs a draft model itself (chain, specinfer, rsd-c, rsd-s, sequoia, dyspec)."""
    return hasattr(drafter, "model")


@runtime_checkable
class StochasticDrafter(Protocol):
    """A drafter that, when sampling, draws children at random and says from which q (V-RRS / V-MSS)."""

    def propose_sampled(self, context: Sequence[int], budget: int, params: SamplingParams,
                        generator: torch.Generator) -> Draft:
        """A tree like :meth:`Drafter.propose`, drawn with ``generator`` from warped draft distributions."""
        ...


@runtime_checkable
class GuidedDrafter(Protocol):
    """A drafter that can use a cheaper drafter's tree as guesses to draft faster (not differently)."""

    def propose_guided(self, context: Sequence[int], budget: int, guide: TokenTree) -> TokenTree:
        """The tree :meth:`Drafter.propose` would give; ``guide`` (rooted at ``context[-1]``, scores
        = how likely each node is) only says which tokens to check first."""
        ...


class NoDrafter:
    """Plain decoding through the speculative engine: a tree with only the root."""

    name = "none"
    default_budget = 0

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        return TokenTree.root(context[-1])

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        pass

    def reset(self) -> None:
        pass
