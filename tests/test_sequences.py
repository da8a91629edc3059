"""Sequence bookkeeping of the llama.cpp backend, checked against the tree's ancestry without
llama.cpp.

A simulated KV cache applies each plan the way llama.cpp does (cells carry sequence sets; a query
sees cells holding its first sequence at positions up to its own) and the visible set of every node
must be exactly the context plus its ancestors and itself.
"""

import random

import pytest

from tokentree.backends.sequences import CONTEXT_SEQ, SequenceBook
from tokentree.tree import TokenTree


class FakeCache:
    """Cells as (position, label, sequence set); label is ('ctx', i) or ('node', i)."""

    def __init__(self, prefix: int):
        self.cells = [[p, ("ctx", p), {CONTEXT_SEQ}] for p in range(prefix)]

    def copy(self, source: int, target: int, end: int) -> None:
        for cell in self.cells:
            if source in cell[2] and cell[0] < end:
                cell[2].add(target)

    def last_position(self, seq: int) -> int:
        return max((c[0] for c in self.cells if seq in c[2]), default=-1)

    def forward(self, tree: TokenTree, start: int, prefix: int, seq_ids) -> dict[int, set]:
        """Add the batch's cells and return what each node sees; checks llama.cpp's batch rules
        first."""
        first_in_batch: dict[int, int] = {}
        for node, seqs in zip(range(start, len(tree)), seq_ids):
            assert (
                len({self.last_position(s) for s in seqs}) == 1
            )  # coupled sequences have not diverged
            for s in seqs:
                first_in_batch.setdefault(s, prefix + tree.depths[node])
        for s, pos in first_in_batch.items():
            assert self.last_position(s) in (-1, pos - 1)  # positions stay consecutive: Y = X + 1
        for node, seqs in zip(range(start, len(tree)), seq_ids):
            self.cells.append([prefix + tree.depths[node], ("node", node), set(seqs)])
        seen = {}
        for node, seqs in zip(range(start, len(tree)), seq_ids):
            pos = prefix + tree.depths[node]
            seen[node] = {c[1] for c in self.cells if seqs[0] in c[2] and c[0] <= pos}
        return seen


def expected(tree: TokenTree, node: int, prefix: int) -> set:
    return {("ctx", p) for p in range(prefix)} | {("node", a) for a in tree.path_to(node)}


def random_tree(rng: random.Random, n: int) -> TokenTree:
    parents = [-1] + [rng.randrange(i) for i in range(1, n)]
    return TokenTree(tuple(range(n)), tuple(parents))


@pytest.mark.parametrize("seed", range(30))
def test_every_node_sees_exactly_context_and_ancestors(seed):
    rng = random.Random(seed)
    tree, prefix = random_tree(rng, rng.randint(1, 25)), rng.randint(0, 6)
    cuts = sorted(rng.sample(range(1, len(tree)), min(2, len(tree) - 1))) if len(tree) > 1 else []
    book, cache = SequenceBook(max_sequences=64), FakeCache(prefix)
    for start, end in zip([0] + cuts, cuts + [len(tree)]):  # forwarded in up to three batches
        part = tree.prefix(end)
        plan = book.plan(part, start, prefix)
        for source, target, stop in plan.copies:
            cache.copy(source, target, stop)
        for node, seen in cache.forward(part, start, prefix, plan.seq_ids).items():
            assert seen == expected(tree, node, prefix), (seed, node)
    assert book.in_use == len(tree.leaves)  # one sequence per root-to-leaf path


def test_chain_uses_the_context_sequence_only():
    book = SequenceBook(max_sequences=4)
    plan = book.plan(TokenTree.chain(5, [6, 7, 8]), 0, prefix=10)
    assert plan.seq_ids == ((0,), (0,), (0,), (0,)) and plan.copies == ()


def test_two_branches_share_the_root():
    tree = TokenTree((5, 6, 7), (-1, 0, 0))
    plan = SequenceBook(max_sequences=4).plan(tree, 0, prefix=10)
    assert plan.seq_ids == ((0, 1), (0,), (1,))
    assert plan.copies == ((0, 1, 10),)  # the new path gets the 10 context cells


def test_too_many_paths_is_an_error():
    star = TokenTree((0, 1, 2, 3), (-1, 0, 0, 0))
    with pytest.raises(ValueError, match="more than 2 sequences"):
        SequenceBook(max_sequences=2).plan(star, 0, prefix=0)


def test_prefix_with_leaves_cuts_from_the_end():
    star = TokenTree((0, 1, 2, 3, 4), (-1, 0, 0, 1, 2))
    assert star.prefix_with_leaves(1) == 2
    assert star.prefix_with_leaves(2) == 5
    assert len(star.prefix(star.prefix_with_leaves(1)).leaves) == 1


def test_probe_trees_respect_a_leaf_cap():
    from tokentree.planner import probe_tree

    for n in (1, 2, 8, 64, 128):
        assert len(probe_tree(n, 1000)) == n
        capped = probe_tree(n, 1000, max_leaves=4)
        assert len(capped) == n and len(capped.leaves) <= 4
    assert len(probe_tree(128, 1000).leaves) > 4  # uncapped trees do branch


def test_preorder_puts_the_first_child_path_first():
    tree = TokenTree((0, 1, 2, 3, 4, 5), (-1, 0, 0, 1, 1, 3))
    assert tree.preorder == (0, 1, 3, 5, 4, 2)
    assert sorted(random_tree(random.Random(3), 30).preorder) == list(range(30))
