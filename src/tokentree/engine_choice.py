"""``--backend auto`` on a CPU: run the model on the engine that is fastest *on this machine*.

Which CPU engine wins depends on the machine far more than on the model: measured 2026-12-06
for the 1.5B target, llama.cpp decodes a token in 96 ms and a 16-node tree in 4.3x that on an
Intel Xeon with AVX-512, where OpenVINO int4 takes 76 ms and 2.3x; on an AMD EPYC with AVX2 only,
llama.cpp takes 50 ms and 11x, OpenVINO 88 ms and 4.6x. So when both engines are installed, each
is loaded once, its verify cost t(n) measured on a few tree sizes, and the one with the lower
expected time per token wins (see :func:`seconds_per_token`). The choice is cached per model,
machine and engine versions; ``--stats`` prints it with its reason.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from .files import cache_dir, write_atomically
from .models import LoadedModel
from .planner import measure_profile

CHOICE_SIZES = (1, 2, 4, 8, 16)  # tree sizes timed to compare engines (root included)
CHOICE_CONTEXT = 256  # cached tokens while timing
DRAFT_RATE = 0.6  # the planner's prior chance that a drafted token is accepted, given its parent


def seconds_per_token(
    sizes: Sequence[int], seconds: Sequence[float], rate: float = DRAFT_RATE
) -> tuple[float, int]:
    """(expected seconds per token, tree size) of an engine's best step: a tree of n nodes
    verified in ``seconds[i]`` yields on average ``1 + rate + ... + rate**(n-1)`` tokens when its
    drafts form a chain accepted at ``rate`` per token (trees do better; this ranks engines, it
    does not plan steps). n = 1 is plain decoding. Pure."""
    best = min((t / sum(rate**k for k in range(n)), n) for n, t in zip(sizes, seconds, strict=True))
    return best


@dataclass(frozen=True)
class EngineTiming:
    """One engine's measured verify cost on this machine."""

    engine: str  # "llamacpp" or "openvino"
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    @property
    def per_token(self) -> tuple[float, int]:
        return seconds_per_token(self.sizes, self.seconds)

    def describe(self) -> str:
        per_token, n = self.per_token
        how = "plainly" if n == 1 else f"with {n}-node trees"
        plain = self.seconds[0] * 1000
        return f"{self.engine} {plain:.0f} ms a token, {per_token * 1000:.0f} ms {how}"


@dataclass(frozen=True)
class EngineChoice:
    """The engine chosen and why."""

    engine: str
    timings: tuple[EngineTiming, ...]
    measured_at: float

    @property
    def reason(self) -> str:
        others = "; ".join(t.describe() for t in self.timings)
        when = time.strftime("%Y-%m-%d", time.localtime(self.measured_at))
        return f"fastest measured on this machine ({others}; measured {when})"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineChoice:
        data = json.loads(text)
        timings = tuple(
            EngineTiming(t["engine"], tuple(t["sizes"]), tuple(t["seconds"]))
            for t in data["timings"]
        )
        return cls(data["engine"], timings, float(data["measured_at"]))


def choice_key(source: str, threads: int, ov_weights: str) -> str:
    """What a choice depends on: the model, this machine, the thread count and engine versions."""
    versions = [_version(p) for p in ("llama-cpp-python", "openvino")]
    text = f"{source}|{platform.processor()}|{os.cpu_count()}|{threads}|{ov_weights}|{versions}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def choose_engine(
    key: str, loaders: dict[str, Callable[[], LoadedModel]]
) -> tuple[LoadedModel, EngineChoice]:
    """The fastest engine's loaded model and the choice: read from the cache when this key was
    decided before (only the winner is loaded), else every engine is loaded and timed once."""
    path = cache_dir() / "engines" / f"{key}.json"
    try:
        choice = EngineChoice.from_json(path.read_text())
        if choice.engine in loaders:
            return loaders[choice.engine](), choice
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not decided yet, or an unreadable file: decide again
    print(
        f"tokentree: timing {', '.join(loaders)} once to pick the faster engine here "
        f"(cached in {path.parent})",
        file=sys.stderr,
    )
    timings, loaded = [], {}
    for engine, load in loaders.items():
        model = load()
        timings.append(_time_engine(engine, model))
        loaded[engine] = model
    winner = min(timings, key=lambda t: t.per_token[0]).engine
    choice = EngineChoice(winner, tuple(timings), time.time())
    write_atomically(path, choice.to_json().encode())
    return loaded[winner], choice


def _time_engine(engine: str, model: LoadedModel) -> EngineTiming:
    from .backends import make_backend

    backend = make_backend(model.model)
    profile = measure_profile(backend, CHOICE_SIZES, CHOICE_CONTEXT, repeats=2)
    return EngineTiming(engine, profile.sizes, profile.seconds)
