"""The ``Uncertain`` (LATR) rollout policy: forks only where the sampling law's top-1/top-2 margin
is below the threshold, into the sampled token's continuation and the next most likely tokens;
a lookahead before a branch forks again; near-duplicate alternatives pruned; exact logprobs on
every trajectory; clear errors for impossible settings."""

import math

import pytest
import torch
from test_constraints import generator
from test_logprobs import reference_rows

from tokentree.api import Uncertain
from tokentree.api.rollout_policies import similarity
from tokentree.errors import TokentreeError
from tokentree.request import Request
from tokentree.sampling import SamplingParams, warp

PROMPT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]


def sampling_law(gen, tokens: list[int], params: SamplingParams) -> torch.Tensor:
    """[len(tokens), V] the sampling law's log-probabilities at each completion position."""
    with torch.inference_mode():
        return warp(reference_rows(gen.target.model, PROMPT, tokens), params).log()


def trajectory_of(tree, segment: int):
    """A trajectory through ``segment`` (every forked or finished segment has one, unless it
    was pruned)."""
    return next(t for t in tree.trajectories if segment in t.segments)


def check_tree(gen, tree, policy: Uncertain, params: SamplingParams) -> int:
    """Every structural promise of an uncertain rollout; returns the number of forks."""
    by_id = {s.id: s for s in tree.segments}
    for path in tree.trajectories:
        assert [t for node in path.segments for t in by_id[node].token_ids] == path.completion_ids
        want = sampling_law(gen, path.completion_ids, params)
        exact = want.gather(1, torch.tensor(path.completion_ids)[:, None])[:, 0]
        assert path.logprobs == pytest.approx(exact.tolist(), abs=1e-5)
    assert len(tree.trajectories) <= policy.max_leaves
    forks = 0
    for parent in tree.segments:
        children = [s for s in tree.segments if s.parent == parent.id]
        if not children:
            continue
        forks += 1
        position = parent.start + len(parent.token_ids)
        assert all(c.start == position for c in children)
        assert [c.reason for c in children] == ["uncertain"] + ["alternative"] * (len(children) - 1)
        firsts = [c.token_ids[0] for c in children]
        assert len(set(firsts)) == len(firsts) >= 2  # distinct first tokens
        tokens = trajectory_of(tree, children[0].id).completion_ids
        law = sampling_law(gen, tokens, params)[position]
        top = law.topk(2).values.exp()
        assert float(top[0] - top[1]) < policy.threshold  # it forked where the law is unsure
        others = [t for t in law.argsort(descending=True).tolist() if t != firsts[0]]
        assert firsts[1:] == others[: len(firsts) - 1]  # the next most likely tokens
        if parent.reason != "root":  # a child runs its lookahead before it forks again
            assert position >= parent.start + 1 + policy.lookahead
    return forks


@pytest.mark.parametrize("drafter", ["pld", "stand"])
def test_uncertain_forks_where_the_law_is_unsure_with_distinct_children(drafter):
    gen = generator(drafter)
    policy = Uncertain(threshold=0.5, top_k=3, lookahead=2, max_leaves=6, prune_similar=None)
    forks = 0
    for seed in range(3):
        request = Request(max_new_tokens=12, temperature=1.0, seed=seed)
        tree = gen.rollouts(PROMPT, policy, request)
        assert not any(s.finish_reason == "pruned" for s in tree.segments)
        forks += check_tree(gen, tree, policy, SamplingParams(temperature=1.0))
    assert forks >= 1


def test_a_high_margin_never_forks():
    gen = generator("pld")
    policy = Uncertain(threshold=1e-9, top_k=2, lookahead=2, max_leaves=4)
    tree = gen.rollouts(PROMPT, policy, max_new_tokens=10, temperature=1.0, seed=2)
    assert len(tree.segments) == 1 and len(tree.trajectories) == 1


def test_warped_law_alternatives_stay_in_its_support():
    gen = generator("pld")
    params = SamplingParams(temperature=0.7, top_k=4)
    policy = Uncertain(threshold=0.9, top_k=3, lookahead=2, max_leaves=5, prune_similar=None)
    request = Request(max_new_tokens=10, temperature=0.7, top_k=4, seed=4,
                      logprobs_mode="processed_logprobs")  # fmt: skip
    tree = gen.rollouts(PROMPT, policy, request)
    assert check_tree(gen, tree, policy, params) >= 1
    assert all(math.isfinite(lp) for t in tree.trajectories for lp in t.logprobs)


def test_near_duplicate_alternatives_are_pruned_and_leave_no_trajectory():
    gen = generator("pld")
    policy = Uncertain(threshold=0.9, top_k=2, lookahead=2, max_leaves=6, prune_similar=0.0)
    tree = gen.rollouts(PROMPT, policy, max_new_tokens=12, temperature=1.0, seed=1)
    pruned = [s for s in tree.segments if s.finish_reason == "pruned"]
    assert pruned and all(s.reason == "alternative" for s in pruned)  # similarity >= 0 always
    in_paths = {node for t in tree.trajectories for node in t.segments}
    assert not in_paths & {s.id for s in pruned}
    for s in pruned:  # pruned once its lookahead was written (or its branch ended)
        assert len(s.token_ids) >= 1 + policy.lookahead or s.start + len(s.token_ids) == 12


def test_similarity_is_one_minus_the_normalised_edit_distance():
    assert similarity([1, 2, 3], [1, 2, 3]) == 1.0
    assert similarity([1, 2, 3], [1, 9, 3]) == pytest.approx(2 / 3)
    assert similarity([1, 2, 3, 4], [2, 3, 4]) == pytest.approx(3 / 4)  # one deletion
    assert similarity([], [7]) == 0.0 and similarity([], []) == 1.0


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"top_k": 1}, "top_k"),
        ({"threshold": 0.0}, "threshold"),
        ({"lookahead": 0}, "lookahead"),
        ({"prune_similar": 1.5}, "prune_similar"),
        ({"roots": 3, "max_leaves": 2}, "roots"),
    ],
)
def test_impossible_uncertain_policies_are_refused(changes, match):
    with pytest.raises(TokentreeError, match=match):
        Uncertain(**changes)


def test_impossible_uncertain_rollouts_are_refused_before_decoding():
    gen = generator("pld")
    with pytest.raises(TokentreeError, match="lookahead"):
        gen.rollouts(PROMPT, Uncertain(lookahead=8), max_new_tokens=8, temperature=1.0)
    with pytest.raises(TokentreeError, match="processed_logprobs"):
        gen.rollouts(PROMPT, Uncertain(lookahead=2), max_new_tokens=8, temperature=0.7)


def test_the_cli_runs_the_uncertain_policy(saved_tiny_model, tmp_path, capsys):
    import json

    from tokentree.cli import main

    out, png = tmp_path / "tree.json", tmp_path / "tree.png"
    args = ["rollout", "abc abc", "--target", str(saved_tiny_model), "--dtype", "float32"]
    policy = ["--policy", "uncertain", "--threshold", "0.9", "--fork-top-k", "2", "--lookahead",
              "2", "--max-leaves", "4", "--prune-similar", "off"]  # fmt: skip
    code = main(args + policy + ["--max-new-tokens", "8", "--seed", "1", "--out", str(out),
                                 "--plot", str(png)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    body = json.loads(out.read_text())
    reasons = {s["reason"] for s in body["segments"]}
    assert {"uncertain", "alternative"} <= reasons and len(body["trajectories"]) <= 4
    assert png.stat().st_size > 0
    assert main(args + ["--policy", "uncertain", "--fork-top-k", "1"]) == 2
    assert "top_k" in capsys.readouterr().err


def test_a_session_too_small_for_the_tree_is_refused():
    from tokentree.api.rollouts import Rollout

    gen = generator("pld")
    request = Request(max_new_tokens=12, temperature=1.0)
    with pytest.raises(TokentreeError, match="at most 2 sequences together"):
        Rollout(gen, PROMPT, request, Uncertain(max_leaves=4, lookahead=2), gen.batch_session(2))
