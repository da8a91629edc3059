"""A benchmark prompt (the unit every suite is made of)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question: user turns asked in order, each after the model's previous answer.
    Structured prompts (the json suite) carry what the reply must be: JSON valid under ``schema``,
    or a call to one of ``tools`` (OpenAI tool definitions, rendered by the chat template)."""

    id: str
    category: str
    turns: tuple[str, ...]
    schema: dict | None = field(default=None, compare=False)
    tools: tuple[dict, ...] = field(default=(), compare=False)
