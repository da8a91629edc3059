import numpy as np
import pytest

from tokentree.drafters import make_drafter
from tokentree.drafters.pld import PLDConfig, PromptLookupDrafter, find_continuations
from tokentree.errors import TokentreeError


def test_latest_match_wins():
    ctx = np.array([1, 2, 9, 9, 1, 2, 8, 8, 1, 2])
    assert [c.tolist() for c in find_continuations(ctx, 2, 3, 5)] == [[8, 8, 1], [9, 9, 1]]


def test_chain_uses_longest_ngram_then_backs_off():
    drafter = PromptLookupDrafter()
    # trigram (5,6,7) occurs once, followed by 1 2; bigram (6,7) occurs later, followed by 3
    tree = drafter.propose([5, 6, 7, 1, 2, 0, 6, 7, 3, 0, 5, 6, 7], budget=4)
    assert tree.tokens == (7, 1, 2, 0, 6)
    assert tree.scores[1:] == (0.5,) * 4  # a trigram, one short of the longest n-gram (4)
    tree = drafter.propose([4, 4, 9, 1, 8, 3, 9], budget=4)  # only the unigram 9 matches
    assert tree.tokens == (9, 1, 8, 3, 9)
    assert tree.scores[1:] == (0.125,) * 4
    assert drafter.propose([1, 2, 3], budget=4).tokens == (3,)  # nothing matches


def test_budget_limits_nodes():
    drafter = PromptLookupDrafter()
    assert len(drafter.propose(list(range(20)) + [0, 1, 2], budget=5)) == 6
    assert len(drafter.propose(list(range(20)) + [0, 1, 2], budget=0)) == 1


def test_multi_match_builds_a_tree_of_distinct_continuations():
    drafter = PromptLookupDrafter(PLDConfig(matches=3))
    ctx = [7, 1, 2, 7, 3, 4, 7, 5, 6, 7]
    tree = drafter.propose(ctx, budget=10)
    assert tree.children[0] and len(tree.children[0]) == 3
    assert {tree.tokens[c] for c in tree.children[0]} == {5, 3, 1}
    assert tree.tokens[tree.children[0][0]] == 5  # newest first
    assert len(drafter.propose(ctx, budget=3)) == 4


def test_bad_options_give_clear_errors():
    with pytest.raises(TokentreeError, match="min_ngram"):
        make_drafter("pld", min_ngram=4, max_ngram=2)
    with pytest.raises(TokentreeError, match="no option"):
        make_drafter("pld", colour=1)
    with pytest.raises(TokentreeError, match="unknown drafter"):
        make_drafter("magic")
    assert make_drafter("pld-tree").config.matches == 4
