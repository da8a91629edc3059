import pytest
import torch

from tokentree.sampling import accept_greedy
from tokentree.tree import TokenTree

V = 8


def logits_with_argmax(winners):
    """[n, V] logits whose row i has its maximum at winners[i]."""
    logits = torch.randn(len(winners), V, generator=torch.Generator().manual_seed(0))
    logits[torch.arange(len(winners)), torch.tensor(winners)] = 10.0
    return logits


def tree():
    # root(0) -> a(1)=3 -> b(3)=5 ; root -> c(2)=4 -> d(4)=6
    return TokenTree((1, 3, 4, 5, 6), (-1, 0, 0, 1, 2))


def test_full_acceptance_takes_bonus_after_leaf():
    acc = accept_greedy(tree(), logits_with_argmax([4, 0, 6, 0, 7]))
    assert acc.nodes == (0, 2, 4) and acc.bonus == 7 and acc.accepted == 2
    assert acc.new_tokens(tree()) == [4, 6, 7]


def test_partial_acceptance_stops_at_first_miss():
    acc = accept_greedy(tree(), logits_with_argmax([3, 2, 0, 0, 0]))
    assert acc.nodes == (0, 1) and acc.bonus == 2


def test_zero_acceptance_returns_root_argmax():
    acc = accept_greedy(tree(), logits_with_argmax([7, 3, 3, 3, 3]))
    assert acc.nodes == (0,) and acc.bonus == 7 and acc.new_tokens(tree()) == [7]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        accept_greedy(tree(), torch.zeros(3, V))
