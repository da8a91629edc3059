"""What logprobs cost: the same greedy requests with and without ``logprobs`` (top 5), interleaved,
on the embedded model with plain steps (drafter none: the learning drafters would make the two
runs' trees differ), and the recording alone timed on rows of the model's vocabulary.

    python benchmarks/logprobs_cost.py --runs 3 --out benchmarks/results/cpu-logprobs-cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fresh_runs import write_run_json

import tokentree
from tokentree.bench.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, args)
    gen = tokentree.load()
    prompts = [p.turns[0] for p in load_suite("humaneval")[:2]]
    gen.generate(prompts[0], max_new_tokens=8)  # warm-up
    rows = []
    for run in range(args.runs):
        for prompt in prompts:
            for top in (None, args.top) if run % 2 == 0 else (args.top, None):
                gen.backend.reset()  # no prompt reuse: the second of a pair would skip prefill
                started = time.perf_counter()
                output = gen.generate(
                    prompt, max_new_tokens=args.max_new_tokens, logprobs=top, drafter="none"
                )
                seconds = time.perf_counter() - started
                tokens, steps = len(output.token_ids), output.stats.steps
                rows.append({"run": run, "logprobs": top, "seconds": seconds, "tokens": tokens,
                             "steps": steps})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    pairs = [with_ / without for with_, without in paired(rows)]  # same run, same prompt
    summary = {
        "record_s_per_row": record_cost(gen.backend.vocab_size, args.top),
        "median_plain_step_s": statistics.median(r["seconds"] / r["steps"] for r in rows),
        "paired_ratio_median": statistics.median(pairs),
        "paired_ratios": pairs,
        "rows": rows,
    }
    summary["record_share_of_step"] = summary["record_s_per_row"] / summary["median_plain_step_s"]
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"with/without logprobs (top {args.top}), paired: median "
          f"{summary['paired_ratio_median']:.3f} ({min(pairs):.2f}-{max(pairs):.2f}); recording "
          f"{1e3 * summary['record_s_per_row']:.2f} ms per row, "
          f"{100 * summary['record_share_of_step']:.2f}% of a plain step")  # fmt: skip
    return 0


def paired(rows: list[dict]) -> list[tuple[float, float]]:
    """(seconds with logprobs, seconds without) of each run's prompt, measured back to back."""
    pairs = []
    for first, second in zip(rows[::2], rows[1::2]):
        with_, without = (first, second) if first["logprobs"] is not None else (second, first)
        pairs.append((with_["seconds"], without["seconds"]))
    return pairs


def record_cost(vocab: int, top: int, rows: int = 4, repeats: int = 50) -> float:
    """Median seconds per row of :func:`token_logprobs` on ``rows`` x ``vocab`` logits."""
    import torch

    from tokentree.logprobs import token_logprobs
    from tokentree.sampling import SamplingParams

    logits, tokens = torch.randn(rows, vocab), list(range(rows))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        token_logprobs(logits, tokens, top, SamplingParams())
        times.append((time.perf_counter() - started) / rows)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
