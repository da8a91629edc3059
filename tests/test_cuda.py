"""The same guarantees on a CUDA device (skipped without one): greedy output equal to
``generate`` for model-free and draft-model drafters, the sampled law, a state-space target.

Requests draw their random numbers from a CPU generator on every device (draws are moved to the
logits' device), so a seed means the same draws on a GPU as on a CPU."""

from collections import Counter

import pytest
import torch
import transformers
from chisquare import fits
from conftest import tiny_model
from test_sampling_end_to_end import REQUEST, SAMPLES, SMALL_VOCAB, exact_joint
from test_ssm import random_tree, tiny_ssm

from tokentree.backends import make_backend
from tokentree.backends.base import StaticConfig
from tokentree.backends.hf import kvcache
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.stats import GenerationStats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = "cuda"


@torch.inference_mode()
def cuda_greedy(model, prompt, max_new_tokens):
    out = model.generate(
        torch.tensor([prompt], device=CUDA),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=CUDA),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def decode(model, drafter, prompt, request, couple_seeded=True, static=None):
    backend = make_backend(model, static=static)
    engine = Engine(backend, drafter, frozenset(), couple_seeded=couple_seeded)
    stats = GenerationStats()
    return [t for step in engine.run(prompt, request, stats) for t in step], stats


@pytest.mark.parametrize("name", ["pld", "stand", "lookahead", "chain", "dyspec", "auto"])
def test_greedy_equals_generate_on_cuda(name):
    model = tiny_model("llama", seed=1).to(CUDA)
    draft = tiny_model("llama", seed=101).to(CUDA)
    prompt = ([5, 9, 14, 3, 22] * 4)[:17]
    expected = cuda_greedy(model, prompt, 32)
    got, stats = decode(model, make_drafter(name, draft), prompt, DecodeRequest(max_new_tokens=32))
    assert got == expected
    assert stats.new_tokens == 32


@pytest.mark.parametrize("compile", [False, True])
def test_greedy_through_a_static_cache_and_cuda_graphs_equals_generate(compile):
    model = tiny_model("llama", seed=2).to(CUDA)
    prompt = ([7, 9, 14, 3, 22] * 4)[:19]
    expected = cuda_greedy(model, prompt, 40)
    request = DecodeRequest(max_new_tokens=40, budget=8)
    static = StaticConfig(slots=128, compile=compile)
    for name in ("pld", "stand"):
        got, _ = decode(model, make_drafter(name), prompt, request, static=static)
        assert got == expected, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pld", "chain"])
def test_sampled_law_on_cuda(name):
    model = tiny_model("llama", seed=3, vocab_size=SMALL_VOCAB, initializer_range=0.3).to(CUDA)
    prompt = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    options = {"chain": {"confidence": 0.0}}.get(name, {})
    drafter = make_drafter(name, model, **options)
    counts = Counter()
    for seed in range(SAMPLES):
        tokens, _ = decode(model, drafter, prompt, DecodeRequest(seed=seed, **REQUEST), False)
        counts[tuple(tokens[:2])] += 1
    assert fits(counts, expected, SAMPLES), sorted(counts.items())


@pytest.mark.skipif(
    tuple(int(x) for x in transformers.__version__.split(".")[:2]) < kvcache.FULL_SUPPORT,
    reason="state-space targets need transformers >= 5.24",
)
def test_state_space_tree_on_cuda():
    model = tiny_ssm("bamba").to(CUDA)
    prompt = list(range(10, 19))
    backend = make_backend(model)
    backend.prefill(prompt[:-1])
    tree = random_tree(torch.Generator().manual_seed(0), prompt[-1], 10)
    logits = backend.verify(tree)
    for path in tree.paths:
        tokens = prompt + [tree.tokens[i] for i in path[1:]]
        with torch.inference_mode():
            want = model(torch.tensor([tokens], device=CUDA)).logits[0, len(prompt) - 1 :]
        torch.testing.assert_close(logits[list(path)], want.float(), atol=1e-4, rtol=1e-4)
    expected = cuda_greedy(model, prompt, 16)
    got, _ = decode(model, make_drafter("pld"), prompt, DecodeRequest(max_new_tokens=16))
    assert got == expected
