"""The blocked row reductions equal torch's own (argmax, top-k, the top of the softmax)."""

import pytest
import torch

from tokentree.reductions import BLOCK, row_argmax, top_k, top_probabilities

VOCABS = (
    151_936,
    49_152,
    16 * BLOCK,
    16 * BLOCK + 1,
    1000,
)  # Qwen2.5, SmolLM2, exact blocks, a 1-logit tail, tiny


def _rows(vocab: int, seed: int, ties: bool) -> torch.Tensor:
    rows = torch.randn(6, vocab, generator=torch.Generator().manual_seed(seed)) * 4
    return (
        rows.round() if ties else rows
    )  # rounded logits: many equal values, equal maxima across blocks


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("ties", [False, True])
def test_argmax_and_top_k_equal_torch(vocab, ties):
    for seed in range(5):
        rows = _rows(vocab, seed, ties)
        assert torch.equal(row_argmax(rows), rows.argmax(dim=-1))  # ties: the first index, as torch
        for k in (1, 10, 32):
            values, ids = top_k(rows, k)
            assert torch.equal(values, rows.topk(k, dim=-1).values)
            assert torch.equal(rows.gather(1, ids), values)  # the ids hold those values
            assert all(len(set(row)) == k for row in ids.tolist())  # k distinct tokens


def test_the_maximum_in_the_short_last_block_and_across_blocks():
    rows = torch.zeros(3, 16 * BLOCK + 5)
    rows[0, -1] = 9.0  # in the tail
    rows[1, 3 * BLOCK + 7] = rows[1, 9 * BLOCK] = 5.0  # a tie across blocks: the first index wins
    rows[2, :] = float("-inf")
    rows[2, 2 * BLOCK] = 0.0
    assert row_argmax(rows).tolist() == [16 * BLOCK + 4, 3 * BLOCK + 7, 2 * BLOCK]
    values, ids = top_k(rows, 2)
    assert ids[0, 0] == 16 * BLOCK + 4 and values[1].tolist() == [5.0, 5.0]
    assert set(ids[1].tolist()) == {3 * BLOCK + 7, 9 * BLOCK}
    assert values[2, 0] == 0.0 and values[2, 1] == float("-inf")


def test_rows_with_nan_or_inf_fall_back_to_torch():
    rows = torch.randn(2, 16 * BLOCK)
    rows[0, 100] = float("nan")
    rows[1, 200] = float("inf")
    assert torch.equal(row_argmax(rows), rows.argmax(dim=-1))


def test_top_probabilities_match_the_softmax():
    rows = _rows(151_936, 0, False)
    probs, ids = top_probabilities(rows, 10)
    softmax = torch.softmax(rows, dim=-1)
    expected, expected_ids = softmax.topk(10, dim=-1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(
        probs, expected, rtol=1e-4, atol=1e-6
    )  # float32: exp(x - lse) vs softmax
