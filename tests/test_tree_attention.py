"""LongSpec's hybrid tree attention: the prefix by the fast kernel without a mask, the tree as a
small masked block, merged by log-sum-exp, equals the explicit 4-D mask (fp32, 1e-5), sliding
layers included; decoding with it equals ``generate``."""

import pytest
import torch
from conftest import VOCAB, tiny_model
from test_greedy_equality import hf_greedy
from test_ssm import random_tree

from tokentree.backends.hf import HFBackend, kvcache
from tokentree.backends.hf import backend as hf
from tokentree.backends.hf.tree_attention import TREE_ATTENTION
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.errors import TokentreeError
from tokentree.stats import GenerationStats


@pytest.mark.parametrize("seed", range(3))
def test_hybrid_tree_attention_equals_the_explicit_mask(family, seed):
    model = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (30 + 7 * seed,), generator=gen).tolist()
    tree = random_tree(gen, prompt[-1], 14)
    logits = {}
    for name, hybrid_from in (("mask", 10**9), ("hybrid", 0)):
        backend = HFBackend(model, hybrid_from=hybrid_from)
        backend.prefill(prompt[:-1])
        logits[name] = backend.verify(tree)
        backend.commit(tree.path_to(tree.leaves[0]))
    assert model.config._attn_implementation == TREE_ATTENTION
    torch.testing.assert_close(logits["hybrid"], logits["mask"], atol=1e-5, rtol=1e-5)


def test_decoding_with_the_hybrid_attention_equals_generate(family):
    model = tiny_model(family, seed=4)
    prompt = ([5, 9, 14, 3, 22, 7] * 6)[:33]
    expected = hf_greedy(model, prompt, 40)
    engine = Engine(HFBackend(model, hybrid_from=8), make_drafter("pld"), frozenset())
    request = DecodeRequest(max_new_tokens=40, budget=10)
    stats = GenerationStats()
    got = [t for step in engine.run(prompt, request, stats) for t in step]
    assert got == expected
    assert stats.steps < 40


def test_a_level_grown_onto_a_tree_and_a_lone_token_take_the_hybrid_attention_exactly(family):
    """A draft model grows its tree a level per forward; plain steps verify the root alone."""
    model = tiny_model(family, seed=5)
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, VOCAB, (40,), generator=gen).tolist()
    tree = random_tree(gen, prompt[-1], 12)
    logits = {}
    for name, hybrid_from in (("mask", 10**9), ("hybrid", 0)):
        backend = HFBackend(model, hybrid_from=hybrid_from)
        backend.prefill(prompt[:-1])
        lone = backend.verify(tree.subset([]))
        backend.commit((0,))
        backend.prefill(prompt[:-1])
        logits[name] = (lone, backend.grow(tree.subset(range(4)), 0), backend.grow(tree, 4))
    for hybrid, mask in zip(logits["hybrid"], logits["mask"]):
        torch.testing.assert_close(hybrid, mask, atol=1e-5, rtol=1e-5)


def _windowed_pair(seed: int = 1):
    model = tiny_model("gemma3", seed=seed, sliding_window=40)
    return (
        model,
        HFBackend(model, hybrid_from=10**9, windowed=False),
        HFBackend(model, windowed=True),
    )


def test_windowed_sliding_layers_keep_their_window_and_verify_exactly():
    """Sliding layers hold window - 1 + ROLLBACK positions, never more, while full layers hold the
    whole context; every tree's logits equal those of full caches under the explicit mask."""
    model, full, windowed = _windowed_pair()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, VOCAB, (340,), generator=gen).tolist()
    for backend in (full, windowed):
        backend.prefill(prompt[:-1])
    root = prompt[-1]
    for step in range(8):
        tree = random_tree(gen, root, 60 if step == 3 else 14)  # one larger than the window
        expected, got = full.verify(tree), windowed.verify(tree)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        path = tree.path_to(tree.leaves[step % len(tree.leaves)])
        full.commit(path)
        windowed.commit(path)
        root = int(torch.randint(3, VOCAB, (), generator=gen))
    held = [layer.keys.shape[-2] for layer in windowed.cache.layers]
    assert held == [40 - 1 + kvcache.ROLLBACK, len(windowed.tokens)]
    assert windowed.tokens == full.tokens and len(full.tokens) > 345


def test_a_windowed_cache_rolls_back_within_its_margin_and_restarts_beyond_it(monkeypatch):
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 64)  # prefill chunks past the window, too
    model, full, windowed = _windowed_pair(seed=2)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, VOCAB, (400,), generator=gen).tolist()
    tree = random_tree(gen, 7, 10)
    for keep in (390, 120):  # within ROLLBACK of the end, then far behind it
        for backend in (full, windowed):
            backend.prefill(prompt)
            backend.prefill(prompt[:keep])
        torch.testing.assert_close(windowed.verify(tree), full.verify(tree), atol=1e-5, rtol=1e-5)
        full.commit((0,))
        windowed.commit((0,))
    with pytest.raises(kvcache.CacheRollbackError):
        windowed.prefill(prompt)
        kvcache.crop(windowed.cache, 100)


def test_decoding_with_windowed_sliding_layers_equals_generate():
    model, _, windowed = _windowed_pair(seed=3)
    prompt = ([5, 9, 14, 3, 22, 7, 30, 31] * 45)[:350]
    expected = hf_greedy(model, prompt, 40)
    engine = Engine(windowed, make_drafter("pld"), frozenset())
    stats = GenerationStats()
    got = [t for step in engine.run(prompt, DecodeRequest(40, budget=10), stats) for t in step]
    assert got == expected
    assert stats.steps < 40


def test_a_level_grown_beyond_the_window_is_refused():
    """A windowed layer returns window - 1 + m keys: a level grown onto 40 nodes would lose some."""
    _, _, windowed = _windowed_pair()
    windowed.prefill([5] * 50)
    tree = random_tree(torch.Generator().manual_seed(0), 5, 44)
    windowed.grow(tree.subset(range(40)), 0)  # a whole tree of any size is fine
    with pytest.raises(TokentreeError, match="sliding window is 40 tokens"):
        windowed.grow(tree, 40)
