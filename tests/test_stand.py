import pytest
import torch

from tokentree.drafters import make_drafter
from tokentree.drafters.stand import merge
from tokentree.errors import TokentreeError
from tokentree.sampling import Acceptance


def test_merge_is_a_running_average_capped_to_top():
    merged = merge({1: 0.8, 2: 0.2}, {2: 1.0}, rate=0.5, top=10)
    assert merged == pytest.approx({1: 0.4, 2: 0.6})
    assert merge({1: 0.5, 2: 0.3, 3: 0.2}, {4: 1.0}, rate=0.5, top=2) == pytest.approx(
        {4: 0.5, 1: 0.25}
    )


def test_prompt_ngrams_with_back_off():
    drafter = make_drafter("stand", max_n=2)
    tree = drafter.propose([1, 2, 3, 1, 2, 4, 9, 2], budget=3)
    # "2" was followed by 3 then 4 (running average 0.5/0.5 -> 4 newer but equal); "9 2" is
    # unknown: back off to "2"
    assert tree.tokens[0] == 2 and set(tree.tokens[1:3]) == {3, 4}
    assert tree.scores[1] == pytest.approx(0.5)
    assert drafter.propose([7, 8], budget=3).tokens == (8,)


def test_best_first_growth_follows_path_probability():
    drafter = make_drafter("stand", max_n=1)
    drafter.update([5], {6: 0.9, 7: 0.1})
    drafter.update([6], {8: 0.8, 9: 0.2})
    tree = drafter.propose([5], budget=3)
    assert tree.tokens == (5, 6, 8, 9) and tree.parents == (-1, 0, 1, 1)  # 0.9, 0.72, 0.18 beat 0.1
    assert tree.scores == pytest.approx((1.0, 0.9, 0.72, 0.18))


def test_observe_learns_from_every_verified_node():
    drafter = make_drafter("stand", max_n=2, rate=1.0)
    tree = drafter.propose([3, 5], budget=2)
    assert tree.tokens == (5,)  # nothing learned yet beyond the prompt "3 5"
    logits = torch.full((1, 12), -20.0)
    logits[0, 11] = 10.0
    drafter.observe(tree, logits, Acceptance((0,), 11))
    assert max(drafter.lookup([3, 5]), key=drafter.lookup([3, 5]).get) == 11
    assert drafter.propose([3, 5], budget=1).tokens == (5, 11)


def test_table_is_capped():
    drafter = make_drafter("stand", max_n=1, max_contexts=1000)
    for token in range(5000):
        drafter.update([token], {1: 1.0})
    assert len(drafter.table) <= 1000 and (4999,) in drafter.table


def test_bad_options():
    with pytest.raises(TokentreeError, match="rate"):
        make_drafter("stand", rate=0)


def test_sampled_draft_fills_the_template_without_replacement_and_learns_its_cut():
    from tokentree.sampling import Draw, SamplingParams

    drafter = make_drafter("stand", max_n=1, template="small")
    drafter.vocab_size = 12
    drafter.update([5], {6: 0.6, 7: 0.3, 8: 0.1})
    drafter.update([6], {9: 1.0})
    params = SamplingParams(temperature=1.0)
    assert drafter.propose_sampled([5], 0, params, torch.Generator()).tree.tokens == (5,)
    draft = drafter.propose_sampled([5], 5, params, torch.Generator().manual_seed(0))
    tree = draft.tree
    assert draft.draw is Draw.WITHOUT_REPLACEMENT and len(tree) <= 6
    root_children = [tree.tokens[c] for c in tree.children[0]]
    assert len(set(root_children)) == len(root_children) == 3  # ranks 0, 1, 2 of 3 stored tokens
    assert torch.allclose(draft.q[0, [6, 7, 8]], torch.tensor([0.6, 0.3, 0.1]), atol=1e-6)
    fresh = make_drafter(
        "stand", max_n=1, template="small"
    )  # the same table, untouched template rates
    fresh.vocab_size, fresh.table = 12, drafter.table
    below_6 = set()
    for seed in range(
        20
    ):  # wherever 6 is sampled among the root's children, the budget reaches below it
        other = fresh.propose_sampled([5], 5, params, torch.Generator().manual_seed(seed)).tree
        below_6.add(tuple(other.tokens[c] for c in other.children[other.tokens.index(6)]))
    assert below_6 == {(9,)}  # 9, the only token stored after 6, and never a rank-1 child there
    # acceptance statistics move the template's rates: rank 0 at the root was accepted
    first = tree.children[0][0]
    before = drafter.shape.rate.copy()
    drafter.observe(tree, torch.zeros(len(tree), 12), Acceptance((0, first), 3))
    assert drafter.shape.rate[1] > before[1] and drafter.shape.rate[2] < before[2]


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0.7),
        dict(temperature=1.3, top_p=0.8),
        dict(temperature=0.9, top_k=2),
        dict(temperature=1.0, min_p=0.2),
    ],
)
def test_sampled_q_equals_warping_the_full_vocabulary(options):
    from tokentree.sampling import SamplingParams, warp

    drafter = make_drafter("stand", max_n=1, template="small")
    drafter.vocab_size = 50
    stored = {3: 0.5, 17: 0.25, 40: 0.15, 8: 0.1}
    drafter.update([5], stored)
    params = SamplingParams(**options)
    draft = drafter.propose_sampled([5], 4, params, torch.Generator().manual_seed(1))
    full = torch.full((1, 50), float("-inf"))
    for token, p in drafter.lookup([5]).items():
        full[0, token] = torch.tensor(p).log()
    torch.testing.assert_close(draft.q[0], warp(full, params)[0])
