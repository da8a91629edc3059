"""``tokentree bench``: baselines and tokentree drafters on a prompt suite, in one process."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from .flags import csv
from .model_flags import add_model_arguments


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench", help="compare HF baselines and tokentree drafters on a prompt suite"
    )
    _suite_arguments(bench)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    bench.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1)"
    )
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument(
        "--methods",
        type=csv,
        default=None,
        help="comma-separated: hf, hf-assisted, hf-pld (hf backend), llama-decode (llama.cpp's own "
        "per-token decoding), llama, llama-pld (llama-cpp-python; llamacpp backend), "
        "tt:<drafter>[@budget] (default: the backend's plain and prompt-lookup baselines, "
        "tt:none, tt:pld)",
    )
    add_model_arguments(bench)
    bench.add_argument(
        "--out", default="bench-out", help="output directory (resumed when it exists)"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary, table and plots from the records in --out without running",
    )
    bench.set_defaults(run=run)


def _suite_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--suite",
        default="humaneval",
        help="spec-bench, humaneval, mt-bench, mixed (HumanEval and Spec-Bench interleaved by "
        "category, one process: a server's traffic) or agent (each HumanEval task as four turns "
        "that rework the earlier answer, ending in a JSON tool call) or long (RAG questions and "
        "articles to summarize among other documents, categories rag-4k .. summary-16k by size "
        "in tokens) (default humaneval)",
    )
    bench.add_argument("--prompts", help="a JSONL file in the Spec-Bench format instead of --suite")
    bench.add_argument(
        "--prompt-cache",
        action="store_true",
        help="a conversation's later turns reuse its cached prefix, as an agent's server would "
        "(llama.cpp backend only; default: every turn prefills)",
    )
    bench.add_argument(
        "--categories", type=csv, default=None, help="comma-separated categories (default all)"
    )
    bench.add_argument("--limit", type=int, default=None, help="at most N prompts per category")


def run(args: argparse.Namespace) -> int:
    from ..bench.runner import BenchConfig, run_bench

    fields = {f.name for f in dataclasses.fields(BenchConfig)} - {"command"}
    config = BenchConfig(
        **{k: getattr(args, k) for k in fields},
        command="tokentree " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    run_bench(config)
    print((Path(config.out) / "results.md").read_text())
    return 0
