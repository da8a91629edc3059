"""Tree attention through llama.cpp sequences: which sequence ids each tree node gets.

llama.cpp has no custom attention mask. A query token sees the cached cells that carry its *first*
sequence id at positions up to its own, so a tree is verified in one batch when

- every root-to-leaf path is one sequence (the committed context is copied into each),
- every node carries the ids of all paths through it, its own path's id first.

Then a node sees exactly the context plus its ancestors. A tree may also be forwarded in several
batches (a draft model grows one level per forward): a new branch below an already cached node
gets a fresh sequence, copied from the cached path it hangs from. :class:`SequenceBook` is the
pure bookkeeping; the backend applies its :class:`BatchPlan` with the llama.cpp memory functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..tree import TokenTree

CONTEXT_SEQ = 0  # the sequence holding the committed context between steps


@dataclass(frozen=True)
class BatchPlan:
    """How to forward nodes ``tree[start:]``.

    seq_ids: [m] sequence ids of each forwarded node, its own first.
    copies:  (source seq, new seq, end position): before the batch, give the new sequence the
             cached cells of the source at positions < end.
    """

    seq_ids: tuple[tuple[int, ...], ...]
    copies: tuple[tuple[int, int, int], ...]


@dataclass
class BatchRows:
    """The rows of one ``llama_decode``: token, position, sequence ids (own first) and whether its
    logits are wanted, per row. Rows of several sequences' trees are concatenated into one."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[tuple[int, ...]] = field(default_factory=list)
    outputs: list[bool] = field(default_factory=list)

    def add(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[tuple[int, ...]],
        outputs: int,
    ) -> None:
        """Append rows; the last ``outputs`` of them return logits."""
        self.tokens.extend(tokens)
        self.positions.extend(positions)
        self.seq_ids.extend(seq_ids)
        self.outputs.extend(i >= len(tokens) - outputs for i in range(len(tokens)))

    def extend(self, other: BatchRows) -> None:
        self.tokens += other.tokens
        self.positions += other.positions
        self.seq_ids += other.seq_ids
        self.outputs += other.outputs

    @property
    def output_count(self) -> int:
        return sum(self.outputs)

    def chunks(self, size: int) -> list[BatchRows]:
        """These rows in consecutive pieces of at most ``size`` (one ``llama_decode`` each: a
        later piece's rows see the cells the earlier pieces wrote)."""
        return [
            BatchRows(
                self.tokens[i : i + size],
                self.positions[i : i + size],
                self.seq_ids[i : i + size],
                self.outputs[i : i + size],
            )
            for i in range(0, len(self.tokens), size)
        ]


@dataclass
class SequenceBook:
    """Sequence assignment of the tree being forwarded (reset after each commit)."""

    max_sequences: int
    own: list[int] = field(default_factory=list)  # [n forwarded] each node's own (first) sequence
    extended: set[int] = field(
        default_factory=set
    )  # nodes with a child that inherited their sequence

    def reset(self) -> None:
        self.own, self.extended = [], set()

    @property
    def in_use(self) -> int:
        return len(set(self.own)) if self.own else 1

    def plan(self, tree: TokenTree, start: int, prefix: int) -> BatchPlan:
        """Assign sequences to nodes ``tree[start:]`` (nodes before ``start`` were planned earlier).

        ``prefix`` is the number of committed tokens in the cache (the root sits at that position).
        Raises ValueError when the tree needs more than ``max_sequences`` sequences.
        """
        if start != len(self.own):
            raise ValueError(f"plan from node {start}, but {len(self.own)} nodes are forwarded")
        lists: dict[int, list[int]] = {}
        copies = []
        next_seq = max(self.own, default=CONTEXT_SEQ) + 1
        for node in range(start, len(tree)):
            parent = tree.parents[node]
            if parent < 0 or parent not in self.extended:
                seq = CONTEXT_SEQ if parent < 0 else self.own[parent]
                if parent >= 0:
                    self.extended.add(parent)
            else:
                seq, next_seq = next_seq, next_seq + 1
                if seq >= self.max_sequences:
                    raise ValueError(f"the tree needs more than {self.max_sequences} sequences")
                copies.append(self._branch(tree, parent, seq, start, prefix, lists))
            self.own.append(seq)
            lists[node] = [seq]
        return BatchPlan(tuple(tuple(lists[i]) for i in range(start, len(tree))), tuple(copies))

    def _branch(
        self,
        tree: TokenTree,
        parent: int,
        seq: int,
        start: int,
        prefix: int,
        lists: dict[int, list[int]],
    ) -> tuple[int, int, int]:
        """Add ``seq`` to the uncached ancestors from ``parent`` up; the copy that covers the
        cached rest."""
        node = parent
        while node >= start:
            lists[node].append(seq)
            node = tree.parents[node]
        if node < 0:
            return (
                CONTEXT_SEQ,
                seq,
                prefix,
            )  # the whole path is in this batch: copy the context only
        return self.own[node], seq, prefix + tree.depths[node] + 1
