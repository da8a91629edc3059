"""What one step did, for people to look at: the verified tree, which drafter proposed each node,
what the planner cut, what was accepted (see ``tokentree generate --show-trees`` and the bench's
drawn trees)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from .sampling import Acceptance
from .tree import TokenTree


@runtime_checkable
class ExplainingDrafter(Protocol):
    """A drafter that can say which of its parts proposed each node of a tree it drafted."""

    def node_sources(self, tree: TokenTree) -> list[str]:
        """[n] the source of each node of ``tree`` (the root's is ""), before :meth:`observe`."""
        ...


@dataclass(frozen=True)
class StepTrace:
    """One verified step of one sequence.

    tree: the verified tree; sources: [n] who drafted each node ("" for the root);
    accepted: the accepted nodes from the root (Acceptance.nodes); bonus: the target's token after
    them; candidate: drafted nodes the planner was offered (None: the budget was fixed);
    step: the step's index in its request.
    """

    step: int
    tree: TokenTree
    sources: tuple[str, ...]
    accepted: tuple[int, ...]
    bonus: int
    candidate: int | None

    @property
    def drafted(self) -> int:
        return len(self.tree) - 1

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens": list(self.tree.tokens),
            "parents": list(self.tree.parents),
            "sources": list(self.sources),
            "accepted": list(self.accepted),
            "bonus": self.bonus,
            "candidate": self.candidate,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StepTrace:
        tree = TokenTree(tuple(data["tokens"]), tuple(data["parents"]))
        return cls(
            data["step"],
            tree,
            tuple(data["sources"]),
            tuple(data["accepted"]),
            data["bonus"],
            data["candidate"],
        )


def node_sources(drafter, tree: TokenTree) -> tuple[str, ...]:
    """Who drafted each node: the drafter's own account, else its name for every node."""
    if isinstance(drafter, ExplainingDrafter):
        return tuple(drafter.node_sources(tree))
    return ("",) + (drafter.name,) * (len(tree) - 1)


def trace_step(
    step: int,
    tree: TokenTree,
    acceptance: Acceptance,
    sources: Sequence[str],
    candidate: int | None,
) -> StepTrace:
    return StepTrace(step, tree, tuple(sources), acceptance.nodes, acceptance.bonus, candidate)
