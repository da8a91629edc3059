"""Training text for a head, kept apart from every benchmark prompt.

The shipped prompt sets are benchmark data: ``tokentree bench`` takes the first prompts of each
category (HumanEval tasks in order). Training uses only prompts after the first
``BENCH_RESERVED`` of their category, so a benchmark of up to that many prompts per category
never sees training text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...bench.suites import BenchPrompt, load_suite
from ...errors import TokentreeError

BENCH_RESERVED = 20


def training_prompts() -> list[BenchPrompt]:
    """Spec-Bench and HumanEval prompts past the first ``BENCH_RESERVED`` of each category."""
    chosen, seen = [], {}
    for prompt in load_suite("spec-bench") + load_suite("humaneval"):
        seen[prompt.category] = seen.get(prompt.category, 0) + 1
        if seen[prompt.category] > BENCH_RESERVED:
            chosen.append(prompt)
    return chosen


def chat_text(tokenizer, user: str, answer: str = "") -> list[int]:
    """Token ids of a one-turn chat (the target's template when it has one), with ``answer``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer.encode(text + answer, add_special_tokens=False)
    return tokenizer.encode(user + "\n" + answer)


def corpus_documents(tokenizer, paths: Sequence[str], size: int = 512) -> list[list[int]]:
    """Local text files cut into documents of ``size`` tokens."""
    documents = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise TokentreeError(f"corpus file not found: {name}")
        try:
            ids = tokenizer.encode(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise TokentreeError(f"corpus file {name} is not UTF-8 text") from exc
        documents += [ids[i : i + size] for i in range(0, len(ids), size)]
    return documents
