"""Sampling with the head drafter: the joint law of the first two sampled tokens equals the
target's own (chi-square against the exact law, as for every other drafter in
test_sampling_end_to_end.py), with drafts really accepted."""

import pytest
from chisquare import fits
from conftest import train_tiny_head
from test_sampling_end_to_end import (  # noqa: F401  (fixtures)
    REQUEST,
    SAMPLES,
    exact_joint,
    model,
    prompt,
    sample_pairs,
)

from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest

pytestmark = pytest.mark.slow  # minutes: CI runs it; pytest -m "not slow" skips it


def test_eagle_samples_follow_the_target(model, prompt, tmp_path):  # noqa: F811
    out, _, _ = train_tiny_head(model, tmp_path)
    drafter = make_drafter("eagle", target_model=model, head=str(out))
    expected = exact_joint(model, prompt, DecodeRequest(**REQUEST).sampling)
    counts, accepted = sample_pairs(model, prompt, drafter, SAMPLES)
    assert sum(counts.values()) == SAMPLES
    assert fits(counts, expected, SAMPLES), sorted(counts.items())
    assert accepted > 0.05 * SAMPLES  # drafts were really tried and often accepted
