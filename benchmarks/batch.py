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
    parser.add_argument("--plot", default=None, help="write aggregate tokens/s against batch size to this PNG")
    args = parser.parse_args()
    curves: dict[str, list[tuple[int, float]]] = {}
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
        curves[drafter] = [(1, single)]
        for size in map(int, args.batches.split(",")):
            gen = fresh()
            start = time.perf_counter()
            outs = gen.generate_batch(prompts, max_new_tokens=args.max_new_tokens, drafter=drafter, max_batch=size)
            seconds = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outs)
            print(f"| {drafter} | batch of {size} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} | "
                  f"{tokens / seconds / single:.2f}x |", flush=True)
            curves[drafter].append((size, tokens / seconds))
    if args.plot:
        plot(curves, args.plot)


def plot(curves: dict[str, list[tuple[int, float]]], path: str) -> None:
    """Aggregate tokens/s against sequences per forward (1 = one at a time), one line per drafter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for drafter, points in curves.items():
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=f"tt:{drafter}")
    ax.set_xlabel("sequences per forward")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_xticks(sorted({b for points in curves.values() for b, _ in points}))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
