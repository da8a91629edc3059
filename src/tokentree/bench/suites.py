"""Prompt suites shipped with tokentree (sources and licenses in data/SOURCES.md)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import TokentreeError
from .long import long_prompts
from .prompt import BenchPrompt

HUMANEVAL_INSTRUCTION = "Complete the following Python function:\n\n"
SUITE_FILES = {
    "spec-bench": ("spec_bench_questions.jsonl",),
    "mt-bench": ("mt_bench_questions.jsonl",),
    "humaneval": ("humaneval.jsonl",),
    "json": ("json_suite.jsonl",),  # JSON of given schemas and tool calls, decoded constrained
    "mixed": (
        "humaneval.jsonl",
        "spec_bench_questions.jsonl",
    ),  # code and chat interleaved, as a server sees them
}
# The agent suite: each HumanEval task as an agent loop that reworks its own earlier answer, turn by
# turn, and ends in a tool call carrying the code (what suffix decoding was built for).
AGENT_TURNS = (
    "Add type hints to every parameter and to the return value of your function. Reply with the "
    "complete "
    "code only.",
    "Rename the function to `solution`, keep everything else as it is, and add a one-line "
    "docstring. Reply with "
    "the complete code only.",
    'Save your final code with the tool `write_file`: reply with only the JSON object {"name": '
    '"write_file", '
    '"arguments": {"path": "solution.py", "content": "<the code as a JSON string>"}}.',
)
SUITES = (*SUITE_FILES, "agent", "long")

ALL = "overall"  # the category of every prompt together, in reports and plots


def _parse_record(record: dict, where: str) -> BenchPrompt:
    if "task_id" in record and "prompt" in record:  # HumanEval
        return BenchPrompt(
            str(record["task_id"]), "humaneval", (HUMANEVAL_INSTRUCTION + record["prompt"],)
        )
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
        raise TokentreeError(f'{where}: needs "turns": a non-empty list of non-empty strings')
    if "question_id" not in record:
        raise TokentreeError(f'{where}: needs "question_id"')
    schema, tools = record.get("schema"), record.get("tools") or []
    if schema is not None and not isinstance(schema, dict):
        raise TokentreeError(f'{where}: "schema" must be a JSON schema (an object)')
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise TokentreeError(f'{where}: "tools" must be a list of OpenAI tool definitions')
    return BenchPrompt(
        str(record["question_id"]),
        str(record.get("category", "default")),
        tuple(turns),
        schema,
        tuple(tools),
    )


def read_prompts(text: str, name: str) -> list[BenchPrompt]:
    """Parse JSONL in the Spec-Bench format ({"question_id", "category", "turns"}, optionally a
    "schema" or "tools" the reply must follow) or HumanEval's."""
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokentreeError(f"{name} line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise TokentreeError(f"{name} line {number}: expected a JSON object")
        prompts.append(_parse_record(record, f"{name} line {number}"))
    if not prompts:
        raise TokentreeError(f"{name}: no prompts found")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise TokentreeError(f"{name}: question ids are not unique")
    return prompts


def load_suite(suite: str | None = None, prompts_file: str | None = None) -> list[BenchPrompt]:
    """A shipped suite by name, or a user's JSONL file."""
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise TokentreeError(f"prompt file not found: {prompts_file}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TokentreeError(f"{prompts_file}: not UTF-8 text") from exc
        return read_prompts(text, prompts_file)
    if suite not in SUITES:
        raise TokentreeError(
            f"unknown suite '{suite}': choose {', '.join(SUITES)} or pass --prompts FILE"
        )
    if suite == "agent":
        return [
            BenchPrompt(f"agent/{p.id}", "agent", p.turns + AGENT_TURNS)
            for p in load_suite("humaneval")
        ]
    if suite == "long":
        spec = load_suite("spec-bench")
        return long_prompts(
            [p for p in spec if p.category == "rag"],
            [p for p in spec if p.category == "summarization"],
        )
    data = resources.files("tokentree.bench").joinpath("data")
    return [
        p
        for name in SUITE_FILES[suite]
        for p in read_prompts(data.joinpath(name).read_text(encoding="utf-8"), suite)
    ]


def select(
    prompts: list[BenchPrompt], categories: list[str] | None, limit: int | None
) -> list[BenchPrompt]:
    """Keep the given categories (all when None) and at most ``limit`` prompts per category."""
    known = sorted({p.category for p in prompts})
    if categories:
        unknown = set(categories) - set(known)
        if unknown:
            raise TokentreeError(f"unknown categories {sorted(unknown)}; this suite has {known}")
    chosen, per_category = [], {}
    for p in prompts:
        if categories and p.category not in categories:
            continue
        if limit is not None and per_category.get(p.category, 0) >= limit:
            continue
        per_category[p.category] = per_category.get(p.category, 0) + 1
        chosen.append(p)
    return chosen


def round_robin(prompts: list[BenchPrompt]) -> list[BenchPrompt]:
    """Reorder so categories alternate (first of each, then second of each, ...): a run stopped
    early still covers every category evenly."""
    rank: dict[str, int] = {}
    keyed = []
    for p in prompts:
        keyed.append((rank.get(p.category, 0), p))
        rank[p.category] = rank.get(p.category, 0) + 1
    categories = list(dict.fromkeys(p.category for p in prompts))
    return [p for _, p in sorted(keyed, key=lambda kp: (kp[0], categories.index(kp[1].category)))]
