"""--static-cache: a preallocated cache and bucket-padded tree forwards (the CUDA-graph layout)
give the same logits as the growing cache (fp32, 1e-5) through commits, prefix reuse and levels
grown one at a time, and greedy decoding through it equals ``generate`` for every drafter."""

import pytest
import torch
from conftest import VOCAB, tiny_model
from test_greedy_equality import OracleMixDrafter, hf_greedy
from test_ssm import random_tree

from tokentree.backends import make_backend
from tokentree.backends.base import StaticConfig, bucket
from tokentree.backends.hf import HFBackend, kvcache
from tokentree.backends.hf.static import StaticHFBackend, static_tree_mask
from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.errors import TokentreeError, UnsupportedModelError
from tokentree.planner import CostProfile, padded_profile
from tokentree.sampling import SamplingParams
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

FULL = ("llama", "qwen2")  # gemma3's sliding layers are refused (test below)


def test_buckets_are_the_next_power_of_two():
    assert [bucket(m) for m in (1, 2, 3, 4, 5, 16, 17, 64, 65)] == [1, 2, 4, 4, 8, 16, 32, 64, 128]


def test_static_tree_mask_on_a_crafted_tree():
    tree = TokenTree((5, 6, 7, 8), (-1, 0, 0, 1))  # 0 -> 1 -> 3, 0 -> 2
    mask = static_tree_mask(tree.ancestor_mask[1:], prefix=2, rows=4, slots=9, dtype=torch.float32)
    visible = (mask[0, 0] == 0).int().tolist()
    assert visible == [
        [1, 1, 1, 1, 0, 0, 0, 0, 0],  # node 1: prefix, root, itself
        [1, 1, 1, 0, 1, 0, 0, 0, 0],  # node 2: prefix, root, itself
        [1, 1, 1, 1, 0, 1, 0, 0, 0],  # node 3: prefix, root, node 1, itself
        [1, 1, 0, 0, 0, 0, 1, 0, 0],  # padding row (slot 2 + 4): prefix and its own slot
    ]


@pytest.mark.parametrize("family", FULL)
@pytest.mark.parametrize("seed", range(3))
def test_static_verify_equals_the_growing_cache_through_commits(family, seed):
    model = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (20 + 5 * seed,), generator=gen).tolist()
    growing, static = HFBackend(model), StaticHFBackend(model, StaticConfig(slots=160))
    for backend in (growing, static):
        backend.prefill(prompt)
    for step in range(6):
        size = int(torch.randint(1, 21, (), generator=gen))  # odd sizes: padded rows
        tree = random_tree(gen, int(torch.randint(3, VOCAB, (), generator=gen)), size)
        expected = growing.verify(tree)
        torch.testing.assert_close(static.verify(tree), expected, atol=1e-5, rtol=1e-5)
        path = tree.path_to(int(torch.randint(0, size, (), generator=gen)))
        growing.commit(path)
        static.commit(path)
        assert static.tokens == growing.tokens
        if step == 3:  # a later prompt that shares part of what is cached
            again = static.tokens[:-7] + [9, 10, 11]
            growing.prefill(again)
            static.prefill(again)


@pytest.mark.parametrize("family", FULL)
def test_levels_grown_one_at_a_time_equal_the_growing_cache(family):
    model = tiny_model(family, seed=5)
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, VOCAB, (17,), generator=gen).tolist()
    tree = random_tree(gen, prompt[-1], 15)
    levels = [1, 3, 8, 15]
    got = {}
    for name, backend in (
        ("growing", HFBackend(model)),
        ("static", StaticHFBackend(model, StaticConfig(slots=64))),
    ):
        backend.prefill(prompt[:-1])
        parts = [backend.grow(tree.prefix(b), a) for a, b in zip([0] + levels, levels)]
        got[name] = torch.cat(parts)
        backend.commit(tree.path_to(14))
        got[name + " after"] = backend.verify(TokenTree.root(7))
    torch.testing.assert_close(got["static"], got["growing"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["static after"], got["growing after"], atol=1e-5, rtol=1e-5)


def test_a_prompt_tail_held_back_goes_with_the_next_tree():
    model = tiny_model("llama", seed=6)
    gen = torch.Generator().manual_seed(6)
    prompt = torch.randint(3, VOCAB, (23,), generator=gen).tolist()
    tree = random_tree(gen, prompt[-1], 11)
    got = {}
    for name, backend in (
        ("growing", HFBackend(model)),
        ("static", StaticHFBackend(model, StaticConfig(slots=64))),
    ):
        backend.prefill(prompt[:10])
        backend.prefill(prompt[:-1], defer=4)
        assert backend.tokens == prompt[:-5]  # 4 held back
        got[name] = backend.verify(tree)
        backend.commit(tree.path_to(10))
        assert backend.tokens == prompt[:-1] + [tree.tokens[i] for i in tree.path_to(10)]
    torch.testing.assert_close(got["static"], got["growing"], atol=1e-5, rtol=1e-5)


def _decode(backend, drafter, prompt, max_new, budget):
    engine = Engine(backend, drafter, frozenset())
    stats = GenerationStats()
    request = DecodeRequest(max_new_tokens=max_new, budget=budget)
    return [t for step in engine.run(prompt, request, stats) for t in step], stats


@pytest.mark.parametrize("family", FULL)
@pytest.mark.parametrize("seed", range(2))
def test_every_drafter_through_the_static_cache_matches_generate(family, seed):
    model = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(3, VOCAB, (5,), generator=gen).tolist()
    prompt = (base * 4)[: 9 + 4 * seed]
    expected = hf_greedy(model, prompt, 30)
    draft = tiny_model(family, seed=seed + 100)
    backend = make_backend(model, static=StaticConfig(slots=128))
    assert isinstance(backend, StaticHFBackend)
    for name in DRAFTERS:
        if DRAFTERS[name].reads_target:
            continue
        for budget in (3, 12):
            got, stats = _decode(backend, make_drafter(name, draft), prompt, 30, budget)
            assert got == expected, (name, budget)
            assert stats.new_tokens == 30


@pytest.mark.parametrize("name", ["chain", "specinfer", "sequoia", "dyspec", "auto"])
def test_draft_models_on_static_caches_match_generate(name):
    model, draft = tiny_model("qwen2", seed=4), tiny_model("qwen2", seed=104)
    prompt = ([8, 21, 5, 40, 9] * 3)[:13]
    expected = hf_greedy(model, prompt, 30)
    static = StaticConfig(slots=128)
    draft_backend = make_backend(draft, draft=True, static=static)
    drafter = make_drafter(name, draft_backend)
    for budget in (4, 10):
        got, _ = _decode(make_backend(model, static=static), drafter, prompt, 30, budget)
        assert got == expected, budget
    assert draft_backend.tokens  # the draft ran on its static cache


def test_partial_full_and_zero_acceptance_through_the_static_cache():
    model = tiny_model("llama", seed=3)
    prompt = torch.randint(3, VOCAB, (8,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = hf_greedy(model, prompt, 48)
    drafter = OracleMixDrafter(len(prompt), expected, 3)
    got, stats = _decode(StaticHFBackend(model, StaticConfig(slots=96)), drafter, prompt, 48, 10)
    assert got == expected
    assert all(count > 0 for count in drafter.outcomes.values()), drafter.outcomes


def test_a_request_beyond_the_static_cache_is_refused_clearly():
    backend = StaticHFBackend(tiny_model("llama"), StaticConfig(slots=32))
    with pytest.raises(TokentreeError, match="do not fit the static cache of 32"):
        backend.prefill(list(range(3, 40)))
    backend.prefill(list(range(3, 25)))
    with pytest.raises(TokentreeError, match="raise --static-cache"):
        backend.verify(TokenTree.chain(7, list(range(3, 15))))  # 22 + 16 padded rows > 32
    assert backend.verify(TokenTree.chain(7, [8, 9])).shape == (3, VOCAB)


def test_static_cache_refusals():
    with pytest.raises(UnsupportedModelError, match="sliding-window layers"):
        StaticHFBackend(tiny_model("gemma3"), StaticConfig(slots=64))
    with pytest.raises(TokentreeError, match="at least 16"):
        StaticConfig(slots=8)


def test_the_static_cache_never_reallocates():
    backend = StaticHFBackend(tiny_model("qwen2"), StaticConfig(slots=64))
    addresses = [layer.keys.data_ptr() for layer in backend.cache.layers]
    backend.prefill(list(range(3, 20)))
    backend.verify(random_tree(torch.Generator().manual_seed(0), 5, 9))
    backend.commit([0, 2])
    assert [layer.keys.data_ptr() for layer in backend.cache.layers] == addresses
    assert int(backend.cache.layers[0].cumulative_length) == 19
    kvcache.seek(backend.cache, 3)
    assert int(backend.cache.layers[1].cumulative_length) == 3


@pytest.mark.slow
def test_compiled_tree_forwards_keep_one_graph_per_bucket_and_exact_logits():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_model("llama", seed=2)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(3, VOCAB, (19,), generator=gen).tolist()
    eager = StaticHFBackend(model, StaticConfig(slots=64))
    compiled = StaticHFBackend(model, StaticConfig(slots=64, compile=True))
    for backend in (eager, compiled):
        backend.prefill(prompt)
    for size in (3, 4, 4):  # one bucket (4 rows) at three prefixes
        tree = random_tree(gen, int(torch.randint(3, VOCAB, (), generator=gen)), size)
        torch.testing.assert_close(compiled.verify(tree), eager.verify(tree), atol=1e-5, rtol=1e-5)
        for backend in (eager, compiled):
            backend.commit(tree.path_to(size - 1))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompiles


def test_the_profile_measures_what_fits_the_static_cache():
    config = StaticConfig(slots=96)
    sizes, context, longer = config.fit_profile(range(1, 129), 256, (64, 4096), (1, 16, 64))
    assert sizes == (1, 2, 4, 8, 16, 32) and context == 64 and longer == ()
    sizes, context, longer = StaticConfig(slots=8192).fit_profile(
        (1, 2, 3, 100), 256, (4096, 8192), (1, 64)
    )
    assert sizes == (1, 2, 4, 128) and context == 256 and longer == (4096,)


def test_a_padded_profile_prices_each_size_at_its_bucket():
    longer = CostProfile((1, 2, 4, 8, 12), (2.0, 2.1, 2.2, 2.6, 2.5), 4096)
    measured = CostProfile((1, 2, 4, 8), (1.0, 1.1, 1.2, 1.6), 256, longer=(longer,))
    profile = padded_profile(measured, bucket)
    assert profile.sizes == tuple(range(1, 9))
    assert [profile.seconds_at(n, 256) for n in (3, 5, 7, 8)] == [1.2, 1.6, 1.6, 1.6]
    assert profile.longer[0].sizes == tuple(range(1, 9))
    assert profile.seconds_at(6, 4096) == 2.6


def test_the_bench_gives_draft_models_their_static_cache():
    """``bench --static-cache``: a tt: method's draft model runs on a static cache of its own, as
    the generator's drafters do (the draft's forwards keep their shapes too)."""
    from conftest import tiny_tokenizer

    from tokentree.api import Generator
    from tokentree.bench.methods import build_method
    from tokentree.models import LoadedModel

    target = LoadedModel(tiny_model("qwen2", seed=4), tiny_tokenizer(), "tiny")
    draft = LoadedModel(tiny_model("qwen2", seed=104), tiny_tokenizer(), "tiny-draft")
    static = StaticConfig(slots=128)
    generator = Generator(target, make_drafter("none"), draft, static=static)
    method = build_method("tt:chain@4", generator)
    assert isinstance(method.drafter.model.backend, StaticHFBackend)
    prompt = ([8, 21, 5, 40, 9] * 3)[:13]
    result = method.run(prompt, 20, SamplingParams(), seed=0)
    assert result.token_ids == hf_greedy(target.model, prompt, 20)
    assert method.drafter.model.backend.tokens  # the draft ran on its static cache
