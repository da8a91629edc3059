"""Seeded sampling by Gumbel-max coupling: each position follows the target's law (crafted logits,
chi-square, with a negative control), and the text depends on the seed alone: equal for every
drafter, after learning, and equal to plain decoding with that seed."""

from collections import Counter

import pytest
import torch
from chisquare import fits
from conftest import tiny_model

from tokentree.backends.hf import HFBackend
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.sampling import PositionNoise, SamplingParams, accept_coupled, warp
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

PARAMS = SamplingParams(temperature=0.7, top_k=5, top_p=0.95)
TREE = TokenTree((9, 2, 3, 1, 4), (-1, 0, 0, 1, 1))  # root -> {2, 3}; 2 -> {1, 4}
LOGITS = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)) * 2


def _paths(samples: int, noise_for) -> Counter:
    counts = Counter()
    for seed in range(samples):
        acceptance = accept_coupled(TREE, LOGITS, PARAMS, noise_for(seed), start=7)
        counts[tuple(acceptance.new_tokens(TREE))[:2]] += 1
    return counts


def _exact() -> dict[tuple, float]:
    """The law of the first two emitted tokens: x1 ~ p(root), x2 ~ p(child holding x1) when that
    child exists; otherwise x1 is the bonus and the pair ends there."""
    p = warp(LOGITS, PARAMS)
    law = {}
    for a in range(8):
        child = TREE.child_with_token(0, a)
        if child is None:
            law[(a,)] = p[0, a].item()
            continue
        for b in range(8):
            law[(a, b)] = p[0, a].item() * p[child, b].item()
    return law


def test_every_emitted_token_follows_the_target():
    samples = 4000
    assert fits(_paths(samples, PositionNoise), _exact(), samples)


class UniformNoise(PositionNoise):
    """Negative control: argmax(log p + U) with uniform noise is not a draw from p."""

    def at(self, position, vocab_size):
        generator = torch.Generator().manual_seed(self.seed * 1000 + position)
        return torch.rand(vocab_size, generator=generator) * 3


def test_negative_control_uniform_noise_is_caught():
    samples = 4000
    assert not fits(_paths(samples, UniformNoise), _exact(), samples)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, vocab_size=16, initializer_range=0.3)


def _text(engine, prompt, seed, **options):
    request = DecodeRequest(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=seed, **options)
    return [t for step in engine.run(prompt, request, GenerationStats()) for t in step]


def test_the_seed_alone_decides_the_text(model):
    prompt = [3, 4, 5, 3, 4, 5, 3, 4]
    plain = _text(Engine(HFBackend(model), make_drafter("none")), prompt, 11, budget=0)
    for name, budget in (("pld", 6), ("stand", 8), ("recycling", 8), ("lookahead", 4)):
        engine = Engine(HFBackend(model), make_drafter(name))
        for warmup in range(3):  # the drafter learns from other seeds' texts first
            _text(engine, prompt, 100 + warmup, budget=budget)
        assert _text(engine, prompt, 11, budget=budget) == plain, name
    assert _text(Engine(HFBackend(model), make_drafter("none")), prompt, 12, budget=0) != plain


def test_coupled_drafts_are_still_accepted(model):
    """Under coupling a seeded request's text is the seed's alone: trees of a learning drafter are
    accepted (many tokens per step) and the text equals plain coupled decoding's, seed by seed."""
    prompt = [3, 4, 5, 3, 4, 5, 3, 4]
    drafted = Engine(HFBackend(model), make_drafter("stand"))
    plain = Engine(HFBackend(model), make_drafter("none"))
    accepted, steps = 0, 0
    for seed in range(20):
        request = DecodeRequest(max_new_tokens=20, temperature=0.9, seed=seed, budget=8)
        stats = GenerationStats()
        got = [t for step in drafted.run(prompt, request, stats) for t in step]
        alone = [t for step in plain.run(prompt, request, GenerationStats()) for t in step]
        assert got == alone, seed
        accepted += sum(k * v for k, v in stats.accepted_hist.items())
        steps += stats.steps
    assert accepted > 20 and (accepted + steps) / steps > 1.1  # trees pay under coupling too
