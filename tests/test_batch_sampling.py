"""Sampling with many sequences per forward (transformers, packed cache): every sequence of a batch
follows the target's law (chi-square of the first two tokens against the exact joint), samples of
one prompt decoded together are independent (the joint of two samples' first tokens is the product
of the marginals), and a biased rule run the same way is caught."""

from collections import Counter

import pytest
from chisquare import fits
from test_sampling_end_to_end import (  # noqa: F401  (fixtures)
    REQUEST,
    SMALL_VOCAB,
    accept_first_child,
    exact_joint,
    model,
    prompt,
)

from tokentree.backends.hf.batch import PackedBatch
from tokentree.batch import BatchEngine
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.stats import GenerationStats

pytestmark = pytest.mark.slow  # minutes: CI runs it; pytest -m "not slow" skips it

SAMPLES = 3000
WIDTH = 8  # samples of the prompt decoded together


def batch_samples(model, prompt, drafter, rule=None) -> list[list[int]]:  # noqa: F811
    """SAMPLES sampled answers, WIDTH at a time in one batch; sample i is seeded i and runs through
    its draft's own rule (couple_seeded off: V-RRS for STAND's sampled trees, V-det for PLD)."""
    target = PackedBatch(model, WIDTH)
    engine = Engine(
        target.lanes[0], drafter, couple_seeded=False, **({} if rule is None else {"rule": rule})
    )
    batch = BatchEngine(target, drafter, frozenset(), engine=engine)
    answers = []
    for first in range(0, SAMPLES, WIDTH):
        got = {
            batch.add(prompt, DecodeRequest(seed=first + i, **REQUEST), GenerationStats()): []
            for i in range(WIDTH)
        }
        while batch.runs:
            for slot, tokens in batch.step().items():
                got[slot] += tokens
        answers += [got[slot] for slot in sorted(got)]
    return answers


@pytest.mark.parametrize("name", ["stand", "pld"])
def test_every_sample_of_a_batch_follows_the_target_and_samples_are_independent(
    model,  # noqa: F811
    prompt,  # noqa: F811
    name,
):
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    answers = batch_samples(model, prompt, make_drafter(name))
    counts = Counter(tuple(a[:2]) for a in answers)
    assert fits(counts, expected, SAMPLES), sorted(counts.items())
    first = {a: sum(p for (x, _), p in expected.items() if x == a) for a in range(SMALL_VOCAB)}
    pairs = Counter(
        (answers[i][0], answers[i + 1][0]) for i in range(0, SAMPLES, 2)
    )  # neighbours in a batch
    product = {(a, b): first[a] * first[b] for a in first for b in first}
    assert fits(pairs, product, SAMPLES // 2), sorted(pairs.items())


def test_negative_control_a_biased_rule_in_a_batch_fails_the_same_test(model, prompt):  # noqa: F811
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    answers = batch_samples(model, prompt, make_drafter("pld"), rule=accept_first_child)
    assert not fits(Counter(tuple(a[:2]) for a in answers), expected, SAMPLES)
