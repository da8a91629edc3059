"""Aggregate tokens/s of B sequences per forward (generate_batch) against the same prompts one at a
time (generate), and ``n`` samples of one prompt together against one after another; prints
markdown tables. Every row starts from a freshly loaded generator, so no row's drafters have seen
the answers of another.

    python benchmarks/batch.py --backend llamacpp --prompts 4 --batches 2,4 --max-new-tokens 64
    python benchmarks/batch.py --backend hf --prompts 8 --batches 2,4,8 --samples 8 --plot t.png
"""

import argparse
import statistics
import time

import tokentree
from tokentree.bench.suites import load_suite


def load(backend: str):
    if backend == "hf":
        return tokentree.load(backend="hf", dtype="bfloat16")
    return tokentree.load(backend="llamacpp", n_ctx=8192)


def prompts_of(gen, suite: str, count: int) -> list[list[int]]:
    items = load_suite(suite)
    if suite != "humaneval":  # one per category first, so a few prompts still mix kinds of text
        by_category: dict[str, list] = {}
        for item in items:
            by_category.setdefault(item.category, []).append(item)
        items = [
            row[i]
            for i in range(max(map(len, by_category.values())))
            for row in by_category.values()
            if i < len(row)
        ]
    return [gen.encode(p.turns[0]) for p in items[:count]]


def concurrency(args, curves) -> None:
    print(
        "| drafter | how | tokens | seconds | aggregate tokens/s | vs one at a time | median "
        "request tokens/s "
        "| slowest request vs alone |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for drafter in args.drafters.split(","):
        gen = load(args.backend)
        prompts = prompts_of(gen, args.suite, args.prompts)
        start = time.perf_counter()
        alone = [
            gen.generate(p, max_new_tokens=args.max_new_tokens, drafter=drafter) for p in prompts
        ]
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for o in alone)
        single, rates = tokens / seconds, [o.stats.tokens_per_s for o in alone]
        print(
            f"| {drafter} | one at a time | {tokens} | {seconds:.1f} | {single:.2f} | 1.00x | "
            f"{statistics.median(rates):.2f} | 1.00x |",
            flush=True,
        )
        curves[drafter] = [(1, single)]
        for size in map(int, args.batches.split(",")):
            gen = load(args.backend)
            start = time.perf_counter()
            outs = gen.generate_batch(
                prompts, max_new_tokens=args.max_new_tokens, drafter=drafter, max_batch=size
            )
            seconds = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outs)
            per = [
                o.stats.new_tokens / o.stats.total_s for o in outs
            ]  # each request, from its start to its end
            worst = min(p / r for p, r in zip(per, rates))
            print(
                f"| {drafter} | batch of {size} | {tokens} | {seconds:.1f} | "
                f"{tokens / seconds:.2f} | "
                f"{tokens / seconds / single:.2f}x | {statistics.median(per):.2f} | {worst:.2f}x |",
                flush=True,
            )
            curves[drafter].append((size, tokens / seconds))


def samples(args) -> None:
    """``n`` sampled answers to one prompt: generate_batch(n=) against n generate calls (same
    seeds)."""
    print(
        f"\n{args.samples} samples of one prompt (temperature {args.temperature}, seeds "
        f"0..{args.samples - 1})\n"
    )
    print("| drafter | how | tokens | seconds | tokens/s | vs one after another |")
    print("|---|---|---|---|---|---|")
    for drafter in args.drafters.split(","):
        gen = load(args.backend)
        prompt = prompts_of(gen, args.suite, 1)[0]
        options = dict(
            max_new_tokens=args.max_new_tokens, drafter=drafter, temperature=args.temperature
        )
        start = time.perf_counter()
        tokens = sum(
            len(gen.generate(prompt, seed=i, **options).token_ids) for i in range(args.samples)
        )
        seconds = time.perf_counter() - start
        print(
            f"| {drafter} | one after another | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} "
            "| 1.00x |",
            flush=True,
        )
        gen = load(args.backend)
        start = time.perf_counter()
        outs = gen.generate_batch([prompt], n=args.samples, seed=0, **options)
        together = time.perf_counter() - start
        count = sum(len(o.token_ids) for o in outs)
        print(
            f"| {drafter} | n={args.samples} together | {count} | {together:.1f} | "
            f"{count / together:.2f} | "
            f"{seconds / together:.2f}x |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        default="llamacpp",
        choices=["llamacpp", "hf"],
        help="llamacpp: the embedded Q4_K_M; hf: the embedded target in bf16 on transformers",
    )
    parser.add_argument("--suite", default="humaneval", choices=["humaneval", "spec-bench"])
    parser.add_argument("--prompts", type=int, default=4, help="prompts served together")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="2,4", help="batch sizes to run (0: none)")
    parser.add_argument("--drafters", default="none,auto")
    parser.add_argument(
        "--samples", type=int, default=0, help="also n samples of one prompt together vs in turn"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="for --samples")
    parser.add_argument(
        "--plot", default=None, help="write aggregate tokens/s against batch size to this PNG"
    )
    args = parser.parse_args()
    curves: dict[str, list[tuple[int, float]]] = {}
    if args.batches != "0":
        concurrency(args, curves)
    if args.samples:
        samples(args)
    if args.plot and curves:
        plot(curves, args.plot)


def plot(curves: dict[str, list[tuple[int, float]]], path: str) -> None:
    """Aggregate tokens/s against sequences per forward (1 = one at a time), one line per
    drafter."""
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
