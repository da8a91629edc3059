"""The same bench run several times, each in a fresh process, and each request's ratio across them.

Issue 38's measurement: a mixed prompt set (categories interleaved, learning state carried from
request to request within a process), greedy, against llama.cpp's own per-token decoding on the
same file (`llama-decode`: llama_decode + argmax with tokentree's context settings), run
``--runs`` times in fresh processes. Reports per request the median ratio across runs and its
spread, tau and drafted tokens; per category and run the mean ratio; the run's own estimated
speedup beside the measured one; and the goals.

    python benchmarks/fresh_runs.py --prompts benchmarks/prompts/mixed24.jsonl --runs 3 \
        --out benchmarks/results/cpu-fresh-runs

``--report-only`` rebuilds the report from the runs' records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

BASELINE, METHOD = "llama-decode", "tt:auto"
GOALS = {"request median": 0.97, "category per run": 1.0, "code-edit": 1.8, "spread": 0.10}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default="benchmarks/prompts/mixed24.jsonl")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--method", default=METHOD)
    parser.add_argument("--target", help="a model path (default: the embedded target)")
    parser.add_argument("--limit", type=int, help="at most N prompts per category")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        for run in range(args.runs):
            bench = ["tokentree", "bench", "--backend", args.backend, "--prompts", args.prompts]
            bench += ["--methods", f"{args.baseline},{args.method}"]
            bench += ["--max-new-tokens", str(args.max_new_tokens)]
            bench += ["--out", str(out / f"run-{run}")]
            bench += ["--target", args.target] if args.target else []
            bench += ["--limit", str(args.limit)] if args.limit else []
            print("$", shlex.join(bench), file=sys.stderr, flush=True)
            subprocess.run(bench, check=True)
    runs = [read_records(path) for path in sorted(out.glob("run-*/records.jsonl"))]
    summary = summarize(runs, args.baseline, args.method)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(summary, args))
    plot(summary, out / "ratios.png")
    write_run_json(out, args)
    print((out / "results.md").read_text())
    return 0


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(runs: list[list[dict]], baseline: str, method: str) -> dict:
    """Per request: ratio per run (method tokens/s over baseline tokens/s), median, spread (max -
    min over the median), tau and drafted tokens per run, estimated speedups; per category and
    run: the mean ratio."""
    requests: dict[str, dict] = {}
    for index, records in enumerate(runs):
        by_key = {(r["prompt_id"], r["method"]): r for r in records}
        for (prompt, name), record in by_key.items():
            if name != method or (prompt, baseline) not in by_key:
                continue
            base = by_key[(prompt, baseline)]
            turn = record["turns"][0]
            entry = requests.setdefault(prompt, {"category": record["category"], "runs": {}})
            entry["runs"][index] = {
                "ratio": record["tokens_per_s"] / base["tokens_per_s"],
                "baseline_tokens_per_s": base["tokens_per_s"],
                "tau": turn.get("tokens_per_step"),
                "drafted": turn.get("drafted_tokens"),
                "estimated": turn.get("estimated_speedup"),
                "same_output": record["turns"][0]["token_ids"] == base["turns"][0]["token_ids"],
            }
    for entry in requests.values():
        ratios = [run["ratio"] for run in entry["runs"].values()]
        entry["median"] = statistics.median(ratios)
        entry["spread"] = (max(ratios) - min(ratios)) / entry["median"]
    categories: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for entry in requests.values():
        for index, run in entry["runs"].items():
            categories[entry["category"]][index].append(run["ratio"])
    per_category = {
        name: {index: statistics.mean(values) for index, values in sorted(by_run.items())}
        for name, by_run in sorted(categories.items())
    }
    overall = {
        index: statistics.mean(r["runs"][index]["ratio"] for r in requests.values())
        for index in range(len(runs))
    }
    return {"requests": requests, "categories": per_category, "overall": overall}


def goals(summary: dict) -> list[tuple[str, bool, str]]:
    requests, categories = summary["requests"], summary["categories"]
    worst = min(requests.items(), key=lambda kv: kv[1]["median"])
    per_run = [(name, i, value) for name, runs in categories.items() for i, value in runs.items()]
    worst_category = min(per_run, key=lambda item: item[2])
    widest = max(requests.items(), key=lambda kv: kv[1]["spread"])
    edits = categories.get("code-edit", {})
    return [
        (
            f"every request's median >= {GOALS['request median']}x",
            worst[1]["median"] >= GOALS["request median"],
            f"lowest {worst[1]['median']:.2f}x ({worst[0]})",
        ),
        (
            f"every category >= {GOALS['category per run']}x in every run",
            worst_category[2] >= GOALS["category per run"],
            f"lowest {worst_category[2]:.2f}x ({worst_category[0]}, run {worst_category[1]})",
        ),
        (
            f"code edits >= {GOALS['code-edit']}x",
            bool(edits) and min(edits.values()) >= GOALS["code-edit"],
            ", ".join(f"run {i}: {v:.2f}x" for i, v in edits.items()),
        ),
        (
            f"a request's spread across runs <= {GOALS['spread']:.0%}",
            widest[1]["spread"] <= GOALS["spread"],
            f"widest {widest[1]['spread']:.1%} ({widest[0]})",
        ),
    ]


def markdown(summary: dict, args: argparse.Namespace) -> str:
    runs = sorted(summary["overall"])
    lines = [
        f"# {args.method} against {args.baseline}, {len(runs)} fresh processes",
        "",
        f"Prompts `{args.prompts}` (categories interleaved, learning state carried within a "
        f"process), greedy, {args.max_new_tokens} new tokens, backend {args.backend}. Ratio = "
        f"{args.method} tokens/s over {args.baseline} tokens/s on the same prompt in the same "
        "process (whole request, prefill included); estimated = the run's own estimate against "
        "plain decoding (`--stats`).",
        "",
        "## Goals",
        "",
        *[
            f"- {'met' if ok else 'MISSED'}: {name}: {detail}"
            for name, ok, detail in goals(summary)
        ],
        "",
        "## Overall and per category (mean ratio per run)",
        "",
        "| category | " + " | ".join(f"run {i}" for i in runs) + " |",
        "|---|" + "---|" * len(runs),
        "| **overall** | " + " | ".join(f"**{summary['overall'][i]:.2f}x**" for i in runs) + " |",
    ]
    for name, by_run in summary["categories"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_run[i]:.2f}x" for i in runs) + " |")
    lines += [
        "",
        "## Per request",
        "",
        "| request | ratio per run | median | spread | tau per run | drafted per run | "
        "estimated per run | output = baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for prompt, entry in summary["requests"].items():
        per = [entry["runs"][i] for i in sorted(entry["runs"])]
        cells = [
            prompt,
            joined(per, "ratio", "{:.2f}"),
            f"{entry['median']:.2f}x",
            f"{entry['spread']:.1%}",
            joined(per, "tau", "{:.2f}"),
            joined(per, "drafted", "{}"),
            joined(per, "estimated", "{:.2f}"),
            str(all(r["same_output"] for r in per)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    base = [
        r["baseline_tokens_per_s"] for e in summary["requests"].values() for r in e["runs"].values()
    ]
    lines += [
        "",
        f"{args.baseline}: median {statistics.median(base):.2f} tokens/s over all requests and "
        f"runs (min {min(base):.2f}, max {max(base):.2f}).",
        "",
        "![ratios](ratios.png)",
        "",
    ]
    return "\n".join(lines)


def joined(runs: list[dict], key: str, form: str) -> str:
    return " / ".join("-" if run[key] is None else form.format(run[key]) for run in runs)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["requests"])
    fig, ax = plt.subplots(figsize=(max(8, 0.42 * len(names)), 4.2))
    for x, name in enumerate(names):
        ratios = [run["ratio"] for run in summary["requests"][name]["runs"].values()]
        ax.plot([x] * len(ratios), ratios, "o", color="tab:blue", alpha=0.6, ms=5)
        ax.plot([x - 0.3, x + 0.3], [summary["requests"][name]["median"]] * 2, color="black")
    ax.axhline(1.0, color="gray", lw=1)
    ax.axhline(GOALS["request median"], color="tab:red", lw=1, ls="--", label="0.97x")
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=8)
    ax.set_ylabel("tokens/s ratio to llama.cpp")
    ax.set_title("each request in each fresh process (dots) and its median (bar)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> str:
    """The CPU's model name and core count (Linux), else the platform's description."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line for line in lines if line.startswith("model name")).split(":", 1)[1]
        flags = next(line for line in lines if line.startswith("flags"))
        isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
        return f"{name.strip()}, {len(os.sched_getaffinity(0))} cores, {isa}"
    except (OSError, StopIteration):
        return platform.platform()


def write_run_json(out: Path, args: argparse.Namespace) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    status = ["git", "status", "--porcelain", "src"]
    dirty = bool(subprocess.run(status, capture_output=True, text=True).stdout)
    (out / "run.json").write_text(
        json.dumps(
            {
                "commit": commit + ("+dirty" if dirty else ""),
                "command": shlex.join(["python", *sys.argv]),
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
