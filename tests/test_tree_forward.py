"""A tree forward equals the forwards of its root-to-leaf paths; compaction equals plain
decoding."""

import torch
from conftest import VOCAB, tiny_model

from tokentree.backends.hf import HFBackend, kvcache
from tokentree.tree import TokenTree


def random_tree(gen: torch.Generator, n: int) -> TokenTree:
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    tokens = torch.randint(3, VOCAB, (n,), generator=gen).tolist()
    return TokenTree(tuple(tokens), tuple(parents))


@torch.inference_mode()
def plain_logits(model, token_ids):
    """[len, V] logits of a full causal forward without cache."""
    return model(input_ids=torch.tensor([token_ids])).logits[0]


def test_tree_forward_matches_every_path(family):
    model = tiny_model(family)
    gen = torch.Generator().manual_seed(1)
    for prefix_len in (1, 5, 11):  # 11 > gemma3 window: the sliding mask matters
        prefix = torch.randint(3, VOCAB, (prefix_len,), generator=gen).tolist()
        tree = random_tree(gen, 12)
        backend = HFBackend(model)
        backend.prefill(prefix)
        logits = backend.verify(tree)
        for path in tree.paths:
            expected = plain_logits(model, prefix + [tree.tokens[i] for i in path])[prefix_len:]
            torch.testing.assert_close(logits[list(path)], expected, atol=1e-5, rtol=1e-5)


def test_compaction_equals_plain_decoding_cache(family):
    model = tiny_model(family)
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(3, VOCAB, (9,), generator=gen).tolist()
    tree = random_tree(gen, 10)
    path = max(tree.paths, key=len)
    assert list(path) != list(range(len(path))), "test needs a non-contiguous path"
    backend = HFBackend(model)
    backend.prefill(prefix)
    backend.verify(tree)
    backend.commit(path)

    reference = HFBackend(model)
    reference.prefill(prefix + [tree.tokens[i] for i in path])
    assert backend.tokens == reference.tokens
    assert kvcache.length(backend.cache) == len(prefix) + len(path)
    for got, want in zip(backend.cache.layers, reference.cache.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-5)
    # and decoding continues identically after compaction
    nxt = TokenTree.chain(5, [7, 9])
    torch.testing.assert_close(backend.verify(nxt), reference.verify(nxt), atol=1e-5, rtol=1e-5)


def test_chunked_prefill_and_prefix_reuse_match_a_fresh_cache(family, monkeypatch):
    import tokentree.backends.hf.backend as hf

    model = tiny_model(family)
    gen = torch.Generator().manual_seed(3)
    first = torch.randint(3, VOCAB, (17,), generator=gen).tolist()
    second = first[:9] + torch.randint(3, VOCAB, (8,), generator=gen).tolist()
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 4)  # 17 tokens in 5 chunks
    reused = HFBackend(model)
    reused.prefill(first)
    reused.prefill(second)  # keeps the 9 shared tokens, recomputes the rest
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 512)
    fresh = HFBackend(model)
    fresh.prefill(second)
    tree = TokenTree.chain(5, [6, 7])
    torch.testing.assert_close(reused.verify(tree), fresh.verify(tree), atol=1e-5, rtol=1e-5)


def test_a_deferred_prefill_tail_rides_with_the_next_tree():
    model = tiny_model("llama", seed=0)
    plain, deferred = HFBackend(model), HFBackend(model)
    tree = TokenTree((10, 11, 12, 13), (-1, 0, 0, 1))
    plain.prefill([5, 6, 7, 8, 9])
    deferred.prefill([5, 6, 7])
    deferred.prefill([5, 6, 7, 8, 9], defer=4)  # 8, 9 held back
    assert deferred.tokens == [5, 6, 7]
    assert torch.allclose(deferred.grow(tree, 0), plain.verify(tree), atol=1e-5)
    plain.commit((0, 1, 3))
    deferred.commit((0, 1, 3))
    assert deferred.tokens == plain.tokens == [5, 6, 7, 8, 9, 10, 11, 13]
    nxt = TokenTree.root(14)
    assert torch.allclose(deferred.verify(nxt), plain.verify(nxt), atol=1e-5)


def test_a_long_missing_tail_is_prefilled_but_its_last_defer_tokens():
    model = tiny_model("llama", seed=0)
    plain, deferred = HFBackend(model), HFBackend(model)
    prompt, tree = list(range(5, 25)), TokenTree((30, 31, 32), (-1, 0, 0))
    plain.prefill(prompt)
    deferred.prefill(prompt, defer=6)
    assert deferred.tokens == prompt[:-6]
    torch.testing.assert_close(deferred.verify(tree), plain.verify(tree), atol=1e-5, rtol=1e-5)
    deferred.commit((0, 2))
    plain.commit((0, 2))
    assert deferred.tokens == plain.tokens == prompt + [30, 32]
