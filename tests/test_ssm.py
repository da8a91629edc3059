"""STree: tree verification on Mamba-2 and a Mamba-2/attention hybrid (Bamba).

The scan math against the plain recurrence; the tree forward against every root-to-leaf path
forwarded by the model itself; the cache after a commit against one-token decoding; greedy output
against ``model.generate`` for every model-free drafter, a draft model and partial acceptance.
"""

import pytest
import torch
from conftest import VOCAB, tiny_model
from test_greedy_equality import OracleMixDrafter, hf_greedy
from transformers import AutoModelForCausalLM, BambaConfig, Mamba2Config

from tokentree.backends import make_backend, make_batch_target
from tokentree.backends.hf.ssm.scan import path_state, tree_conv, tree_ssd
from tokentree.backends.hf.ssm_backend import SSMBackend
from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.errors import UnsupportedModelError
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

TOKENS = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_ssm(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mamba2":
        config = Mamba2Config(
            hidden_size=32, num_heads=4, head_dim=16, expand=2, state_size=8, n_groups=2,
            num_hidden_layers=2, conv_kernel=4, chunk_size=8, **TOKENS,
        )  # fmt: skip
    else:
        config = BambaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, attn_layer_indices=[1],
            num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_head=16,
            mamba_expand=2, mamba_d_state=8, mamba_n_groups=2, mamba_d_conv=4,
            mamba_chunk_size=8, **TOKENS,
        )  # fmt: skip
    attention = {"attn_implementation": "sdpa"} if kind == "bamba" else {}
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, **attention).eval()


@pytest.fixture(params=["mamba2", "bamba"])
def ssm_kind(request):
    return request.param


def random_tree(gen: torch.Generator, root: int, n: int) -> TokenTree:
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    tokens = [root] + torch.randint(3, VOCAB, (n - 1,), generator=gen).tolist()
    return TokenTree(tuple(tokens), tuple(parents))


def recurrence(x, dt, A, B, C, D, state):
    """One token at a time, as Mamba-2 decodes: the reference for the tree scan."""
    outputs = []
    for t in range(x.shape[0]):
        state = torch.exp(dt[t] * A)[:, None, None] * state + torch.einsum(
            "h,hp,hn->hpn", dt[t], x[t], B[t]
        )
        outputs.append(torch.einsum("hpn,hn->hp", state, C[t]) + D[:, None] * x[t])
    return torch.stack(outputs), state


def test_tree_scan_equals_the_recurrence_along_every_path():
    gen = torch.Generator().manual_seed(0)
    n, H, P, N = 9, 3, 4, 5
    tree = random_tree(gen, 7, n)
    x, B, C = (torch.randn(n, H, k, generator=gen, dtype=torch.float64) for k in (P, N, N))
    dt = torch.rand(n, H, generator=gen, dtype=torch.float64)
    A, D = -torch.rand(H, dtype=torch.float64), torch.randn(H, dtype=torch.float64)
    state = torch.randn(H, P, N, generator=gen, dtype=torch.float64)
    y, cum = tree_ssd(x, dt, A, B, C, D, tree.ancestor_mask, state)
    for path in tree.paths:
        index = list(path)
        want, final = recurrence(x[index], dt[index], A, B[index], C[index], D, state)
        torch.testing.assert_close(y[index], want)
        torch.testing.assert_close(path_state(x, dt, B, cum, index, state), final)


def test_tree_conv_reads_each_nodes_ancestors_then_the_committed_inputs():
    tree = TokenTree((5, 6, 7, 8), (-1, 0, 0, 2))  # node 3 sits below node 2, beside node 1
    inputs = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    conv_state = torch.tensor([[1.0, 2.0, 3.0]])  # three committed inputs, oldest first
    weight = torch.tensor([[100.0, 10.0, 1.0]])  # taps: two back, one back, the node itself
    out = tree_conv(inputs, tree.ancestor_table(3), conv_state, weight, None)
    want = [2 * 100 + 3 * 10 + 10, 3 * 100 + 10 * 10 + 20, 3 * 100 + 10 * 10 + 30, 1340]
    assert out[:, 0].tolist() == want


@pytest.mark.parametrize("seed", range(3))
def test_tree_forward_equals_every_path_forwarded_by_the_model(ssm_kind, seed):
    model = tiny_ssm(ssm_kind, seed)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (5 + 4 * seed,), generator=gen).tolist()
    tree = random_tree(gen, prompt[-1], 12)
    backend = SSMBackend(model)
    backend.prefill(prompt[:-1])
    logits = backend.verify(tree)
    for path in tree.paths:
        tokens = prompt + [tree.tokens[i] for i in path[1:]]
        with torch.inference_mode():
            want = model(torch.tensor([tokens])).logits[0, len(prompt) - 1 :]
        torch.testing.assert_close(logits[list(path)], want, atol=1e-5, rtol=1e-5)


def one_token_decoding_cache(model, tokens):
    """The cache plain decoding leaves: the prompt's prefill, then one token per forward."""
    backend = SSMBackend(model)
    with torch.inference_mode():
        for position, token in enumerate(tokens):
            model(
                torch.tensor([[token]]),
                position_ids=torch.tensor([[position]]),
                cache=backend.cache,
                use_cache=True,
            )
    return backend.cache


def test_cache_after_commit_equals_one_token_decoding(ssm_kind):
    model = tiny_ssm(ssm_kind, 1)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, VOCAB, (7,), generator=gen).tolist()
    backend = SSMBackend(model)
    backend.prefill(prompt[:-1])
    committed, root = list(prompt[:-1]), prompt[-1]
    for step in range(3):  # a partial path, a whole path, the root alone
        tree = random_tree(gen, root, 10)
        backend.verify(tree)
        leaf = tree.paths[step % len(tree.paths)][-1]
        path = tree.path_to(leaf)[: [2, None, 1][step]]
        backend.commit(path)
        committed += [tree.tokens[i] for i in path]
        root = int(torch.randint(3, VOCAB, (1,), generator=gen))
    assert backend.tokens == committed
    want = one_token_decoding_cache(model, committed)
    for got_layer, want_layer in zip(backend.cache.layers, want.layers):
        if ssm_kind == "bamba" and got_layer is backend.cache.layers[1]:
            torch.testing.assert_close(got_layer.keys, want_layer.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_layer.values, want_layer.values, atol=1e-5, rtol=1e-5)
            continue
        for got, wanted in ((got_layer.conv_states, want_layer.conv_states),
                            (got_layer.recurrent_states, want_layer.recurrent_states)):  # fmt: skip
            torch.testing.assert_close(got[0], wanted[0], atol=1e-5, rtol=1e-5)


def run(model, drafter, prompt, max_new, budget):
    engine = Engine(make_backend(model), drafter, frozenset())
    stats = GenerationStats()
    request = DecodeRequest(max_new_tokens=max_new, budget=budget)
    return [t for step in engine.run(prompt, request, stats) for t in step], stats


@pytest.mark.parametrize("seed", range(3))
def test_every_drafter_matches_generate_on_ssm_targets(ssm_kind, seed):
    model = tiny_ssm(ssm_kind, seed)
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(3, VOCAB, (4 + seed,), generator=gen).tolist()
    prompt = (base * 4)[: 6 + 5 * seed]
    max_new = 24 + 6 * seed
    expected = hf_greedy(model, prompt, max_new)
    draft = tiny_model("llama", seed=seed + 100)
    names = [name for name in DRAFTERS if not DRAFTERS[name].reads_target]
    for name in names:
        got, stats = run(model, make_drafter(name, draft), prompt, max_new, budget=8)
        assert got == expected, name
        assert stats.new_tokens == max_new


def test_partial_full_and_zero_acceptance_on_ssm_targets(ssm_kind):
    outcomes = {"full": 0, "partial": 0, "zero": 0}
    for seed in range(3):
        model = tiny_ssm(ssm_kind, seed)
        prompt = torch.randint(3, VOCAB, (5 + seed,)).tolist()
        expected = hf_greedy(model, prompt, 40)
        drafter = OracleMixDrafter(len(prompt), expected, seed)
        got, stats = run(model, drafter, prompt, 40, budget=10)
        assert got == expected
        assert stats.steps < 40
        for key in outcomes:
            outcomes[key] += drafter.outcomes[key]
    assert all(count > 0 for count in outcomes.values()), outcomes


def test_prefill_that_does_not_extend_the_cache_starts_over():
    model = tiny_ssm("mamba2")
    backend = SSMBackend(model)
    backend.prefill([5, 6, 7, 8])
    backend.prefill([5, 6, 9])  # a recurrent state cannot be rewound to [5, 6]
    logits = backend.verify(TokenTree.root(10))
    with torch.inference_mode():
        want = model(torch.tensor([[5, 6, 9, 10]])).logits[0, -1]
    torch.testing.assert_close(logits[0], want, atol=1e-5, rtol=1e-5)


def test_ssm_refusals_are_clear():
    model = tiny_ssm("mamba2")
    with pytest.raises(UnsupportedModelError, match="cannot be a draft model"):
        make_backend(model, draft=True)
    with pytest.raises(UnsupportedModelError, match="one sequence at a time"):
        make_batch_target(model, 4)
    backend = SSMBackend(model)
    backend.prefill([5, 6])
    backend.verify(TokenTree.chain(7, [8, 9]))
    with pytest.raises(ValueError, match="root path"):
        backend.commit([0, 2])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pld", "stand"])
def test_sampled_two_token_law_on_a_mamba2_matches_the_target(name):
    from collections import Counter

    from chisquare import fits
    from test_sampling_end_to_end import REQUEST, SAMPLES, exact_joint

    torch.manual_seed(3)
    config = Mamba2Config(
        hidden_size=32, num_heads=4, head_dim=16, expand=2, state_size=8, n_groups=2,
        num_hidden_layers=2, conv_kernel=4, chunk_size=8, initializer_range=0.3,
        **{**TOKENS, "vocab_size": 16},
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    text = [3, 4] + hf_greedy(model, [3, 4], 8)
    prompt = text + text[:4]  # the model's own text repeated: prompt lookup finds likely tokens
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    engine = Engine(make_backend(model), make_drafter(name), couple_seeded=False)
    counts, accepted = Counter(), 0
    for seed in range(SAMPLES):
        stats = GenerationStats()
        request = DecodeRequest(seed=seed, **REQUEST)
        tokens = [t for step in engine.run(prompt, request, stats) for t in step]
        counts[tuple(tokens[:2])] += 1
        accepted += sum(k * v for k, v in stats.accepted_hist.items())
    assert fits(counts, expected, SAMPLES), sorted(counts.items())
    assert accepted > 0.05 * SAMPLES


def test_server_serves_an_ssm_one_request_at_a_time_and_refuses_batches_at_start():
    from conftest import tiny_tokenizer

    from tokentree.api import Generator, LoadedModel
    from tokentree.server.config import ServeConfig
    from tokentree.server.run import build_server

    generator = Generator(
        LoadedModel(tiny_ssm("mamba2"), tiny_tokenizer(), "tiny"), make_drafter("pld")
    )
    with pytest.raises(UnsupportedModelError, match="one sequence at a time"):
        build_server(generator, ServeConfig(port=0, max_batch=2))
    out = generator.generate("abc abc abc", max_new_tokens=12, drafter="pld")
    assert len(out.token_ids) == 12
