"""Aggregate tokens/s of B sequences per forward (generate_batch) against the same prompts one at a
time (generate), on the llama.cpp backend; prints a markdown table. Every row starts from a freshly
loaded generator, so no row's drafters have seen the answers of another.

    python benchmarks/batch.py --prompts 4 --max-new-tokens 64
"""

import argparse
import time

import tokentree
from tokentree.bench.suites import load_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="HumanEval prompts (one batch of them)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="2,4", help="batch sizes to run")
    parser.add_argument("--drafters", default="none,auto")
    args = parser.parse_args()
    fresh = lambda: tokentree.load(backend="llamacpp", n_ctx=8192)  # noqa: E731
    gen = fresh()
    prompts = [gen.encode(p.turns[0]) for p in load_suite("humaneval")[: args.prompts]]
    print("| drafter | how | tokens | seconds | aggregate tokens/s | vs one at a time |")
    print("|---|---|---|---|---|---|")
    for drafter in args.drafters.split(","):
        gen = fresh()
        start = time.perf_counter()
        tokens = sum(len(gen.generate(p, max_new_tokens=args.max_new_tokens, drafter=drafter).token_ids)
                     for p in prompts)
        single = tokens / (time.perf_counter() - start)
        print(f"| {drafter} | one at a time | {tokens} | {tokens / single:.1f} | {single:.2f} | 1.00x |", flush=True)
        for size in map(int, args.batches.split(",")):
            gen = fresh()
            start = time.perf_counter()
            outs = gen.generate_batch(prompts, max_new_tokens=args.max_new_tokens, drafter=drafter, max_batch=size)
            seconds = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outs)
            print(f"| {drafter} | batch of {size} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} | "
                  f"{tokens / seconds / single:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
