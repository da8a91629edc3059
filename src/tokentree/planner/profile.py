"""The target's verify-cost profile t(n): measured once per model, dtype, device and threads
(the fastest of repeats, disordered sizes timed again, the rest pooled isotonically), kept as a
JSON file under the cache directory."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..backends.base import Backend
from ..files import cache_dir, write_atomically
from ..tree import TokenTree

PROFILE_SIZES = tuple(range(1, 33)) + (
    48,
    64,
    96,
    128,
)  # every size up to 32: CPU curves are not smooth
PROFILE_VERSION = 2
PROFILE_CONTEXT = 256  # cached tokens of the default profile
LONG_PROFILE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)  # sizes measured at longer contexts


@dataclass(frozen=True)
class CostProfile:
    """Verify latency of trees of ``sizes[i]`` nodes (root included): ``seconds[i]``, at
    ``context_len``; ``longer``: the same measured at longer contexts (ascending), so that
    :meth:`seconds_at` follows the context a request has reached."""

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    context_len: int
    key: str = ""
    measured_at: float = 0.0
    longer: tuple[CostProfile, ...] = ()

    def __post_init__(self) -> None:
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError("profile sizes must be ascending, distinct and start at 1")
        if len(self.seconds) != len(self.sizes) or min(self.seconds) <= 0:
            raise ValueError("profile needs one positive time per size")
        contexts = [self.context_len] + [p.context_len for p in self.longer]
        if contexts != sorted(set(contexts)) or any(p.longer for p in self.longer):
            raise ValueError("longer profiles must be at ascending, longer contexts")

    def ratio(self, n: int) -> float:
        """t(n) / t(1), linear between measured sizes and beyond the last two."""
        sizes, secs = self.sizes, self.seconds
        if n <= 1 or len(sizes) == 1:
            return 1.0 if n <= 1 else secs[-1] / secs[0]
        i = next((k for k in range(1, len(sizes)) if sizes[k] >= n), len(sizes) - 1)
        lo, hi = i - 1, i
        slope = (secs[hi] - secs[lo]) / (sizes[hi] - sizes[lo])
        return max(secs[lo] + slope * (n - sizes[lo]), secs[0]) / secs[0]

    def seconds_at(self, n: int, context: int) -> float:
        """t(n) after ``context`` cached tokens: linear between the measured contexts, the
        shortest's below it, and beyond the longest along the last two's slope (never falling:
        attention grows with the context)."""
        curves = (self, *self.longer)
        points = [(p.context_len, p.seconds[0] * p.ratio(n)) for p in curves]
        if len(points) == 1 or context <= points[0][0]:
            return points[0][1]
        i = next((k for k in range(1, len(points)) if points[k][0] >= context), len(points) - 1)
        (c0, t0), (c1, t1) = points[i - 1], points[i]
        slope = (t1 - t0) / (c1 - c0)
        if context > c1:
            return t1 + max(slope, 0.0) * (context - c1)
        return t0 + slope * (context - c0)

    def to_dict(self) -> dict:
        return {"version": PROFILE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> CostProfile:
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')} is not {PROFILE_VERSION}")
        return cls(
            tuple(data["sizes"]),
            tuple(data["seconds"]),
            int(data["context_len"]),
            data.get("key", ""),
            float(data.get("measured_at", 0.0)),
            tuple(cls.from_dict({"version": PROFILE_VERSION, **p}) for p in data.get("longer", ())),
        )


def probe_tree(n: int, vocab_size: int, seed: int = 0, max_leaves: int | None = None) -> TokenTree:
    """A random tree of ``n`` nodes shaped like real drafts (mostly deep, some branching).

    With ``max_leaves`` a node that would open one leaf too many extends the previous node instead.
    """
    gen = torch.Generator().manual_seed(seed + n)
    parents, has_child, leaves = [-1], [False] * n, 1
    for i in range(1, n):
        parent = max(0, i - 1 - int(torch.randint(0, 3, (), generator=gen)))
        if has_child[parent] and max_leaves is not None and leaves >= max_leaves:
            parent = i - 1  # the newest node is always a leaf: extending it keeps the count
        leaves += has_child[parent]
        has_child[parent] = True
        parents.append(parent)
    tokens = torch.randint(3, min(1000, vocab_size), (n,), generator=gen).tolist()
    return TokenTree(tuple(tokens), tuple(parents))


def padded_profile(profile: CostProfile, pad: Callable[[int], int]) -> CostProfile:
    """The profile of a backend that runs a tree of n nodes as ``pad(n)`` rows, measured at
    padded sizes: every n up to the largest measured size costs what ``pad(n)`` cost (a step
    curve, where interpolating between the measured sizes would price 9-15 nodes below 16)."""

    def spread(curve: CostProfile) -> CostProfile:
        cost = dict(zip(curve.sizes, curve.seconds))
        sizes = tuple(n for n in range(1, curve.sizes[-1] + 1) if pad(n) in cost)
        seconds = tuple(cost[pad(n)] for n in sizes)
        return replace(curve, sizes=sizes, seconds=seconds)

    return replace(spread(profile), longer=tuple(spread(curve) for curve in profile.longer))


def measure_profile(
    backend: Backend,
    sizes: Sequence[int] = PROFILE_SIZES,
    context_len: int = PROFILE_CONTEXT,
    repeats: int = 3,
    key: str = "",
    progress=None,
    chain: bool = False,
    longer: Sequence[int] = (),
) -> CostProfile:
    """Time ``backend.verify`` for each tree size after a ``context_len``-token prefix (median of
    repeats); trees shaped like real drafts, or single chains with ``chain``. ``longer``: also
    after these longer contexts (at LONG_PROFILE_SIZES), as the profile's ``longer`` curves."""
    seconds = _verify_times(backend, sizes, context_len, repeats, progress, chain)
    curves = tuple(
        CostProfile(
            LONG_PROFILE_SIZES,
            tuple(_verify_times(backend, LONG_PROFILE_SIZES, length, repeats, progress, chain)),
            length,
        )
        for length in longer
    )
    return CostProfile(tuple(sizes), tuple(seconds), context_len, key, time.time(), curves)


NOISE = 1.15  # a tree timed this much dearer than a larger one was disturbed: timed again
REMEASURE_ROUNDS = 2


def _verify_times(
    backend: Backend, sizes: Sequence[int], context_len: int, repeats: int, progress, chain: bool
) -> list[float]:
    """t(n) for each size: the fastest of ``repeats`` timings (interference only ever slows a
    verify down); sizes timed dearer than a larger tree (:func:`disturbed`) are timed again, up to
    REMEASURE_ROUNDS times, and what disorder remains is smoothed by :func:`isotonic`."""
    context = torch.randint(
        3, min(1000, backend.vocab_size), (context_len,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    backend.reset()
    backend.prefill(context)
    seconds = []
    for n in sizes:
        seconds.append(_time_verify(backend, context, n, repeats, chain))
        if progress is not None:
            progress(n, context_len, seconds[-1])
    for _ in range(REMEASURE_ROUNDS):
        for i in disturbed(seconds):
            seconds[i] = min(seconds[i], _time_verify(backend, context, sizes[i], repeats, chain))
    backend.reset()
    return isotonic(seconds)


def _time_verify(backend: Backend, context: list[int], n: int, repeats: int, chain: bool) -> float:
    """The fastest of ``repeats`` verifies of an n-node probe tree after ``context`` (one more
    run first warms up); the backend is back at ``context`` after."""
    tree = probe_tree(n, backend.vocab_size, max_leaves=1 if chain else backend.max_leaves)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.verify(tree)
        backend.commit((0,))
        times.append(time.perf_counter() - start)
        backend.prefill(context)  # back to the prefix
    return min(times[1:])


def disturbed(seconds: Sequence[float]) -> list[int]:
    """Indices of timings more than NOISE times a later (larger) size's: a verify of more nodes
    is never cheaper, so these were slowed by something else."""
    later_min = math.inf
    out = []
    for i in range(len(seconds) - 1, -1, -1):
        if seconds[i] > NOISE * later_min:
            out.append(i)
        later_min = min(later_min, seconds[i])
    return sorted(out)


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent
    violators): what remains of timing disorder, averaged away."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def profile_key(source: str, precision: str, device: str) -> str:
    """What a profile depends on: model, precision (dtype or gguf), device, threads and torch
    version."""
    text = f"{source}|{precision}|{device}|{torch.get_num_threads()}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_path(key: str) -> Path:
    return cache_dir() / "profiles" / f"{key}.json"


def load_profile(key: str, max_age_days: float = 30.0) -> CostProfile | None:
    """The cached profile for ``key``, or None when missing, stale, unreadable or disordered
    (a larger tree timed cheaper than a smaller one beyond noise: measured under load, so the
    planner would chase its dips; measured again)."""
    path = profile_path(key)
    try:
        profile = CostProfile.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - profile.measured_at > max_age_days * 86400:
        return None
    if any(disturbed(curve.seconds) for curve in (profile, *profile.longer)):
        return None
    return profile


def save_profile(profile: CostProfile) -> Path:
    return write_atomically(
        profile_path(profile.key), (json.dumps(profile.to_dict(), indent=1) + "\n").encode()
    )
