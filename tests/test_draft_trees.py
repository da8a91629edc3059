"""Draft-model drafters: greedy equality, tree shapes, Sequoia's DP, DySpec's exact top-n, draft
caches."""

import random

import pytest
import torch
from conftest import tiny_model
from test_greedy_equality import hf_greedy, run_engine

from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.drafters.sequoia import load_calibration, optimal_tree, save_calibration, tree_value
from tokentree.errors import TokentreeError
from tokentree.sampling import Acceptance

MODEL_DRAFTERS = [name for name, spec in DRAFTERS.items() if spec.needs_draft]
OPTIONS = {"chain": {"confidence": 0.0}}  # tiny random models are never confident


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def random_draft():
    return tiny_model("llama", seed=1, num_hidden_layers=1)


@pytest.mark.parametrize("name", MODEL_DRAFTERS)
@pytest.mark.parametrize("budget", [4, 12])
def test_greedy_equality_with_a_random_and_a_perfect_draft(target, random_draft, name, budget):
    rng = random.Random(budget)
    for draft, label in ((random_draft, "random"), (target, "self")):
        drafter = make_drafter(name, draft, **OPTIONS.get(name, {}))
        for _ in range(3):
            prompt = [rng.randrange(3, 90) for _ in range(rng.randrange(2, 12))]
            length = rng.randrange(5, 40)
            tokens, stats = run_engine(target, drafter, prompt, length, budget=budget)
            assert tokens == hf_greedy(target, prompt, length), (name, label)
        if label == "self":
            assert stats.tokens_per_step > 1.3, (name, stats.tokens_per_step)  # mostly acceptances


def count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_specinfer_widths_give_the_declared_shape_in_depth_forwards(random_draft):
    drafter = make_drafter("specinfer", random_draft, widths="3,2,1")
    calls, handle = count_forwards(random_draft)
    tree = drafter.propose([5, 6, 7, 8], budget=40)
    handle.remove()
    per_depth = [sum(1 for d in tree.depths if d == depth) for depth in range(1, 4)]
    assert per_depth == [3, 6, 6] and max(tree.depths) == 3
    assert all(len(tree.children[v]) == (3, 2, 1, 0)[tree.depths[v]] for v in range(len(tree)))
    assert (
        len(calls) == 3
    )  # one forward per level with children; the short prompt rides with the first


def test_rsd_c_children_are_distinct_when_sampling(random_draft):
    from tokentree.sampling import Draw, SamplingParams

    drafter = make_drafter("rsd-c", random_draft, widths="4,2")
    draft = drafter.propose_sampled(
        [5, 6, 7], 20, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0)
    )
    assert draft.draw is Draw.WITHOUT_REPLACEMENT and draft.q is not None
    for kids in draft.tree.children:
        assert len({draft.tree.tokens[k] for k in kids}) == len(kids)
    assert torch.allclose(draft.q[0].sum(), torch.tensor(1.0))


def all_trees(n, depth, ranks):
    """Every tree of n rank paths (ancestor-closed, siblings 0..m-1), depth <= depth."""

    def grow(paths):
        if len(paths) == n:
            yield paths
            return
        last = max(paths, key=lambda p: (len(p), p)) if paths else None
        for parent in [()] + sorted(paths):
            if len(parent) >= depth:
                continue
            rank = sum(1 for p in paths if p[:-1] == parent and len(p) == len(parent) + 1)
            child = parent + (rank,)
            if rank < ranks and (last is None or (len(child), child) > (len(last), last)):
                yield from grow(paths | {child})

    yield from grow(frozenset())


@pytest.mark.parametrize("n,depth", [(1, 1), (3, 2), (5, 3), (6, 6), (8, 3), (8, 8)])
def test_sequoia_dp_matches_brute_force(n, depth):
    vector = (0.5, 0.2, 0.1, 0.05)
    value, paths = optimal_tree(vector, n, depth)
    brute = max(tree_value(vector, list(t)) for t in all_trees(n, depth, len(vector)))
    assert value == pytest.approx(brute) and tree_value(vector, paths) == pytest.approx(value)
    assert len(paths) == n and max(map(len, paths)) <= depth


def test_sequoia_tree_follows_its_dp_and_calibration_files(random_draft, tmp_path, capsys):
    path = tmp_path / "cal.json"
    save_calibration(path, (0.9, 0.05), "t", "d", 100)
    assert load_calibration(path) == (0.9, 0.05)
    drafter = make_drafter("sequoia", random_draft, calibration=str(path), depth=5)
    tree = drafter.propose([5, 6, 7], budget=5)
    assert list(tree.depths[1:]) == [1, 2, 3, 4, 5]  # a 0.9 first rank makes the optimum a chain
    path.write_text('{"version": 1, "vector": [0.9, 0.9]}')
    with pytest.raises(TokentreeError, match="bad acceptance vector"):
        make_drafter("sequoia", random_draft, calibration=str(path))
    with pytest.raises(TokentreeError, match="no Sequoia calibration"):
        make_drafter("sequoia", random_draft, calibration=str(tmp_path / "missing.json"))


@torch.inference_mode()
def test_dyspec_keeps_exactly_the_best_path_probability_nodes(random_draft):
    context, k, depth, n = [5, 6, 7], 3, 3, 7
    drafter = make_drafter("dyspec", random_draft, rounds=depth, candidates=k)
    tree = drafter.propose(context, budget=n)
    nodes = {}  # token path -> path probability, by plain forwards of every top-k path

    def explore(path, prob):
        if len(path) == depth:
            return
        probs = torch.softmax(random_draft(torch.tensor([context + list(path)])).logits[0, -1], -1)
        top = probs.topk(k)
        for p, token in zip(top.values.tolist(), top.indices.tolist()):
            nodes[path + (token,)] = prob * p
            explore(path + (token,), prob * p)

    explore((), 1.0)
    best = sorted(nodes.values(), reverse=True)[:n]
    got = [nodes[tuple(tree.tokens[i] for i in tree.path_to(v)[1:])] for v in range(1, len(tree))]
    assert sorted(got, reverse=True) == pytest.approx(best, rel=1e-4)
    assert len(tree) == n + 1


@pytest.mark.parametrize("name", MODEL_DRAFTERS)
def test_draft_cache_after_compaction_equals_plain_draft_decoding(target, random_draft, name):
    drafter = make_drafter(name, random_draft, **OPTIONS.get(name, {}))
    prompt = [7, 8, 9, 10, 7, 8]
    run_engine(target, drafter, prompt, 25, budget=6)
    backend = drafter.model.backend
    assert backend.pending is None
    with torch.inference_mode():
        fresh = random_draft(torch.tensor([backend.tokens]), use_cache=True).past_key_values
    for mine, plain in zip(backend.cache.layers, fresh.layers):
        assert torch.allclose(mine.keys, plain.keys, atol=1e-5) and torch.allclose(
            mine.values, plain.values, atol=1e-5
        )
    assert len(backend.tokens) >= len(prompt) + 20  # the cache followed the generation


def test_chain_adapts_its_length(target):
    drafter = make_drafter("chain", target, k=3, confidence=0.0)
    tree = drafter.propose([5, 6, 7], budget=16)
    drafter.observe(tree, None, Acceptance(tuple(range(len(tree))), 1))
    assert drafter.k == 5
    tree = drafter.propose([5, 6, 7], budget=16)
    drafter.observe(tree, None, Acceptance((0,), 1))
    assert drafter.k == 4


def test_staged_chain_drafts_the_plain_chain_in_fewer_draft_forwards(target):
    """Prompt-lookup guesses of the draft's own tokens change how many forwards, never the chain."""
    staged = make_drafter("chain", target, k=12, confidence=0.0, adaptive=False)
    plain = make_drafter("chain", target, k=12, confidence=0.0, adaptive=False, lookup=0)
    rng = random.Random(3)
    forwards = {"staged": 0, "plain": 0}
    for _ in range(6):
        prompt = [rng.randrange(3, 90) for _ in range(rng.randrange(2, 8))]
        context = prompt + hf_greedy(
            target, prompt, 30
        )  # random models fall into loops: lookup finds them
        for label, drafter in (("staged", staged), ("plain", plain)):
            calls, handle = count_forwards(target)
            tree = drafter.propose(context, budget=16)
            handle.remove()
            forwards[label] += len(calls)
            if label == "staged":
                first = tree
        assert first.tokens == tree.tokens and first.parents == tree.parents
        assert first.scores == pytest.approx(tree.scores, rel=1e-4)
        drafter.clear_caches(), staged.clear_caches()
    assert forwards["staged"] < 0.7 * forwards["plain"], forwards  # 48 against 78 when written


def test_a_guide_changes_the_chains_forwards_never_the_chain(target):
    from tokentree.drafters.base import GuidedDrafter
    from tokentree.tree import TokenTree

    plain = make_drafter("chain", target, k=10, confidence=0.0, adaptive=False, lookup=0)
    guided = make_drafter("chain", target, k=10, confidence=0.0, adaptive=False, lookup=16)
    assert isinstance(guided, GuidedDrafter)
    context = [11, 12, 13, 14, 15, 16]  # shorter than the catch-up: no separate prefill forward
    expected = plain.propose(context, budget=16)
    wrong = TokenTree.chain(context[-1], [t + 1 for t in expected.tokens[1:]])
    half = TokenTree.chain(context[-1], expected.tokens[1:6] + (expected.tokens[6] + 1,))
    for guide, most_forwards in ((wrong, 10), (half, 5), (expected, 1)):
        guided.clear_caches()
        calls, handle = count_forwards(target)
        tree = guided.propose_guided(context, 16, guide)
        handle.remove()
        assert tree.tokens == expected.tokens and tree.parents == expected.parents
        assert len(calls) <= most_forwards, (guide.tokens, len(calls))
    assert len(calls) == 1  # a right guide: the whole chain is checked in one draft forward


def test_draft_model_drafters_need_a_draft_model():
    with pytest.raises(TokentreeError, match="needs a draft model"):
        make_drafter("sequoia")


def test_clear_caches_empties_the_draft_cache_also_inside_hybrid(target, random_draft):
    from tokentree.drafters.base import clear_caches

    chain = make_drafter("chain", random_draft, confidence=0.0)
    hybrid = make_drafter("hybrid", random_draft, sources="pld,sequoia")
    for drafter, model in ((chain, chain.model), (hybrid, hybrid.sources[1].model)):
        run_engine(target, drafter, [5, 6, 7, 8, 9], 6, budget=4)
        assert model.backend.tokens  # the draft kept the committed context
        clear_caches(drafter)
        assert model.backend.tokens == []
