"""Sequoia's optimal static tree: a dynamic programme over the positional acceptance vector.

``vector[i]`` is the probability that the (i+1)-th sibling (drafted without replacement) is the one
accepted. Under Sequoia's positional assumption a node is accepted with the product of its rank
probabilities along the path, so the best tree of n nodes below the root and depth <= d maximises
that sum. Calibration files (``tokentree calibrate``) hold a measured vector per model pair.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import TokentreeError
from ..files import write_atomically

DEFAULT_VECTOR = (
    0.55,
    0.12,
    0.05,
    0.03,
    0.02,
    0.015,
    0.01,
    0.008,
)  # greedy-like, before calibration
CALIBRATION_VERSION = 1
NEG = float("-inf")


def optimal_tree(
    vector: tuple[float, ...], n: int, depth: int
) -> tuple[float, list[tuple[int, ...]]]:
    """(expected accepted tokens, rank paths in BFS order) of the best tree with n nodes below the
    root."""
    if n <= 0 or depth <= 0:
        return 0.0, []
    value, paths = _best(tuple(vector), n + 1, depth)
    return value, sorted(paths, key=lambda p: (len(p), p))


@lru_cache(maxsize=256)
def _best(
    vector: tuple[float, ...], size: int, depth: int
) -> tuple[float, tuple[tuple[int, ...], ...]]:
    """Best subtree of ``size`` nodes (its root included) and depth <= ``depth``: value below the
    root."""
    if size == 1:
        return 0.0, ()
    if depth == 0:
        return NEG, ()
    return _children(vector, size - 1, 0, depth)


@lru_cache(maxsize=None)
def _children(vector: tuple[float, ...], nodes: int, rank: int, depth: int) -> tuple[float, tuple]:
    """Spread ``nodes`` over children of rank >= ``rank``, each child's subtree depth <= depth -
    1."""
    if nodes == 0:
        return 0.0, ()
    if rank >= len(vector):
        return NEG, ()
    best, best_paths = NEG, ()
    for size in range(1, nodes + 1):
        sub_value, sub_paths = _best(vector, size, depth - 1)
        rest_value, rest_paths = _children(vector, nodes - size, rank + 1, depth)
        if sub_value == NEG or rest_value == NEG:
            continue
        value = vector[rank] * (1 + sub_value) + rest_value
        if value > best + 1e-12:
            mine = ((rank,),) + tuple((rank,) + p for p in sub_paths)
            best, best_paths = value, mine + rest_paths
    return best, best_paths


def tree_value(vector: tuple[float, ...], paths: list[tuple[int, ...]]) -> float:
    """Expected accepted tokens of a tree given as rank paths."""
    total = 0.0
    for path in paths:
        prob = 1.0
        for rank in path:
            prob *= vector[rank] if rank < len(vector) else 0.0
        total += prob
    return total


def check_vector(vector) -> tuple[float, ...]:
    vector = tuple(float(v) for v in vector)
    if not vector or any(not 0 <= v <= 1 for v in vector) or sum(vector) > 1 + 1e-6:
        raise ValueError("an acceptance vector needs entries in [0, 1] summing to at most 1")
    return vector


def save_calibration(path: str | Path, vector, target: str, draft: str, positions: int) -> None:
    data = {
        "version": CALIBRATION_VERSION,
        "target": target,
        "draft": draft,
        "positions": positions,
        "vector": list(check_vector(vector)),
    }
    write_atomically(path, (json.dumps(data, indent=1) + "\n").encode())


def load_calibration(path: str | Path) -> tuple[float, ...]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TokentreeError(
            f"no Sequoia calibration at {path} (make one with 'tokentree calibrate')"
        ) from None
    except (OSError, ValueError) as exc:
        raise TokentreeError(f"cannot read the Sequoia calibration {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
        raise TokentreeError(f"{path} is not a version-{CALIBRATION_VERSION} Sequoia calibration")
    try:
        return check_vector(data["vector"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TokentreeError(f"{path}: bad acceptance vector ({exc})") from None
