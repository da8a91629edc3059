"""End to end: tokentree greedy output == transformers greedy generate, for every drafter."""

import random

import pytest
import torch
from conftest import VOCAB, tiny_model

from tokentree.backends.hf import HFBackend
from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.drafters.pld import PLDConfig, PromptLookupDrafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree


@torch.inference_mode()
def hf_greedy(model, prompt, max_new_tokens):
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def run_engine(model, drafter, prompt, max_new_tokens, budget=8, eos_ids=frozenset()):
    engine = Engine(HFBackend(model), drafter, frozenset(eos_ids))
    stats = GenerationStats()
    tokens = [
        t
        for step in engine.run(
            prompt, DecodeRequest(max_new_tokens=max_new_tokens, budget=budget), stats
        )
        for t in step
    ]
    return tokens, stats


class OracleMixDrafter:
    """Knows the true greedy continuation; proposes a tree whose correct prefix has a random length,
    followed by wrong tokens, with wrong sibling branches, so steps accept all, some or nothing."""

    name = "oracle-mix"
    runs_draft_model = False

    def __init__(self, prompt_len, truth, seed):
        self.prompt_len, self.truth, self.rng = prompt_len, truth, random.Random(seed)
        self.outcomes = {"full": 0, "partial": 0, "zero": 0}

    def propose(self, context, budget):
        done = len(context) - self.prompt_len
        future = self.truth[done : done + budget]
        depth = min(len(future), self.rng.randint(1, max(1, budget // 2)))
        correct = self.rng.randint(0, depth)
        path = list(future[:correct])
        while len(path) < depth:  # wrong tokens after the correct prefix
            path.append((future[len(path)] + 1 + self.rng.randrange(VOCAB - 4)) % VOCAB)
        wrong = [(t + 7) % VOCAB for t in path[:2]]  # a sibling branch that starts wrong
        tree = TokenTree.from_paths(context[-1], [path, wrong])
        return tree.subset(range(1, min(len(tree), budget + 1)))

    def observe(self, tree, logits, acceptance):
        depth = max(tree.depths)
        if depth == 0:
            return
        kind = (
            "zero"
            if acceptance.accepted == 0
            else "full"
            if acceptance.accepted == depth
            else "partial"
        )
        self.outcomes[kind] += 1

    def reset(self):
        pass


@pytest.mark.parametrize("seed", range(6))
def test_every_drafter_matches_hf_generate(family, seed):
    model = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    # repetitive prompts so PLD finds matches
    base = torch.randint(
        3, VOCAB, (int(torch.randint(3, 8, (1,), generator=gen)),), generator=gen
    ).tolist()
    prompt = (base * 4)[: int(torch.randint(2, 25, (1,), generator=gen))]
    max_new = int(torch.randint(1, 40, (1,), generator=gen))
    expected = hf_greedy(model, prompt, max_new)
    draft = tiny_model(family, seed=seed + 100)  # for the draft-model drafters
    drafters = [make_drafter(name, draft) for name in DRAFTERS if not DRAFTERS[name].reads_target]
    drafters += [PromptLookupDrafter(PLDConfig(matches=3))]
    for drafter in drafters:
        for budget in (3, 12):
            got, stats = run_engine(model, drafter, prompt, max_new, budget=budget)
            assert got == expected, (drafter.name, budget)
            assert stats.new_tokens == max_new


def test_oracle_mix_drafter_partial_full_and_zero_acceptance(family):
    outcomes = {"full": 0, "partial": 0, "zero": 0}
    for seed in range(4):
        model = tiny_model(family, seed=seed)
        prompt = torch.randint(
            3, VOCAB, (5 + seed,), generator=torch.Generator().manual_seed(seed)
        ).tolist()
        expected = hf_greedy(model, prompt, 48)
        drafter = OracleMixDrafter(len(prompt), expected, seed)
        got, stats = run_engine(model, drafter, prompt, 48, budget=10)
        assert got == expected
        assert stats.steps < 48  # some drafted tokens were accepted
        for key in outcomes:
            outcomes[key] += drafter.outcomes[key]
    assert all(count > 0 for count in outcomes.values()), outcomes


def test_pld_accepts_on_repetitive_text():
    model = tiny_model("llama", seed=3)
    prompt = list(range(10, 30)) * 3
    expected = hf_greedy(model, prompt, 30)
    got, stats = run_engine(model, PromptLookupDrafter(), prompt, 30)
    assert got == expected
    assert stats.drafted_tokens > 0
