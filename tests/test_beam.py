"""RSD-S: the beam step's math, and that SBS trees verified by V-RRS keep the target's law
exactly."""

import math
from collections import Counter

import pytest
import torch
from chisquare import fits
from conftest import tiny_model
from test_greedy_equality import hf_greedy, run_engine

from tokentree.drafters import make_drafter
from tokentree.drafters.beam import Beam, beam_step, truncated_gumbel
from tokentree.sampling import Draft, Draw, SamplingParams, accept_sampled
from tokentree.tree import TokenTree

V = 5
ROOT = 0


def markov(seed: int, sharpness: float) -> torch.Tensor:
    """[V, V] next-token probabilities that depend on the last token only."""
    logits = torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * sharpness
    return torch.softmax(logits, dim=-1)


P, Q = markov(1, 1.5), markov(2, 1.5)


def test_truncated_gumbel_sets_each_row_max_and_keeps_the_order():
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    top = torch.tensor([0.5, -2.0, 10.0])
    t = truncated_gumbel(g, top)
    assert torch.allclose(t.max(dim=-1).values, top)
    assert torch.equal(t.argsort(dim=-1), g.argsort(dim=-1))
    assert (t <= top[:, None] + 1e-6).all()


def test_greedy_beam_step_is_the_best_path_extensions():
    log_q = torch.log_softmax(torch.randn(3, 7, generator=torch.Generator().manual_seed(1)), -1)
    beams = [Beam(1, -0.1, 0.0), Beam(2, -1.0, 0.0), Beam(3, -3.0, 0.0)]
    exts = beam_step(log_q, beams, 4, None)
    scores = {(b, t): beams[b].log_prob + float(log_q[b, t]) for b in range(3) for t in range(7)}
    best = sorted(scores, key=scores.get, reverse=True)[:4]
    assert {(e.beam, e.token) for e in exts} == set(best)
    assert [e.beam for e in exts] == sorted(e.beam for e in exts)  # grouped by beam
    assert all(math.isclose(e.log_prob, scores[(e.beam, e.token)], abs_tol=1e-5) for e in exts)


def test_beam_step_skips_tokens_outside_the_support():
    log_q = torch.full((1, 6), -math.inf)
    log_q[0, 2] = log_q[0, 4] = math.log(0.5)
    exts = beam_step(log_q, [Beam(0, 0.0, 0.0)], 4, torch.Generator().manual_seed(0))
    assert sorted(e.token for e in exts) == [2, 4]


def sbs_draft(
    last: int, width: int, depth: int, generator: torch.Generator, drop_token: int | None = None
) -> Draft:
    """An RSD-S tree over the Markov draft Q; ``drop_token`` makes a deliberately biased variant."""
    tokens, parents, q_rows = [last], [-1], [Q[last]]
    beams = [Beam(0, 0.0, 0.0)]
    for _ in range(depth):
        log_q = torch.stack([Q[tokens[b.node]] for b in beams]).log()
        new = []
        for ext in beam_step(log_q, beams, width, generator):
            if ext.token == drop_token and parents.count(beams[ext.beam].node) > 0:
                # keeps or drops a later sibling by its identity: not a valid stopping rule
                continue
            tokens.append(ext.token)
            parents.append(beams[ext.beam].node)
            q_rows.append(Q[ext.token])
            new.append(Beam(len(tokens) - 1, ext.log_prob, ext.value))
        beams = new
    return Draft(
        TokenTree(tuple(tokens), tuple(parents)), Draw.WITHOUT_REPLACEMENT, torch.stack(q_rows)
    )


def sample_two(generator: torch.Generator, **options) -> tuple[int, int]:
    """The first two tokens of speculative sampling from P with RSD-S trees, from context ROOT."""
    out, last = [], ROOT
    while len(out) < 2:
        draft = sbs_draft(last, generator=generator, **options)
        p = torch.stack([P[t] for t in draft.tree.tokens])
        acceptance = accept_sampled(draft, p, generator)
        out += acceptance.new_tokens(draft.tree)
        last = out[-1]
    return out[0], out[1]


EXPECTED = {(a, b): float(P[ROOT, a] * P[a, b]) for a in range(V) for b in range(V)}
N = 20000


@pytest.mark.slow
@pytest.mark.parametrize("width,depth", [(2, 2), (3, 3)])
def test_sbs_trees_with_rrs_keep_the_target_law(width, depth):
    generator = torch.Generator().manual_seed(width)
    counts = Counter(sample_two(generator, width=width, depth=depth) for _ in range(N))
    assert fits(counts, EXPECTED, N), sorted(counts.items())


@pytest.mark.slow
def test_negative_control_identity_dependent_pruning_is_caught():
    generator = torch.Generator().manual_seed(7)
    counts = Counter(
        sample_two(generator, width=3, depth=2, drop_token=int(Q[ROOT].argmin())) for _ in range(N)
    )
    assert not fits(counts, EXPECTED, N)


def test_rsd_s_tree_shape_and_rows():
    draft_model = tiny_model("llama", seed=1, num_hidden_layers=1)
    drafter = make_drafter("rsd-s", draft_model, width=3, depth=4)
    draft = drafter.propose_sampled(
        [5, 6, 7], 11, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0)
    )
    tree = draft.tree
    assert draft.draw is Draw.WITHOUT_REPLACEMENT and len(tree) - 1 == 11
    assert [sum(1 for d in tree.depths if d == k) for k in (1, 2, 3, 4)] == [3, 3, 3, 2]
    for node, kids in enumerate(tree.children):
        assert len({tree.tokens[k] for k in kids}) == len(kids)
        if kids:
            assert torch.isclose(draft.q[node].sum(), torch.tensor(1.0))
    greedy = drafter.propose([5, 6, 7], 11)
    assert max(greedy.depths) == 4 and len(greedy) == 12


@pytest.mark.parametrize("width", [1, 3])
def test_rsd_s_greedy_equals_plain_decoding_with_partial_acceptance(width):
    target = tiny_model("llama", seed=0)
    for draft_model in (tiny_model("llama", seed=1, num_hidden_layers=1), target):
        drafter = make_drafter("rsd-s", draft_model, width=width)
        prompt = [4, 9, 17, 3, 9]
        tokens, stats = run_engine(target, drafter, prompt, 30, budget=9)
        assert tokens == hf_greedy(target, prompt, 30)
    assert stats.tokens_per_step > 1.3
