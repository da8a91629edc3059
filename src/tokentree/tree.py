"""TokenTree: a drafted tree of tokens stored as a parent array.

Node 0 is the pending root (the last committed token, not yet in the KV cache). Every other node
``i`` has ``parents[i] < i``, so the array is topologically ordered and a single forward pass over
the nodes in index order is valid under the ancestor mask. Everything structural (depths, mask,
positions, paths) is derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class TokenTree:
    """A token tree.

    tokens:  [n] token ids; ``tokens[0]`` is the root.
    parents: [n] parent index of each node; ``parents[0] == -1`` and ``0 <= parents[i] < i``.
    scores:  [n] optional drafter confidence of each node (probability of reaching it from the
             root, 1.0 for the root); used to rank nodes when a tree is cut.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if n == 0 or len(self.parents) != n:
            raise ValueError(
                f"tree needs n >= 1 tokens and n parents, got {n} and {len(self.parents)}"
            )
        if self.parents[0] != -1:
            raise ValueError("node 0 is the root and must have parent -1")
        for i, p in enumerate(self.parents[1:], start=1):
            if not 0 <= p < i:
                raise ValueError(f"parents[{i}] = {p} must satisfy 0 <= parent < {i}")
        if self.scores is not None and len(self.scores) != n:
            raise ValueError(f"scores has {len(self.scores)} entries for {n} nodes")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def root(cls, token: int) -> TokenTree:
        """A tree with only the root: plain decoding."""
        return cls((int(token),), (-1,), (1.0,))

    @classmethod
    def chain(
        cls, root: int, tokens: Sequence[int], scores: Sequence[float] | None = None
    ) -> TokenTree:
        """Root followed by a single path of ``tokens`` (scores: [len(tokens)] or None)."""
        return cls.from_paths(root, [list(tokens)], None if scores is None else [list(scores)])

    @classmethod
    def from_paths(
        cls,
        root: int,
        paths: Iterable[Sequence[int]],
        scores: Iterable[Sequence[float]] | None = None,
    ) -> TokenTree:
        """Merge token paths (each starting below the root) into a trie.

        Shared prefixes become shared nodes. A node's score is the maximum over the paths that
        reach it (1.0 everywhere when ``scores`` is None).
        """
        tokens, parents, node_scores = [int(root)], [-1], [1.0]
        child_of: dict[tuple[int, int], int] = {}
        paths = list(paths)
        score_rows = [None] * len(paths) if scores is None else list(scores)
        for path, row in zip(paths, score_rows, strict=True):
            node = 0
            for depth, token in enumerate(path):
                score = 1.0 if row is None else float(row[depth])
                key = (node, int(token))
                if key not in child_of:
                    child_of[key] = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                    node_scores.append(score)
                node = child_of[key]
                node_scores[node] = max(node_scores[node], score)
        return cls(tuple(tokens), tuple(parents), tuple(node_scores))

    # ----------------------------------------------------------------- derived structure
    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """[n] distance from the root (root = 0)."""
        depths = [0] * len(self)
        for i in range(1, len(self)):
            depths[i] = depths[self.parents[i]] + 1
        return tuple(depths)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """[n] child indices of each node, in index order."""
        kids: list[list[int]] = [[] for _ in range(len(self))]
        for i in range(1, len(self)):
            kids[self.parents[i]].append(i)
        return tuple(tuple(k) for k in kids)

    @cached_property
    def preorder(self) -> tuple[int, ...]:
        """Nodes depth-first, first child first: the path through first children comes first,
        contiguous."""
        order, stack = [], [0]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(self.children[node]))
        return tuple(order)

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool; ``mask[i, j]`` is True when j is i or an ancestor of i."""
        n = len(self)
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            if i:
                mask[i] = mask[self.parents[i]]
            mask[i, i] = True
        return mask

    def ancestor_table(self, k: int) -> torch.Tensor:
        """[n, k] long: column m holds node i's ancestor m steps up (m = 0: i itself), or ``-j``
        when that step leaves the tree: the j-th last committed token (what a causal convolution
        of width k reads along the node's path)."""
        table = torch.empty(len(self), k, dtype=torch.long)
        for i in range(len(self)):
            node, behind = i, 0
            for m in range(k):
                if node >= 0:
                    table[i, m] = node
                    node = self.parents[node]
                else:
                    behind += 1
                    table[i, m] = -behind
        return table

    def positions(self, offset: int) -> torch.Tensor:
        """[n] position ids when the root sits at position ``offset``."""
        return torch.tensor(self.depths, dtype=torch.long) + offset

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to ``node``, inclusive."""
        path = [node]
        while path[-1] != 0:
            path.append(self.parents[path[-1]])
        return path[::-1]

    @cached_property
    def chain_below(self) -> tuple[bool, ...]:
        """[n] whether the subtree of each node is one path (the whole tree's:
        ``chain_below[0]``)."""
        flags = [True] * len(self)
        for i in reversed(range(len(self))):
            kids = self.children[i]
            flags[i] = len(kids) <= 1 and all(flags[k] for k in kids)
        return tuple(flags)

    @cached_property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, kids in enumerate(self.children) if not kids)

    @cached_property
    def paths(self) -> tuple[tuple[int, ...], ...]:
        """Root-to-leaf paths as node indices, one per leaf."""
        return tuple(tuple(self.path_to(leaf)) for leaf in self.leaves)

    def child_with_token(self, node: int, token: int) -> int | None:
        """Index of the child of ``node`` that holds ``token``, or None."""
        for child in self.children[node]:
            if self.tokens[child] == token:
                return child
        return None

    def follow(self, tokens: Sequence[int]) -> list[int]:
        """Nodes from the root along ``tokens`` (``tokens[0]`` is the root's), as far as the tree
        has them."""
        nodes = [0]
        for token in tokens[1:]:
            child = self.child_with_token(nodes[-1], token)
            if child is None:
                break
            nodes.append(child)
        return nodes

    def locate(self, other: TokenTree) -> list[int] | None:
        """For each node of ``other``, the node of this tree with the same token path; None unless
        ``other`` is contained in this tree (e.g. a cut of it)."""
        if other.tokens[0] != self.tokens[0]:
            return None
        found = [0]
        for node in range(1, len(other)):
            match = self.child_with_token(found[other.parents[node]], other.tokens[node])
            if match is None:
                return None
            found.append(match)
        return found

    def behind(self, lead: Sequence[int]) -> TokenTree:
        """``lead`` as a chain with this tree hanging from its last token: what one forward takes
        when tokens still missing from a cache go ahead of a tree (its nodes move up by
        len(lead))."""
        if not lead:
            return self
        shift = len(lead)
        return TokenTree(
            tuple(int(t) for t in lead) + self.tokens,
            tuple(range(-1, shift - 1)) + tuple(p + shift for p in self.parents),
        )

    # ----------------------------------------------------------------- editing
    def best(self, n: int) -> TokenTree:
        """Keep the ``n`` most promising nodes below the root (see :meth:`ranked`); without scores
        the first ``n`` nodes are kept."""
        if n >= len(self) - 1:
            return self
        if self.scores is None:
            return self.subset(range(1, n + 1))
        return self.subset(self.ranked()[:n])

    def ranked(self, scores: Sequence[float] | None = None) -> list[int]:
        """Every node below the root, best first, by ``scores`` (default: the tree's): a node's
        worth is the smallest score on its path, so a child never outranks its parent, and ties go
        to shallower, then earlier, nodes. Any prefix of the list is ancestor-closed (the one n-best
        routine: drafters, the planner's cut and DySpec's growth all use it)."""
        worth = list(self.scores if scores is None else scores)
        for i in range(1, len(self)):
            worth[i] = min(worth[i], worth[self.parents[i]])
        return sorted(range(1, len(self)), key=lambda i: (-worth[i], self.depths[i], i))

    def prefix_with_leaves(self, max_leaves: int) -> int:
        """The largest ``m`` such that the first ``m`` nodes form a tree of at most ``max_leaves``
        leaves.

        Dropping nodes from the end only ever truncates sibling sequences, so a sampled draft cut
        this way is still a valid draw (the acceptance rules stay lossless).
        """
        if max_leaves < 1:
            raise ValueError(f"max_leaves must be >= 1, got {max_leaves}")
        leaves, has_child = 0, [False] * len(self)
        for i in range(len(self)):
            parent = self.parents[i]
            if parent >= 0 and not has_child[parent]:
                has_child[parent] = True  # the parent stops being a leaf, the new node becomes one
            else:
                leaves += 1
            if leaves > max_leaves:
                return i
        return len(self)

    def prefix(self, m: int) -> TokenTree:
        """The first ``m`` nodes (always a valid tree, since parents precede children)."""
        if not 1 <= m <= len(self):
            raise ValueError(f"prefix size must be in 1..{len(self)}, got {m}")
        scores = None if self.scores is None else self.scores[:m]
        return TokenTree(self.tokens[:m], self.parents[:m], scores)

    def subset(self, keep: Iterable[int]) -> TokenTree:
        """The tree restricted to ``keep`` plus all their ancestors (the root always stays).

        Node order is preserved, so the result is again a valid parent array.
        """
        kept = {0}
        for node in keep:
            if not 0 <= node < len(self):
                raise IndexError(f"node {node} is outside a tree of {len(self)} nodes")
            while node not in kept:
                kept.add(node)
                node = self.parents[node]
        order = sorted(kept)
        new_index = {old: new for new, old in enumerate(order)}
        parents = tuple(-1 if old == 0 else new_index[self.parents[old]] for old in order)
        tokens = tuple(self.tokens[old] for old in order)
        scores = None if self.scores is None else tuple(self.scores[old] for old in order)
        return TokenTree(tokens, parents, scores)
