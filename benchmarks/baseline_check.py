"""Check the bench's plain baseline (`llama-decode`: llama_decode + argmax per token through
tokentree's llama.cpp context) against `llama-bench` built from the same llama.cpp sources.

Both decode ``--tokens`` tokens after a ``--depth``-token context with flash attention on, the
same threads and batch size; interleaved, ``--repeats`` times. Build llama-bench from the
llama-cpp-python sdist's vendored llama.cpp (see docs/results.md), then:

    python benchmarks/baseline_check.py --llama-bench PATH/llama-bench --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fresh_runs import write_run_json

from tokentree.backends.llama_plain import plain_greedy
from tokentree.backends.llamacpp import LlamaCppConfig, LlamaCppModel
from tokentree.models import EMBEDDED_TARGET, assemble_embedded


def llama_bench(binary: str, model: Path, depth: int, tokens: int, threads: int) -> float:
    """llama-bench's tokens/s of a tg``tokens`` run after ``depth`` tokens (one repetition)."""
    command = [binary, "-m", str(model), "-p", "0", "-n", str(tokens), "-d", str(depth)]
    command += ["-fa", "1", "-t", str(threads), "-b", "512", "-ub", "512", "-r", "1", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout)[0]["avg_ts"])


def llama_decode(model: LlamaCppModel, depth: int, tokens: int) -> float:
    """llama-decode's tokens/s of ``tokens`` new tokens after a ``depth``-token prompt (the
    prompt's prefill excluded, as llama-bench's tg test excludes its depth)."""
    prompt = [100 + (i * 7) % 5000 for i in range(depth)]
    start = time.perf_counter()
    plain_greedy(model, prompt, 1)  # the prefill and one token
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    new = plain_greedy(model, prompt, tokens + 1)
    return (len(new) - 1) / (time.perf_counter() - start - prefill)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    path = assemble_embedded(EMBEDDED_TARGET)
    config = LlamaCppConfig()
    model = LlamaCppModel(path, config)
    rows = []
    for _ in range(args.repeats):
        ours = llama_decode(model, args.depth, args.tokens)
        theirs = llama_bench(args.llama_bench, path, args.depth, args.tokens, config.thread_count)
        rows.append({"llama_decode": ours, "llama_bench": theirs})
        print(f"llama-decode {ours:.2f} tokens/s, llama-bench {theirs:.2f} tokens/s", flush=True)
    ours = statistics.median(r["llama_decode"] for r in rows)
    theirs = statistics.median(r["llama_bench"] for r in rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": path.name,
        "depth": args.depth,
        "tokens": args.tokens,
        "threads": config.thread_count,
        "rows": rows,
        "median_llama_decode": ours,
        "median_llama_bench": theirs,
        "ratio": ours / theirs,
    }
    (out / "baseline_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_run_json(out, args)
    print(f"median: llama-decode {ours:.2f}, llama-bench {theirs:.2f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
