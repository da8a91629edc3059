import pytest
import torch

from tokentree.tree import TokenTree


def sample_tree():
    #      0
    #    1   2
    #   3 4   5
    #   6
    return TokenTree((10, 11, 12, 13, 14, 15, 16), (-1, 0, 0, 1, 1, 2, 3))


def test_derived_structure():
    tree = sample_tree()
    assert tree.depths == (0, 1, 1, 2, 2, 2, 3)
    assert tree.children[0] == (1, 2) and tree.children[1] == (3, 4) and tree.children[6] == ()
    assert tree.leaves == (4, 5, 6)
    assert tree.paths == ((0, 1, 4), (0, 2, 5), (0, 1, 3, 6))
    assert tree.positions(7).tolist() == [7, 8, 8, 9, 9, 9, 10]
    assert tree.child_with_token(1, 14) == 4 and tree.child_with_token(1, 15) is None


def test_ancestor_mask():
    mask = sample_tree().ancestor_mask
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for node, ancestors in {
        0: [0],
        1: [0, 1],
        2: [0, 2],
        3: [0, 1, 3],
        4: [0, 1, 4],
        5: [0, 2, 5],
        6: [0, 1, 3, 6],
    }.items():
        expected[node, ancestors] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    "tokens,parents",
    [((), ()), ((1, 2), (-1,)), ((1, 2), (0, 0)), ((1, 2, 3), (-1, 0, 2)), ((1, 2), (-1, -1))],
)
def test_invalid_parent_arrays_are_rejected(tokens, parents):
    with pytest.raises(ValueError):
        TokenTree(tokens, parents)


def test_from_paths_merges_shared_prefixes_and_keeps_max_score():
    tree = TokenTree.from_paths(
        5, [[1, 2, 3], [1, 2, 4], [7]], scores=[[0.9, 0.5, 0.1], [0.9, 0.6, 0.2], [0.3]]
    )
    assert tree.tokens == (5, 1, 2, 3, 4, 7)
    assert tree.parents == (-1, 0, 1, 2, 2, 0)
    assert tree.scores == (1.0, 0.9, 0.6, 0.1, 0.2, 0.3)


def test_chain_and_root():
    assert TokenTree.root(3).tokens == (3,)
    chain = TokenTree.chain(3, [4, 5])
    assert chain.parents == (-1, 0, 1) and chain.paths == ((0, 1, 2),)


def test_subset_keeps_ancestors_and_reindexes():
    sub = sample_tree().subset([6, 5])
    assert sub.tokens == (10, 11, 12, 13, 15, 16)
    assert sub.parents == (-1, 0, 0, 1, 2, 3)
    assert sample_tree().subset([]).tokens == (10,)
    with pytest.raises(IndexError):
        sample_tree().subset([9])


def test_best_keeps_highest_scoring_ancestor_closed_nodes():
    #        0
    #   1(.9)   2(.5)
    #   3(.95)   4(.4)
    tree = TokenTree((0, 1, 2, 3, 4), (-1, 0, 0, 1, 2), (1.0, 0.9, 0.5, 0.95, 0.4))
    assert tree.best(1).tokens == (0, 1)
    assert tree.best(2).tokens == (0, 1, 3)  # the child's 0.95 is capped by its parent's 0.9
    assert tree.best(3).tokens == (0, 1, 2, 3)
    assert tree.best(10) is tree
    assert TokenTree((0, 1, 2), (-1, 0, 1)).best(1).tokens == (0, 1)


def test_follow_walks_a_token_path_as_far_as_it_exists():
    tree = TokenTree.from_paths(9, [[1, 2, 3], [1, 4]])
    assert [tree.tokens[v] for v in tree.follow([9, 1, 4, 7])] == [9, 1, 4]
    assert tree.follow([9, 5]) == [0]


def test_locate_maps_a_cut_back_by_token_paths():
    tree = TokenTree((1, 2, 3, 4, 5, 6), (-1, 0, 0, 1, 1, 2))
    cut = tree.subset([4, 5])
    assert tree.locate(cut) == [0, 1, 2, 4, 5]
    assert tree.locate(tree) == list(range(6))
    assert tree.locate(TokenTree((1, 9), (-1, 0))) is None  # token 9 is not a child of the root
    assert tree.locate(TokenTree.root(7)) is None
