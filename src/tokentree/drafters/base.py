"""The drafter contract."""

from __future__ import annotations

import copy
from typing import Literal, Protocol, Sequence, runtime_checkable

import torch

from ..errors import TokentreeError
from ..sampling import Acceptance, Draft, SamplingParams
from ..tree import TokenTree


class Drafter(Protocol):
    """Proposes a token tree continuing ``context``; learns from what the target did."""

    name: str
    default_budget: int | Literal["auto"]  # drafted tokens per step when the request does not say
    # drafting runs a draft model (a forward per tree level; see request.decide_budget)
    runs_draft_model: bool

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


@runtime_checkable
class CachingDrafter(Protocol):
    """A drafter that keeps a KV cache of earlier requests (a draft model's)."""

    def clear_caches(self) -> None:
        """Drop it (benchmarks start every run cold)."""
        ...


@runtime_checkable
class LearningDrafter(Protocol):
    """A drafter whose learned state (tries, tables, matrices) can be saved and loaded."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict, vocab_size: int) -> None: ...


@runtime_checkable
class SharingDrafter(Protocol):
    """A learning drafter whose knowledge other processes (server replicas) can merge. Drafts are
    verified, so what it absorbs changes only its speed, never any output."""

    def knowledge_delta(self, final: bool = False) -> dict:
        """What it learned since the last call, bounded and JSON-able (``final``: also what it is
        still learning, at shutdown)."""
        ...

    def absorb_knowledge(self, delta: dict) -> None:
        """Merge another's :meth:`knowledge_delta` under its own bounds and eviction (what it
        absorbs is not in its own next delta)."""
        ...


@runtime_checkable
class ForkingDrafter(Protocol):
    """A drafter that can decode several sequences at once (the sequences of a batch, ``n``
    samples)."""

    def fork(self) -> Drafter:
        """A drafter with its own per-request state (what one step proposes and then observes) over
        this one's learned state: what any fork learns, all of them and this one use."""
        ...


def fork(drafter: Drafter) -> Drafter:
    """``drafter.fork()``, or a clear error for drafters that hold one sequence's state (a draft
    model's KV cache, for one)."""
    if isinstance(drafter, ForkingDrafter):
        return drafter.fork()
    raise TokentreeError(
        f"drafter '{drafter.name}' cannot decode several sequences at once yet: use auto "
        "(without a draft model), stand, pld, lookahead, recycling or none"
    )


def fresh_request_copy(drafter: Drafter) -> Drafter:
    """A shallow copy (the learned tables are shared) with its per-request state reset: the fork
    of drafters whose learned state lives in objects they only mutate."""
    other = copy.copy(drafter)
    other.reset()
    return other


def clear_caches(drafter: Drafter) -> None:
    """Drop whatever KV cache ``drafter`` keeps of earlier requests."""
    if isinstance(drafter, CachingDrafter):
        drafter.clear_caches()


@runtime_checkable
class StochasticDrafter(Protocol):
    """A drafter that, when sampling, draws children at random and says from which q (V-RRS /
    V-MSS)."""

    def propose_sampled(
        self,
        context: Sequence[int],
        budget: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Draft:
        """A tree like :meth:`Drafter.propose`, drawn with ``generator`` from warped draft
        distributions."""
        ...


@runtime_checkable
class GuidedDrafter(Protocol):
    """A drafter that can use a cheaper drafter's tree as guesses to draft faster (not
    differently)."""

    def propose_guided(self, context: Sequence[int], budget: int, guide: TokenTree) -> TokenTree:
        """The tree :meth:`Drafter.propose` would give; ``guide`` (rooted at ``context[-1]``, scores
        = how likely each node is) only says which tokens to check first."""
        ...


class NoDrafter:
    """Plain decoding through the speculative engine: a tree with only the root."""

    name = "none"
    default_budget = 0
    runs_draft_model = False

    def fork(self) -> NoDrafter:
        return self  # no state at all

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        return TokenTree.root(context[-1])

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        pass

    def reset(self) -> None:
        pass
