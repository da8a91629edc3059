"""Speculative sampling end to end: for every drafter, the joint law of the first two sampled tokens
equals the target's own (chi-square against the exact law), a biased rule is caught, seeds
repeat."""

from collections import Counter

import pytest
import torch
from chisquare import fits
from conftest import tiny_model

from tokentree.backends.hf import HFBackend
from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.sampling import Acceptance, Draft, Draw, SamplingParams, warp
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

pytestmark = pytest.mark.slow  # minutes: CI runs it; pytest -m "not slow" skips it

SMALL_VOCAB = 16
SAMPLES = 3000
REQUEST = dict(
    max_new_tokens=4, temperature=0.8, top_p=0.95, budget=6
)  # the first 2 tokens are tested


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, vocab_size=SMALL_VOCAB, initializer_range=0.3)


@pytest.fixture(scope="module")
def prompt(model):
    """The model's own greedy text, repeated, so prompt lookup finds likely continuations."""
    with torch.inference_mode():
        text = model.generate(
            torch.tensor([[3, 4]]),
            do_sample=False,
            max_new_tokens=8,
            pad_token_id=0,
            eos_token_id=None,
        )[0].tolist()
    return text + text[:4]


@torch.inference_mode()
def exact_joint(model, prompt, params: SamplingParams) -> dict[tuple[int, int], float]:
    """P(x1, x2) of plain sampling from the warped target."""
    first = warp(model(torch.tensor([prompt])).logits[:, -1], params)[0]
    batch = torch.tensor([prompt + [x] for x in range(SMALL_VOCAB)])
    second = warp(model(batch).logits[:, -1], params)
    return {
        (a, b): (first[a] * second[a, b]).item()
        for a in range(SMALL_VOCAB)
        for b in range(SMALL_VOCAB)
    }


class IIDDrafter:
    """Draws children i.i.d. from a fixed random q (V-MSS): 3 at the root, 2 below each."""

    name = "iid-test"
    default_budget = 9
    runs_draft_model = False

    def __init__(self):
        self.q = torch.softmax(
            torch.randn(SMALL_VOCAB, generator=torch.Generator().manual_seed(5)) * 2, -1
        )

    def propose(self, context, budget):
        return TokenTree.root(context[-1])

    def propose_sampled(self, context, budget, params, generator):
        q = warp(self.q.log()[None], params)[0]
        first = torch.multinomial(q, 3, replacement=True, generator=generator).tolist()
        paths = [
            [a, b]
            for a in first
            for b in torch.multinomial(q, 2, replacement=True, generator=generator).tolist()
        ]
        tokens, parents = [context[-1]], [-1]
        for a in first:  # duplicates stay separate siblings: V-MSS tries each draw
            parents.append(0)
            tokens.append(a)
        for i, (a, b) in enumerate(paths):
            parents.append(1 + i // 2)
            tokens.append(b)
        tree = TokenTree(tuple(tokens), tuple(parents))
        return Draft(tree, Draw.IID, q.expand(len(tree), SMALL_VOCAB).clone())

    def observe(self, tree, logits, acceptance):
        pass

    def reset(self):
        pass


def sample_pairs(model, prompt, drafter, n, rule=None, seed0=0):
    # couple_seeded off: seeded requests go through each draft's own rule (V-RRS, V-MSS, V-det),
    # the subject here
    engine = Engine(
        HFBackend(model), drafter, couple_seeded=False, **({} if rule is None else {"rule": rule})
    )
    counts, accepted = Counter(), 0
    for i in range(n):
        stats = GenerationStats()
        tokens = [
            t
            for step in engine.run(prompt, DecodeRequest(seed=seed0 + i, **REQUEST), stats)
            for t in step
        ]
        counts[tuple(tokens[:2])] += 1
        accepted += sum(k * v for k, v in stats.accepted_hist.items())
    return counts, accepted


def drafters():
    """Every registered drafter (draft-model ones with the target itself as the draft: many
    acceptances)."""
    model = tiny_model("llama", seed=3, vocab_size=SMALL_VOCAB, initializer_range=0.3)
    options = {"chain": {"confidence": 0.0}}
    names = [name for name, spec in DRAFTERS.items() if not spec.reads_target]  # test_head.py
    return [make_drafter(name, model, **options.get(name, {})) for name in names] + [IIDDrafter()]


@pytest.mark.parametrize("drafter", drafters(), ids=lambda d: d.name)
def test_two_token_law_matches_the_target(model, prompt, drafter):
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    counts, accepted = sample_pairs(model, prompt, drafter, SAMPLES)
    assert sum(counts.values()) == SAMPLES
    assert fits(counts, expected, SAMPLES), sorted(counts.items())
    if drafter.name != "none":
        assert accepted > 0.05 * SAMPLES  # drafts were really tried and often accepted


def accept_first_child(draft, logits, params, generator):
    """A lossy rule: always take the first child, then sample the bonus from p."""
    tree = draft.tree
    nodes = [0] + ([tree.children[0][0]] if tree.children[0] else [])
    bonus = int(torch.multinomial(warp(logits, params)[nodes[-1]], 1, generator=generator))
    return Acceptance(tuple(nodes), bonus)


@pytest.mark.parametrize("name", ["pld", "stand"])
def test_negative_control_a_biased_rule_fails_the_same_test(model, prompt, name):
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    counts, _ = sample_pairs(model, prompt, make_drafter(name), SAMPLES, rule=accept_first_child)
    assert not fits(counts, expected, SAMPLES)


@pytest.mark.parametrize("name", ["pld", "stand"])
def test_same_seed_same_tokens(model, prompt, name):
    def once(seed):
        engine = Engine(HFBackend(model), make_drafter(name), couple_seeded=False)
        request = DecodeRequest(max_new_tokens=24, temperature=1.0, seed=seed)
        return [t for step in engine.run(prompt, request, GenerationStats()) for t in step]

    assert once(11) == once(11)
    assert once(11) != once(12)
