"""Constrained speculative sampling end to end: the joint law of the first two sampled tokens is
the target's masked and renormalised law (chi-square against the exact law, every kind of draft
and acceptance rule); rows masked by the wrong state are caught by the same test."""

import re
from collections import Counter

import llguidance
import pytest
import torch
from chisquare import fits
from conftest import tiny_model
from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask
from test_sampling_end_to_end import IIDDrafter
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tokentree.backends.hf import HFBackend
from tokentree.constraints import Constraint, GrammarState, TokenGrammar, masked
from tokentree.drafters import make_drafter
from tokentree.engine import Engine
from tokentree.request import Request
from tokentree.sampling import warp
from tokentree.stats import GenerationStats

pytestmark = pytest.mark.slow  # minutes: CI runs it; pytest -m "not slow" skips it

SMALL_VOCAB = 16
SAMPLES = 1200
# the second token's legal set depends on the first
PATTERN = "a[b-f]|b[a-m]|c[ac]|[d-h][d-m]"
CONSTRAINT = Constraint.regex(PATTERN)
REQUEST = Request(max_new_tokens=2, temperature=0.8, top_p=0.95, budget=6, constraint=CONSTRAINT)


def small_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklm")}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, vocab_size=SMALL_VOCAB, initializer_range=0.3)


@pytest.fixture(scope="module")
def grammar():
    return TokenGrammar(small_tokenizer(), SMALL_VOCAB, [2])


PROMPT = [3, 4, 5, 3, 4, 5, 3]


def legal_row(grammar: TokenGrammar, prefix: list[int]) -> torch.Tensor:
    matcher = llguidance.LLMatcher(grammar.tokenizer, CONSTRAINT.grammar())
    assert matcher.consume_tokens(prefix) if prefix else True
    bits = allocate_token_bitmask(1, SMALL_VOCAB)
    fill_next_token_bitmask(matcher, bits, 0)
    return bits


@torch.inference_mode()
def exact_joint(model, grammar: TokenGrammar) -> dict[tuple[int, int], float]:
    """P(x1, x2) of plain sampling from the target masked by the grammar at each position."""
    params = REQUEST.sampling
    logits = model(torch.tensor([PROMPT])).logits[:, -1].float()
    first = warp(masked(logits, legal_row(grammar, [])), params)[0]
    joint = {}
    for a in range(SMALL_VOCAB):
        if first[a] == 0:
            continue
        logits = model(torch.tensor([PROMPT + [a]])).logits[:, -1].float()
        second = warp(masked(logits, legal_row(grammar, [a])), params)[0]
        joint |= {(a, b): (first[a] * second[b]).item() for b in range(SMALL_VOCAB)}
    return joint


class RootsRows(TokenGrammar):
    """A wrong engine (the negative control): every row also masked by the root's state, not only
    by its own path's (the output stays legal, its law does not)."""

    def start(self, constraint):
        state = super().start(constraint)
        state.__class__ = RootsRowsState
        return state


class RootsRowsState(GrammarState):
    def masks(self, tree):
        rows = super().masks(tree)
        rows[1:] &= rows[0]
        return rows


def sample_pairs(model, drafter, grammar, n):
    engine = Engine(HFBackend(model), drafter, frozenset({2}), couple_seeded=False, grammar=grammar)
    counts, accepted = Counter(), 0
    for i in range(n):
        stats = GenerationStats()
        request = REQUEST.replace(seed=i)
        tokens = [t for step in engine.run(PROMPT, request, stats) for t in step]
        counts[tuple(tokens[:2])] += 1
        accepted += sum(k * v for k, v in stats.accepted_hist.items())
    return counts, accepted


def drafters(model):
    return {
        "stand (V-RRS)": make_drafter("stand"),
        "pld (V-det)": make_drafter("pld"),
        "iid (V-MSS)": IIDDrafter(),
        "chain (block)": make_drafter("chain", model, confidence=0.0),
        "auto (hybrid)": make_drafter("auto"),
    }


@pytest.mark.parametrize("name", ["stand (V-RRS)", "pld (V-det)", "iid (V-MSS)", "chain (block)"])
def test_the_constrained_two_token_law_is_the_masked_targets(model, grammar, name):
    expected = exact_joint(model, grammar)
    assert all(legal_text(pair) for pair, p in expected.items() if p > 0)
    counts, accepted = sample_pairs(model, drafters(model)[name], grammar, SAMPLES)
    assert fits(counts, expected, SAMPLES), sorted(counts.items())
    assert accepted > 0.03 * SAMPLES  # drafts were tried and accepted


def test_negative_control_masking_rows_by_the_wrong_state_fails_the_same_test(model, grammar):
    expected = exact_joint(model, grammar)
    wrong = RootsRows(small_tokenizer(), SMALL_VOCAB, [2])
    counts, accepted = sample_pairs(model, make_drafter("stand"), wrong, SAMPLES)
    assert accepted > 0.03 * SAMPLES and not fits(counts, expected, SAMPLES)


def legal_text(pair: tuple[int, int]) -> bool:
    """The pair's text matches the constraint (checked with Python's re, not llguidance)."""
    text = "".join("abcdefghijklm"[t - 3] for t in pair)
    return re.fullmatch(PATTERN, text) is not None
