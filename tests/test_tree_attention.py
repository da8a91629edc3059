"""LongSpec's hybrid tree attention: the prefix by the fast kernel without a mask, the tree as a
small masked block, merged by log-sum-exp, equals the explicit 4-D mask (fp32, 1e-5), sliding
layers included; decoding with it equals ``generate``."""

import pytest
import torch
from conftest import VOCAB, tiny_model
from test_greedy_equality import hf_greedy
from test_ssm import random_tree

from tokentree.backends.hf import HFBackend
from tokentree.backends.tree_attention import TREE_ATTENTION
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
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
