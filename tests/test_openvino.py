"""The OpenVINO backend on tiny random models exported at f32 (weights and arithmetic).

Tree logits must equal transformers' logits of each root-to-node path; greedy output of every
drafter must equal transformers' greedy ``generate``, through partial acceptance, rejected columns
kept masked in the state, compacted states, held-back prompt tails and prefix reuse. Skipped when
OpenVINO is missing, unless TOKENTREE_REQUIRE_OPENVINO=1 (CI), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from conftest import VOCAB, tiny_model, tiny_tokenizer
from test_greedy_equality import OracleMixDrafter, hf_greedy

from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.errors import TokentreeError, UnsupportedModelError
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

if importlib.util.find_spec("openvino") is None:
    if os.environ.get("TOKENTREE_REQUIRE_OPENVINO") == "1":
        pytest.fail("openvino must be installed (pip install -e '.[openvino]')", pytrace=False)
    pytest.skip("openvino is not installed (pip install -e '.[openvino]')", allow_module_level=True)

from tokentree.backends.openvino import OpenVINOBackend, OpenVINOConfig, OpenVINOModel  # noqa: E402
from tokentree.backends.openvino_export import ExportOptions, cached_export  # noqa: E402

EXACT = dict(weights="f32", compute="f32")


def export_tiny(tmp_path_factory, family: str, seed: int) -> tuple[torch.nn.Module, str]:
    """A tiny random model saved as an HF dir and exported at f32: (the HF model, export dir)."""
    model = tiny_model(family, seed=seed)
    source = tmp_path_factory.mktemp(f"{family}-{seed}")
    model.save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    cache = tmp_path_factory.getbasetemp() / "ov-exports"
    return model, cached_export(source, ExportOptions("f32"), cache, f"{family}-{seed}")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exported(request, tmp_path_factory):
    return export_tiny(tmp_path_factory, request.param, seed=3)


@pytest.fixture(scope="module")
def draft_export(tmp_path_factory):
    return export_tiny(tmp_path_factory, "llama", seed=103)


def backend_for(export_dir, **options) -> OpenVINOBackend:
    return OpenVINOBackend(OpenVINOModel(export_dir, OpenVINOConfig(**EXACT, **options)))


@torch.inference_mode()
def path_logits(model, context: list[int], tree: TokenTree) -> torch.Tensor:
    """[n, V]: transformers' logits of each node, from a forward of its own root-to-node path."""
    rows = []
    for node in range(len(tree)):
        ids = context + [tree.tokens[i] for i in tree.path_to(node)]
        rows.append(model(torch.tensor([ids])).logits[0, -1])
    return torch.stack(rows)


def test_tree_logits_equal_per_path_logits_through_partial_acceptance(exported):
    model, export_dir = exported
    backend = backend_for(export_dir)
    cached = [5, 9, 14, 9, 5, 33]
    backend.prefill(cached)
    tree = TokenTree((40, 7, 8, 9, 10, 11), (-1, 0, 0, 1, 2, 4))
    for bonus in (12, 13, 14):  # accept a non-first branch: the kept columns are not contiguous
        logits = backend.verify(tree)
        torch.testing.assert_close(logits, path_logits(model, cached, tree), atol=2e-5, rtol=1e-4)
        backend.commit([0, 2, 4])
        cached += [tree.tokens[0], tree.tokens[2], tree.tokens[4]]
        tree = TokenTree((bonus, 7, 8, 9, 10, 11), (-1, 0, 0, 1, 2, 4))
    assert backend.tokens == cached
    assert backend.width > len(cached)  # rejected columns stay, masked


def test_compaction_keeps_the_committed_tokens_in_order(exported):
    model, export_dir = exported
    backend = backend_for(export_dir, junk_limit=0)  # compact before every tree
    context = [4, 5, 6, 7]
    backend.prefill(context[:-1])
    tree = TokenTree((7, 20, 21, 22), (-1, 0, 0, 2))
    backend.verify(tree)
    backend.commit([0, 2])
    tree = TokenTree((22, 30, 31), (-1, 0, 1))
    logits = backend.verify(tree)
    assert backend.compactions == 1 and backend.width == 5 + 3
    expected = path_logits(model, [4, 5, 6, 7, 21], tree)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)


def test_prefix_reuse_and_held_back_prompt_tail(exported):
    model, export_dir = exported
    backend = backend_for(export_dir)
    backend.prefill([3, 4, 5, 6, 7, 8])
    backend.prefill([3, 4, 5, 60, 61], defer=2)  # keeps 3 columns, holds 2 back
    assert backend.tokens == [3, 4, 5]
    tree = TokenTree((62, 63, 64), (-1, 0, 0))
    logits = backend.verify(tree)
    assert backend.tokens == [3, 4, 5, 60, 61]
    torch.testing.assert_close(
        logits, path_logits(model, [3, 4, 5, 60, 61], tree), atol=2e-5, rtol=1e-4
    )


def run_engine(backend, drafter, prompt, max_new, budget):
    engine = Engine(backend, drafter, frozenset())
    request = DecodeRequest(max_new_tokens=max_new, budget=budget)
    steps = engine.run(prompt, request, GenerationStats())
    return [t for step in steps for t in step]


@pytest.mark.parametrize("seed", range(3))
def test_every_drafter_matches_hf_generate(exported, draft_export, seed):
    model, export_dir = exported
    draft = OpenVINOModel(draft_export[1], OpenVINOConfig(**EXACT))
    backend = backend_for(export_dir, junk_limit=16)
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(3, VOCAB, (4 + seed,), generator=gen).tolist()
    prompt = (base * 4)[: 10 + 5 * seed]
    expected = hf_greedy(model, prompt, 32)
    for name in DRAFTERS:
        if DRAFTERS[name].reads_target:
            continue
        drafter = make_drafter(name, draft)
        for budget in (3, 12):
            assert run_engine(backend, drafter, prompt, 32, budget) == expected, (name, budget)
    assert backend.compactions > 0


def test_oracle_drafter_partial_full_and_zero_acceptance(exported):
    model, export_dir = exported
    backend = backend_for(export_dir)
    outcomes = {"full": 0, "partial": 0, "zero": 0}
    for seed in range(3):
        prompt = torch.randint(3, VOCAB, (5 + seed,), generator=torch.Generator().manual_seed(seed))
        prompt = prompt.tolist()
        expected = hf_greedy(model, prompt, 40)
        drafter = OracleMixDrafter(len(prompt), expected, seed)
        assert run_engine(backend, drafter, prompt, 40, budget=10) == expected
        for key in outcomes:
            outcomes[key] += drafter.outcomes[key]
    assert all(count > 0 for count in outcomes.values()), outcomes


def test_qwen3_tree_logits_equal_per_path_logits(tmp_path):
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM, Qwen3Config

    common = tiny_config("qwen2").to_dict()
    config = Qwen3Config(**{k: common[k] for k in QWEN3_KEYS}, head_dim=8)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "q3")
    tiny_tokenizer().save_pretrained(tmp_path / "q3")
    export_dir = cached_export(tmp_path / "q3", ExportOptions("f32"), tmp_path / "cache", "q3")
    backend = backend_for(export_dir)
    backend.prefill([4, 8, 15, 16])
    tree = TokenTree((23, 42, 7, 9), (-1, 0, 0, 2))
    expected = path_logits(model, [4, 8, 15, 16], tree)
    torch.testing.assert_close(backend.verify(tree), expected, atol=2e-5, rtol=1e-4)


QWEN3_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id",
)  # fmt: skip


def test_unsupported_family_is_refused_by_name(tmp_path):
    source = tmp_path / "gemma"
    tiny_model("gemma3").save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    with pytest.raises(UnsupportedModelError, match="gemma3"):
        cached_export(source, ExportOptions("f32"), tmp_path / "cache", "gemma")


def test_bad_options_are_refused():
    with pytest.raises(TokentreeError, match="--ov-weights"):
        OpenVINOConfig(weights="int3")
    with pytest.raises(TokentreeError, match="--ov-compute"):
        OpenVINOConfig(compute="f8")


def test_a_corrupt_export_is_rebuilt(tmp_path):
    source = tmp_path / "tiny"
    tiny_model("llama", seed=1).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    first = cached_export(source, ExportOptions("f32"), tmp_path / "cache", "tiny")
    weights = first / "model.bin"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a crash or a full disk
    again = cached_export(source, ExportOptions("f32"), tmp_path / "cache", "tiny")
    assert again == first and weights.stat().st_size == size
    assert json.loads((again / "manifest.json").read_text())["weights"] == "f32"


@pytest.mark.parametrize("drafter", ["stand", "pld", "auto"])
def test_seeded_sampling_draws_what_the_transformers_backend_draws(exported, drafter):
    from tokentree.api import Generator
    from tokentree.models import LoadedModel

    model, export_dir = exported
    on_ov = LoadedModel(OpenVINOModel(export_dir, OpenVINOConfig(**EXACT)), tiny_tokenizer(), "x")
    on_hf = LoadedModel(model, tiny_tokenizer(), "x")
    prompt = [5, 9, 14, 9, 5, 9, 14, 9, 5]
    outputs = []
    for target in (on_ov, on_hf):
        gen = Generator(target, make_drafter(drafter), budget=8)
        out = gen.generate(prompt, max_new_tokens=40, temperature=0.9, top_p=0.95, seed=7)
        outputs.append(out.token_ids)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 40


@torch.inference_mode()
def test_constrained_greedy_equals_masked_transformers_decoding(exported):
    """A constraint on the OpenVINO backend: every drafter's trees, forced and pruned by the
    grammar, give transformers' masked argmax decoding token for token (one forward per token,
    each row masked by a fresh llguidance matcher)."""
    import llguidance
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    from tokentree.constraints import Constraint, TokenGrammar, masked

    model, export_dir = exported
    grammar = TokenGrammar(tiny_tokenizer(), VOCAB, [2])
    rule = Constraint.regex("(ab|ba)[a-e]{2,9}(xy|z) (cab|cba)")
    prompt = tiny_tokenizer()("ab cab abcd z cab ba").input_ids
    matcher = llguidance.LLMatcher(grammar.tokenizer, rule.grammar())
    ids, expected = list(prompt), []
    while not matcher.is_stopped():
        bits = allocate_token_bitmask(1, VOCAB)
        fill_next_token_bitmask(matcher, bits, 0)
        token = int(masked(model(torch.tensor([ids])).logits[0, -1:].float(), bits).argmax())
        expected.append(token)
        ids.append(token)
        assert matcher.consume_token(token)
    for name in ("none", "pld", "stand", "suffix"):
        for budget in (3, 12):
            engine = Engine(backend_for(export_dir), make_drafter(name), frozenset({2}))
            engine.grammar = grammar
            stats = GenerationStats()
            request = DecodeRequest(max_new_tokens=40, budget=budget, constraint=rule)
            got = [t for step in engine.run(prompt, request, stats) for t in step]
            assert got == expected, (name, budget)
            assert stats.complete  # (a drafter that guessed the forced tokens adds none)
            assert name != "none" or stats.grammar["forced"] > 0


@torch.inference_mode()
def test_prompt_logprobs_equal_transformers_log_softmax(exported):
    """Prompt logprobs on the OpenVINO backend, in chunks: one transformers forward's."""
    from tokentree.logprobs import prompt_logprobs

    model, export_dir = exported
    prompt = [5, 9, 14, 9, 5, 33, 5, 9, 14, 9, 5]
    backend = backend_for(export_dir)
    entries = prompt_logprobs(backend, prompt, 3, chunk=4)
    want = model(torch.tensor([prompt])).logits[0, :-1].float().log_softmax(-1)
    assert entries[0] is None and backend.tokens == prompt[:-1]
    for i, entry in enumerate(entries[1:]):
        assert entry.logprob == pytest.approx(float(want[i, prompt[i + 1]]), abs=1e-4)
        assert [t for t, _ in entry.top] == want[i].topk(3).indices.tolist()


@torch.inference_mode()
def test_logprobs_equal_transformers_log_softmax(exported):
    """Logprobs on the OpenVINO backend: each token's is the log-softmax of transformers' logits
    at its position (f32), through partial acceptance."""
    model, export_dir = exported
    prompt = [5, 9, 14, 9, 5, 33, 5, 9, 14, 9, 5]
    for name in ("none", "pld"):
        engine = Engine(backend_for(export_dir), make_drafter(name), frozenset())
        stats = GenerationStats()
        request = DecodeRequest(max_new_tokens=20, budget=8, logprobs=4)
        got = [t for step in engine.run(prompt, request, stats) for t in step]
        logits = model(torch.tensor([prompt + got])).logits[0, len(prompt) - 1 : -1]
        want = logits.float().log_softmax(-1)
        assert [e.token for e in stats.logprobs] == got
        for i, entry in enumerate(stats.logprobs):
            assert entry.logprob == pytest.approx(float(want[i, entry.token]), abs=1e-4)
            assert [t for t, _ in entry.top] == want[i].topk(4).indices.tolist()
