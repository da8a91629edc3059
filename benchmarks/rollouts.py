"""Rollouts of one prompt, five ways, on the same prompts in one process, interleaved: wall time to
all trajectories and the tokens generated.

(a) ``sequential``: the trajectories one after another, plain decoding (tt:none);
(b) ``batched``: ``n`` of them in one batch, plain (``generate_batch(n=...)``, drafter none);
(c) ``batched-spec``: the same with the ``auto`` drafter;
(d) ``segments``: ``Segments(2, segment_tokens, depth)`` with ``auto`` (branches share prefixes);
(e) ``uncertain``: ``Uncertain(threshold, 2, lookahead, n, roots=roots)`` with ``auto`` (LATR);
(f) ``segments-plain``: the tree of (d) with drafter none.

Forwards: target forwards to all trajectories (sequential: the sum of each sample's steps;
batched: the longest sample's steps; trees: the rollout's steps), so tokens per forward shows what
the trees and the drafts saved.

Prompts: Spec-Bench math_reasoning and HumanEval (``--per-suite`` each), temperature 1.0, a seed
per prompt.

    python benchmarks/rollouts.py --per-suite 1 --n 16 --max-new-tokens 96 --segment-tokens 16 \
        --depth 3 --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fresh_runs import write_run_json

import tokentree
from tokentree.api import Segments, Uncertain
from tokentree.bench.suites import load_suite
from tokentree.request import Request

ROOT = Path(__file__).resolve().parents[1]


def prompts(per_suite: int) -> list[tuple[str, str]]:
    math = [p for p in load_suite("spec-bench") if p.category == "math_reasoning"][:per_suite]
    code = load_suite("humaneval")[:per_suite]
    return [(p.id, p.turns[0]) for pair in zip(math, code) for p in pair]


def run_way(gen, way: str, prompt: str, request: Request, args) -> dict:
    """One way's rollout of ``prompt``: seconds, trajectories and generated tokens."""
    started = time.perf_counter()
    if way == "sequential":
        outs = [gen.generate(prompt, request.replace(seed=request.seed + i, drafter="none"))
                for i in range(args.n)]  # fmt: skip
        forwards = sum(o.stats.steps for o in outs)
    elif way in ("batched", "batched-spec"):
        drafter = "none" if way == "batched" else "auto"
        outs = gen.generate_batch([prompt], request.replace(drafter=drafter), n=args.n)
        forwards = max(o.stats.steps for o in outs)
    else:
        tree = gen.rollouts(prompt, policy_of(way, args), request.replace(
            drafter="none" if way == "segments-plain" else "auto"))  # fmt: skip
        return {"way": way, "seconds": time.perf_counter() - started, "tokens": tree.new_tokens,
                "trajectories": len(tree.trajectories), "forwards": tree.forwards}  # fmt: skip
    return {"way": way, "seconds": time.perf_counter() - started, "forwards": forwards,
            "tokens": sum(len(o.token_ids) for o in outs), "trajectories": len(outs)}  # fmt: skip


def policy_of(way: str, args):
    if way == "uncertain":
        return Uncertain(args.threshold, 2, args.lookahead, args.n, roots=args.roots)
    return Segments(2, args.segment_tokens, args.depth, max_leaves=args.n)


WAYS = ("sequential", "batched", "batched-spec", "segments", "uncertain", "segments-plain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-suite", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--segment-tokens", type=int, default=12)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.3, help="uncertain: margin")
    parser.add_argument("--lookahead", type=int, default=8, help="uncertain")
    parser.add_argument("--roots", type=int, default=2, help="uncertain: branches at the start")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, args)
    commit = json.loads((out / "run.json").read_text())["commit"]
    gen = tokentree.load(backend=args.backend)
    gen.generate("Say hello.", max_new_tokens=8)  # warm-up (profile, first forwards)
    rows = []
    for index, (pid, prompt) in enumerate(prompts(args.per_suite)):
        request = Request(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=index)
        order = WAYS[index % len(WAYS) :] + WAYS[: index % len(WAYS)]  # rotate: drift hits all
        for way in order:
            rows.append({"prompt_id": pid} | run_way(gen, way, prompt, request, args))
            print(json.dumps(rows[-1]), flush=True)
    (out / "records.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_report(rows, args, commit, out)
    return 0


def write_report(rows: list[dict], args, commit: str, out: Path) -> None:
    base = {r["prompt_id"]: r["seconds"] for r in rows if r["way"] == "sequential"}
    lines = [
        f"Commit {commit}; `python benchmarks/rollouts.py --per-suite {args.per_suite} --n "
        f"{args.n} --max-new-tokens {args.max_new_tokens} --segment-tokens "
        f"{args.segment_tokens} --depth {args.depth} --threshold {args.threshold} --lookahead "
        f"{args.lookahead} --roots {args.roots} --backend {args.backend} --out {out}`",
        "",
        "| way | median s per prompt | speed vs sequential (median, min-max) | tokens generated "
        "| trajectories | tokens per forward |",
        "|---|---|---|---|---|---|",
    ]
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        ratios = [base[r["prompt_id"]] / r["seconds"] for r in mine]
        lines.append(
            f"| {way} | {statistics.median(r['seconds'] for r in mine):.1f} | "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
            f"{sum(r['tokens'] for r in mine)} | {sum(r['trajectories'] for r in mine)} | "
            f"{sum(r['tokens'] for r in mine) / sum(r['forwards'] for r in mine):.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
