"""A chi-square goodness-of-fit test without scipy (Wilson-Hilferty quantiles)."""

from __future__ import annotations

import math
from collections import Counter

Z = {1e-3: 3.0902, 1e-6: 4.7534}  # upper standard-normal quantiles


def chi_square(counts: Counter, expected: dict, n: int) -> tuple[float, int]:
    """(statistic, degrees of freedom) of ``counts`` (n samples) against probabilities ``expected``.

    Cells expected fewer than 5 times are pooled into one cell; outcomes absent from ``expected``
    (probability 0) fall into the pooled cell, so impossible outcomes raise the statistic.
    """
    big = {k for k, p in expected.items() if p * n >= 5}
    stat, cells = 0.0, 0
    for k in big:
        stat += (counts.get(k, 0) - n * expected[k]) ** 2 / (n * expected[k])
        cells += 1
    rest_expected = n * sum(p for k, p in expected.items() if k not in big)
    rest_seen = n - sum(counts.get(k, 0) for k in big)
    if rest_expected > 0:
        stat += (rest_seen - rest_expected) ** 2 / rest_expected
        cells += 1
    elif rest_seen:
        return math.inf, max(cells - 1, 1)
    return stat, max(cells - 1, 1)


def critical(dof: int, alpha: float = 1e-3) -> float:
    """Upper ``alpha`` quantile of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    c = 2 / (9 * dof)
    return dof * (1 - c + Z[alpha] * math.sqrt(c)) ** 3


def fits(counts: Counter, expected: dict, n: int, alpha: float = 1e-3) -> bool:
    stat, dof = chi_square(counts, expected, n)
    return stat < critical(dof, alpha)


def total_variation(counts: Counter, expected: dict, n: int) -> float:
    keys = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(k, 0) / n - expected.get(k, 0.0)) for k in keys)
