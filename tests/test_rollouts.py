"""Rollout trees: the tree's structure (segments, forks, trajectories that are their paths), every
token's exact logprob, the law of every leaf (chi-square, with siblings that reuse their parent's
seed as the negative control), and clear errors for impossible policies."""

from collections import Counter

import pytest
import torch
from chisquare import fits
from test_constraints import generator
from test_logprobs import reference_rows

from tokentree.api import Independent, Segments
from tokentree.api.rollouts import Rollout
from tokentree.errors import TokentreeError
from tokentree.request import Request
from tokentree.sampling import SamplingParams, warp

PROMPT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]


def test_segments_fork_and_each_trajectory_is_its_path():
    gen = generator("pld")
    policy = Segments(width=2, segment_tokens=3, depth=2, max_leaves=4)
    request = Request(max_new_tokens=12, temperature=1.0, seed=3)
    tree = gen.rollouts(PROMPT, policy, request)
    assert 1 <= len(tree.trajectories) <= 4
    by_id = {s.id: s for s in tree.segments}
    for path in tree.trajectories:
        rebuilt = [t for node in path.segments for t in by_id[node].token_ids]
        assert rebuilt == path.completion_ids and len(path.logprobs) == len(rebuilt)
        assert by_id[path.segments[0]].parent is None and by_id[path.segments[0]].start == 0
        for parent, child in zip(path.segments, path.segments[1:]):
            assert by_id[child].parent == parent
            assert by_id[child].start == by_id[parent].start + len(by_id[parent].token_ids)
        rows = reference_rows(gen.target.model, PROMPT, path.completion_ids)
        want = rows.log_softmax(-1).gather(1, torch.tensor(path.completion_ids)[:, None])[:, 0]
        assert path.logprobs == pytest.approx(want.tolist(), abs=1e-5)
    full = [t for t in tree.trajectories if t.finish_reason == "length"]
    assert all(len(t.completion_ids) == 12 for t in full)
    forked = [s for s in tree.segments if s.finish_reason is None]
    assert all(len(s.token_ids) == 3 for s in forked) and len(forked) >= 1
    assert tree.new_tokens < sum(len(t.completion_ids) for t in tree.trajectories)  # shared
    assert set(tree.to_dict()) >= {"segments", "trajectories", "new_tokens", "wall_s"}


def test_independent_samples_share_only_the_prompt():
    gen = generator("stand")
    tree = gen.rollouts(PROMPT, Independent(4), max_new_tokens=8, temperature=1.0, seed=1)
    assert len(tree.trajectories) == 4 and all(s.parent is None for s in tree.segments)
    again = gen.rollouts(PROMPT, Independent(4), max_new_tokens=8, temperature=1.0, seed=1)
    assert [t.completion_ids for t in again.trajectories] == [
        t.completion_ids for t in tree.trajectories
    ]  # the seed decides every branch


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Segments(0, 4, 2), "width"),
        (lambda: Segments(2, 0, 2), "segment_tokens"),
        (lambda: Segments(4, 4, 2, max_leaves=2), "max_leaves"),
        (lambda: Independent(0), "n"),
    ],
)
def test_impossible_policies_are_refused(make, match):
    with pytest.raises(TokentreeError, match=match):
        make()


def test_impossible_rollouts_are_refused_before_decoding():
    gen = generator("pld")
    with pytest.raises(TokentreeError, match="temperature"):
        gen.rollouts(PROMPT, Independent(2), max_new_tokens=4)
    with pytest.raises(TokentreeError, match="nothing of max_new_tokens"):
        gen.rollouts(PROMPT, Segments(2, 4, 2), max_new_tokens=8, temperature=1.0)


class SameSeedRollout(Rollout):
    """The negative control: every branch reuses one seed, so siblings draw with the same noise
    from the same prefix: the same tokens (no fresh randomness where they fork)."""

    def __init__(self, *args):
        super().__init__(*args)
        seed = self.seeds.randint(0, 2**63 - 1)
        self.seeds.randint = lambda low, high: seed


@torch.inference_mode()
def exact_fork_law(model, prompt: list[int], params: SamplingParams) -> dict:
    """P(t1, a, b): the first token, then two siblings' second tokens drawn independently."""
    first = warp(model(torch.tensor([prompt])).logits[0, -1:], params)[0]
    law = {}
    for t1 in torch.nonzero(first).flatten().tolist():
        second = warp(model(torch.tensor([prompt + [t1]])).logits[0, -1:], params)[0]
        support = torch.nonzero(second).flatten().tolist()
        for a in support:
            for b in support:
                law[(t1, a, b)] = float(first[t1] * second[a] * second[b])
    return law


def fork_triples(gen, rollout, samples: int, params: SamplingParams) -> Counter:
    """(t1, a, b) of the first root's two children in Segments(2, 1, 1) rollouts of two tokens."""
    triples = Counter()
    request = Request(max_new_tokens=2, temperature=params.temperature, top_k=params.top_k)
    for seed in range(samples):
        tree = rollout(gen, PROMPT, request.replace(seed=seed), Segments(2, 1, 1, 4)).run()
        leaves = sorted(
            (t for t in tree.trajectories if t.segments[0] == 0), key=lambda t: t.segments[-1]
        )
        assert len(leaves) == 2 and leaves[0].completion_ids[0] == leaves[1].completion_ids[0]
        t1 = leaves[0].completion_ids[0]
        triples[(t1, leaves[0].completion_ids[1], leaves[1].completion_ids[1])] += 1
    return triples


@pytest.mark.slow
def test_forked_siblings_follow_the_targets_law_and_reused_draws_do_not():
    """Every leaf's trajectory is a draw of the sampling law, and siblings are independent given
    their shared prefix: the joint law of the first token and both children's second tokens."""
    gen = generator("pld")
    params = SamplingParams(temperature=1.0, top_k=3)
    law = exact_fork_law(gen.target.model, PROMPT, params)
    samples = 600
    assert fits(fork_triples(gen, Rollout, samples, params), law, samples)
    assert not fits(fork_triples(gen, SameSeedRollout, samples, params), law, samples)


def test_the_cli_writes_the_tree_and_its_picture(saved_tiny_model, tmp_path, capsys):
    import json

    from tokentree.cli import main

    out, png = tmp_path / "tree.json", tmp_path / "tree.png"
    args = ["rollout", "abc abc", "--target", str(saved_tiny_model), "--dtype", "float32"]
    policy = ["--width", "2", "--segment-tokens", "2", "--depth", "2", "--max-leaves", "4"]
    code = main(args + policy + ["--max-new-tokens", "6", "--seed", "1", "--out", str(out),
                                 "--plot", str(png)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    body = json.loads(out.read_text())
    assert 1 <= len(body["trajectories"]) <= 4 and len(body["texts"]) == len(body["trajectories"])
    assert png.stat().st_size > 0 and "trajectories" in capsys.readouterr().err
    assert main(args + ["--width", "0"]) == 2
    assert "width" in capsys.readouterr().err
