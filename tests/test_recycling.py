import numpy as np
import pytest
import torch

from tokentree.drafters import make_drafter
from tokentree.drafters.template import TEMPLATES, parse_template
from tokentree.errors import TokentreeError
from tokentree.sampling import Acceptance
from tokentree.tree import TokenTree

V = 20


def logits_ranking(*rows):
    """[n, V] logits whose row i ranks rows[i][0] first, rows[i][1] second, ..."""
    logits = torch.zeros(len(rows), V)
    for i, ranking in enumerate(rows):
        for rank, token in enumerate(ranking):
            logits[i, token] = 10.0 - rank
    return logits


def test_templates_are_valid_and_sized():
    assert len(parse_template(TEMPLATES["paper"])) == 80
    assert len(parse_template(TEMPLATES["small"])) == 20
    with pytest.raises(ValueError):
        parse_template("0 00 11")  # 11 before its parent 1
    with pytest.raises(ValueError):
        parse_template("0 1 00 02")  # 02 before its better sibling 01


def test_cold_start_proposes_nothing_then_recycles_all_verified_nodes():
    drafter = make_drafter("recycling", k=4, template="small")
    assert drafter.propose([3, 5], budget=6).tokens == (5,)
    tree = TokenTree((5, 7), (-1, 0))
    # row of 5 ranks 7, 8, 9, 10; row of 7 (a node, even if rejected) ranks 11, 12, 13, 14
    drafter.observe(tree, logits_ranking([7, 8, 9, 10], [11, 12, 13, 14]), Acceptance((0,), 8))
    assert np.array_equal(drafter.matrix[5], [7, 8, 9, 10]) and np.array_equal(
        drafter.matrix[7], [11, 12, 13, 14]
    )
    proposal = drafter.propose([3, 5], budget=3)
    # priors rank the chain 0 -> 00 and the second child 1 first: 5 -> 7 -> 11, and 5 -> 8
    assert proposal.tokens == (5, 7, 11, 8) and proposal.parents == (-1, 0, 1, 0)


def test_unknown_rows_are_skipped_and_budget_respected():
    drafter = make_drafter("recycling", k=4, template="small")
    drafter.observe(TokenTree((5,), (-1,)), logits_ranking([7, 8, 9, 10]), Acceptance((0,), 7))
    tree = drafter.propose([5], budget=20)  # the whole small template
    assert tree.tokens == (5, 7, 8, 9, 10)  # rows of 7..10 unknown: no deeper nodes
    assert len(drafter.propose([5], budget=2)) == 3


def test_learned_shape_prefers_what_gets_accepted():
    drafter = make_drafter("recycling", k=4, template="small", learning_rate=0.5)
    drafter.observe(TokenTree((5,), (-1,)), logits_ranking([7, 8, 9, 10]), Acceptance((0,), 7))
    assert drafter.propose([5], budget=1).tokens == (5, 7)  # prior: rank 0 first
    for _ in range(4):  # the target keeps choosing its second-best token (8) after 5
        tree = drafter.propose([5], budget=3)
        accepted = (0, tree.tokens.index(8))
        drafter.observe(tree, logits_ranking(*[[7, 8, 9, 10]] * len(tree)), Acceptance(accepted, 9))
    assert drafter.propose([5], budget=1).tokens == (5, 8)


def test_bad_options():
    with pytest.raises(TokentreeError, match="template"):
        make_drafter("recycling", template="huge")
    with pytest.raises(TokentreeError, match="k must be"):
        make_drafter("recycling", k=2)


def test_shape_learns_from_a_cut_of_its_tree():
    drafter = make_drafter("recycling", k=4, template="small", learning_rate=0.5)
    drafter.observe(TokenTree((5,), (-1,)), logits_ranking([7, 8, 9, 10]), Acceptance((0,), 7))
    for _ in range(4):  # a planner keeps only the root's second child; the target takes it
        tree = drafter.propose([5], budget=3)
        cut = tree.subset([tree.tokens.index(8)])
        drafter.observe(cut, logits_ranking(*[[7, 8, 9, 10]] * len(cut)), Acceptance((0, 1), 9))
    assert drafter.propose([5], budget=1).tokens == (5, 8)
