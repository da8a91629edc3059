"""Lossless sampling rules: crafted logits with certain outcomes, then histograms against p."""

from collections import Counter

import pytest
import torch
from chisquare import fits, total_variation
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tokentree.errors import TokentreeError
from tokentree.sampling import (
    Draft,
    Draw,
    SamplingParams,
    accept,
    accept_sampled,
    gumbel_top_k,
    residual,
    warp,
)
from tokentree.tree import TokenTree

V = 8
INF = float("inf")


def probs(mass: dict[int, float]) -> torch.Tensor:
    row = torch.zeros(V)
    for token, p in mass.items():
        row[token] = p
    return row


def star(children) -> TokenTree:
    """A root (token 0) with one child per token, in order."""
    return TokenTree((0, *children), (-1,) + (0,) * len(children))


def run(draft, p, seed=0):
    return accept_sampled(draft, p, torch.Generator().manual_seed(seed))


def expand(tree, p_root):
    """[n, V] target probabilities: ``p_root`` at the root, uniform below (never reached in these
    tests)."""
    return torch.cat([p_root[None], torch.full((len(tree) - 1, V), 1 / V)])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.5, min_p=0.2),
        SamplingParams(temperature=0.9, top_k=5, top_p=0.9, min_p=0.05),
    ],
)
def test_warp_matches_transformers_warpers(params):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * 3
    scores = TemperatureLogitsWarper(params.temperature)(None, logits.clone())
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    if params.min_p:
        scores = MinPLogitsWarper(params.min_p)(None, scores)
    assert torch.allclose(warp(logits, params), scores.softmax(-1), atol=1e-6)


def test_sampling_params_are_validated():
    for bad in (
        dict(temperature=-1),
        dict(top_k=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(min_p=1),
    ):
        with pytest.raises(TokentreeError):
            SamplingParams(**bad)


def test_draft_kind_and_q_must_agree():
    tree = star([3])
    with pytest.raises(ValueError):
        Draft(tree, Draw.WITHOUT_REPLACEMENT)  # sampled draft without q
    with pytest.raises(ValueError):
        Draft(tree, Draw.DETERMINISTIC, torch.zeros(2, V))
    with pytest.raises(ValueError):
        Draft(tree, Draw.IID, torch.zeros(3, V))  # wrong row count


@pytest.mark.parametrize("draw", list(Draw))
def test_certain_acceptance_of_the_only_possible_token(draw):
    tree = star([3, 5])
    q = None if draw is Draw.DETERMINISTIC else expand(tree, probs({3: 0.5, 5: 0.5}))
    acc = run(Draft(tree, draw, q), expand(tree, probs({5: 1.0})))
    assert acc.nodes == (0, 2)  # 3 rejected for sure (p = 0), 5 accepted for sure


@pytest.mark.parametrize("draw", list(Draw))
def test_all_children_rejected_bonus_from_residual(draw):
    tree = star([3, 5])
    q = None if draw is Draw.DETERMINISTIC else expand(tree, probs({3: 0.5, 5: 0.5}))
    acc = run(Draft(tree, draw, q), expand(tree, probs({7: 1.0})))  # disjoint supports
    assert acc.nodes == (0,) and acc.bonus == 7


def test_v_mss_keeps_q_after_a_rejection_where_v_rrs_zeroes_it():
    # p = {5: .75, 7: .25}, q = {3: .5, 5: .5}: child 3 is rejected for sure; residual p' = {5: .5,
    # 7: .5}.
    # V-MSS then accepts 5 with min(1, .5/.5) = 1; V-RRS uses q' = {5: 1} and accepts with .5 only.
    tree = star([3, 5])
    p, q = expand(tree, probs({5: 0.75, 7: 0.25})), expand(tree, probs({3: 0.5, 5: 0.5}))
    assert all(run(Draft(tree, Draw.IID, q), p, seed).nodes == (0, 2) for seed in range(20))
    outcomes = {run(Draft(tree, Draw.WITHOUT_REPLACEMENT, q), p, seed).nodes for seed in range(40)}
    assert outcomes == {(0,), (0, 2)}


def test_residual_after_one_two_and_all_rejections():
    p = probs({1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1})
    q = probs({1: 0.5, 2: 0.5})
    first = residual(p, q)  # max(p - q, 0) = {3: .2, 4: .1}
    assert torch.allclose(first, probs({3: 2 / 3, 4: 1 / 3}))
    assert torch.allclose(residual(first, probs({3: 1.0})), probs({4: 1.0}))
    assert torch.equal(residual(p, p), p)  # nothing left: p itself, never NaN
    # V-det: rejecting 1 then 2 leaves p renormalised over {3, 4}; the bonus can only be 3 or 4
    tree = star([1, 2])
    bonuses = {
        run(Draft(tree), expand(tree, probs({1: 1e-9, 2: 1e-9, 3: 0.5, 4: 0.5})), s).bonus
        for s in range(30)
    }
    assert bonuses == {3, 4}


def test_draft_mass_on_tokens_top_k_removed_is_never_accepted():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0, -1.0, -1.0, -1.0]])
    tree = star([3, 1])
    logits = logits.expand(len(tree), V).clone()
    q = torch.softmax(torch.zeros(len(tree), V), -1)
    params = SamplingParams(temperature=1.0, top_k=2)  # token 3 is third: removed from p
    for seed in range(30):
        acc = accept(Draft(tree, Draw.IID, q), logits, params, torch.Generator().manual_seed(seed))
        assert acc.new_tokens(tree)[0] in (1, 2)


def test_temperature_zero_is_greedy_for_any_draft():
    tree = star([3, 5])
    logits = torch.zeros(3, V)
    logits[0, 5] = 1.0
    q = torch.full((3, V), 1 / V)
    acc = accept(Draft(tree, Draw.IID, q), logits, SamplingParams(), torch.Generator())
    assert acc.nodes == (0, 2)


def test_gumbel_top_k_draws_without_replacement_and_follows_the_law():
    q = probs({0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05})
    gen = torch.Generator().manual_seed(3)
    draws = [tuple(gumbel_top_k(q, 2, gen)) for _ in range(6000)]
    assert all(len(set(d)) == 2 for d in draws)
    assert gumbel_top_k(q, 6, gen).__len__() == 4  # only 4 tokens have mass
    # P(first=a, second=b) = q_a * q_b / (1 - q_a) for sampling without replacement
    expected = {
        (a, b): q[a].item() * q[b].item() / (1 - q[a].item())
        for a in range(4)
        for b in range(4)
        if a != b
    }
    assert fits(Counter(draws), expected, len(draws))


def first_token_law(
    draw: Draw,
    p_row: torch.Tensor,
    q_row: torch.Tensor,
    n: int,
    seed: int,
    always_accept: bool = False,
) -> Counter:
    """Histogram of the first new token over ``n`` steps; children drawn per step as ``draw``
    says."""
    gen = torch.Generator().manual_seed(seed)
    counts = Counter()
    for _ in range(n):
        if draw is Draw.WITHOUT_REPLACEMENT:
            children = gumbel_top_k(q_row, 3, gen)
        elif draw is Draw.IID:
            children = torch.multinomial(q_row, 3, replacement=True, generator=gen).tolist()
        else:
            children = [0, 1, 2]  # fixed candidates
        tree = star(children)
        if always_accept:  # a deliberately lossy rule: the negative control
            counts[children[0]] += 1
            continue
        q = None if draw is Draw.DETERMINISTIC else q_row.expand(len(tree), V)
        acc = accept_sampled(Draft(tree, draw, q), p_row.expand(len(tree), V), gen)
        counts[acc.new_tokens(tree)[0]] += 1
    return counts


P_ROW = torch.tensor([0.05, 0.3, 0.1, 0.2, 0.15, 0.1, 0.05, 0.05])
Q_ROW = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])


@pytest.mark.parametrize("draw", list(Draw))
def test_every_rule_reproduces_p_and_the_error_shrinks(draw):
    expected = dict(enumerate(P_ROW.tolist()))
    small = first_token_law(draw, P_ROW, Q_ROW, 500, seed=1)
    large = first_token_law(draw, P_ROW, Q_ROW, 8000, seed=2)
    assert fits(large, expected, 8000)
    assert total_variation(large, expected, 8000) < total_variation(small, expected, 500)
    assert total_variation(large, expected, 8000) < 0.03


@pytest.mark.parametrize("draw", list(Draw))
def test_negative_control_a_lossy_rule_is_detected(draw):
    biased = first_token_law(draw, P_ROW, Q_ROW, 8000, seed=2, always_accept=True)
    assert not fits(biased, dict(enumerate(P_ROW.tolist())), 8000)
