"""A benchmark prompt (the unit every suite is made of)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question: user turns asked in order, each after the model's previous answer."""

    id: str
    category: str
    turns: tuple[str, ...]
