"""What a plain step of tokentree's loop costs beyond llama.cpp's own step.

On prompts where nothing is drafted, interleaved ``--repeats`` times: llama.cpp's own greedy
decoding (llama_decode + argmax, the bench's `llama-decode`), tokentree with drafter `none` (the
loop alone: verify of the root, acceptance, commit, streaming) and with `auto` (the planner's
plain steps, their shadow candidates, the ledger). Reports tokens/s of each and the loop's time
per step outside the verify.

    python benchmarks/loop_overhead.py --prompts benchmarks/prompts/mixed24.jsonl \
        --ids qa-1,writing-1,translation-2 --out benchmarks/results/cpu-loop-overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fresh_runs import write_run_json

from tokentree.api import load
from tokentree.backends.llama_plain import plain_greedy


def timed_generate(gen, ids: list[int], drafter: str, tokens: int) -> dict:
    gen.backend.reset()
    start = time.perf_counter()
    out = gen.generate(ids, max_new_tokens=tokens, drafter=drafter)
    wall = time.perf_counter() - start
    s = out.stats
    steps = max(1, s.steps - 1)  # the first step also forwards the prompt's tail
    outside = s.total_s - s.prefill_s - s.verify_s
    return {
        "tokens_per_s": len(out.token_ids) / wall,
        "outside_verify_ms": 1000 * outside / s.steps,
        "step_ms": 1000 * (s.total_s - s.first_token_s) / steps,
        "drafted": s.drafted_tokens,
        "estimated_speedup": s.estimated_speedup,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default="benchmarks/prompts/mixed24.jsonl")
    parser.add_argument("--ids", default="qa-1,writing-1,translation-2")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    prompts = {
        record["question_id"]: record
        for record in map(json.loads, Path(args.prompts).read_text().splitlines())
    }
    gen = load(None, backend="llamacpp", drafter="auto")
    rows = []
    for repeat in range(args.repeats):
        for pid in args.ids.split(","):
            ids = gen.encode([{"role": "user", "content": prompts[pid]["turns"][0]}])
            gen.backend.reset()
            start = time.perf_counter()
            base = plain_greedy(gen.target.model, ids, args.tokens)
            row = {"prompt": pid, "repeat": repeat}
            row["llama-decode"] = {"tokens_per_s": len(base) / (time.perf_counter() - start)}
            for drafter in ("none", "auto"):
                row[drafter] = timed_generate(gen, ids, drafter, args.tokens)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        name: {
            "ratio_median": statistics.median(
                r[name]["tokens_per_s"] / r["llama-decode"]["tokens_per_s"] for r in rows
            ),
            "outside_verify_ms_median": statistics.median(
                r[name]["outside_verify_ms"] for r in rows
            ),
            "step_ms_median": statistics.median(r[name]["step_ms"] for r in rows),
        }
        for name in ("none", "auto")
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_run_json(out, args)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
