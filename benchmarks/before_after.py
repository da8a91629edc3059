"""One benchmark at two commits on the same machine, interleaved: did a change slow tokentree down?

Each commit's source is checked out in a git worktree; processes alternate (before, after, before,
after, ...), each a ``tokentree bench`` of ``tt:auto`` against ``llama-decode`` on the same prompts
(fresh_runs.py's protocol: greedy, categories interleaved, state carried within a process). The
ratio tt:auto / llama-decode per process cancels most of the machine's drift; the report gives
each commit's ratios, their medians and the after/before quotient.

    python benchmarks/before_after.py --before 0ac6e09 --after HEAD --runs 2 --limit 1 \
        --out benchmarks/results/cpu-before-after-41
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fresh_runs import read_records, summarize, write_run_json

ROOT = Path(__file__).resolve().parents[1]


def short_commit(rev: str) -> str:
    command = ["git", "-C", str(ROOT), "rev-parse", "--short", rev]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def worktree(commit: str, where: Path) -> Path:
    """A checkout of ``commit`` at ``where`` (made once)."""
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(where),
                        commit], check=True)  # fmt: skip
    return where


def bench(source: Path, out: Path, args: argparse.Namespace) -> None:
    command = [sys.executable, "-m", "tokentree.cli", "bench", "--backend", "llamacpp"]
    command += ["--prompts", str(ROOT / args.prompts), "--methods", "llama-decode,tt:auto"]
    command += ["--max-new-tokens", str(args.max_new_tokens), "--out", str(out)]
    command += ["--limit", str(args.limit)] if args.limit else []
    print("$ PYTHONPATH=" + str(source / "src"), shlex.join(command), file=sys.stderr, flush=True)
    env = os.environ | {"PYTHONPATH": str(source / "src")}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--prompts", default="benchmarks/prompts/mixed24.jsonl")
    parser.add_argument("--runs", type=int, default=2, help="processes per commit")
    parser.add_argument("--limit", type=int, default=1, help="prompts per category")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    commits = {}
    for label in ("before", "after"):
        rev = getattr(args, label)
        commits[label] = short_commit(rev)
    checkouts = Path(tempfile.mkdtemp(prefix="tokentree-before-after-"))
    trees = {label: worktree(c, checkouts / c) for label, c in commits.items()}
    for run in range(args.runs):
        for label in ("before", "after"):
            bench(trees[label], out / label / f"run-{run}", args)
    result = {}
    for label, commit in commits.items():
        runs = [read_records(p) for p in sorted((out / label).glob("run-*/records.jsonl"))]
        overall = summarize(runs, "llama-decode", "tt:auto")["overall"]
        base = [r["tokens_per_s"] for rs in runs for r in rs if r["method"] == "llama-decode"]
        result[label] = {
            "commit": commit,
            "ratios": [overall[i] for i in sorted(overall)],
            "median": statistics.median(overall.values()),
            "llama_decode_tokens_per_s": statistics.median(base),
        }
    result["after_over_before"] = result["after"]["median"] / result["before"]["median"]
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result, args))
    write_run_json(out, args)
    for tree in trees.values():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
    print((out / "results.md").read_text())
    return 0


def markdown(result: dict, args: argparse.Namespace) -> str:
    rows = [
        f"| {label} ({r['commit']}) | " + ", ".join(f"{x:.3f}x" for x in r["ratios"])
        + f" | {r['median']:.3f}x | {r['llama_decode_tokens_per_s']:.2f} |"
        for label, r in ((k, result[k]) for k in ("before", "after"))
    ]  # fmt: skip
    return "\n".join([
        "# tt:auto against llama-decode, before and after, interleaved processes",
        "",
        f"Prompts `{args.prompts}` ({args.limit} per category), greedy, {args.max_new_tokens} new "
        f"tokens, llama.cpp backend, {args.runs} processes per commit alternating before/after.",
        "",
        "| commit | ratio per process | median | llama-decode tokens/s (median) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"after / before: **{result['after_over_before']:.3f}**",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
