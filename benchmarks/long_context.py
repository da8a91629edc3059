"""What does a tree cost at a long context, through the explicit 4-D mask and through LongSpec's
hybrid tree attention (prefix by the fast kernel, tree as a small block, merged by log-sum-exp)?

Times a verify of an n-node tree (binary heap) on a random-weight model of the embedded 1.5B
target's shape (the time does not depend on the weights) after a cached context, against a
one-token step through the model's own attention, median of ``--repeats``:

    python benchmarks/long_context.py --contexts 1024,4096,8192 --nodes 1,4,16,64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from batch_layout import QWEN_1_5B
from transformers import AutoModelForCausalLM, Qwen2Config

from tokentree.backends.hf import HFBackend
from tokentree.tree import TokenTree


def heap_tree(n: int) -> TokenTree:
    return TokenTree(tuple(range(10, 10 + n)), tuple([-1] + [(i - 1) // 2 for i in range(1, n)]))


def median_time(backend: HFBackend, tree: TokenTree, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.verify(tree)
        times.append(time.perf_counter() - start)
        backend.commit([0])  # keep the root only: the context grows by one token per repeat
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,4096,8192")
    parser.add_argument("--nodes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(**{**QWEN_1_5B, "max_position_embeddings": 32768})
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).eval()
    print(f"{torch.get_num_threads()} threads, {args.dtype}, seconds per verify (median)")
    print("| context | nodes | 4-D mask s | hybrid s | mask / hybrid | hybrid / one-token step |")
    print("|---|---|---|---|---|---|")
    for context in map(int, args.contexts.split(",")):
        backends = {"mask": HFBackend(model, hybrid_from=10**9), "hybrid": HFBackend(model, 0)}
        prompt = torch.randint(0, 1000, (context,)).tolist()
        for backend in backends.values():
            backend.prefill(prompt)
        step = median_time(backends["mask"], heap_tree(1), args.repeats)
        for n in map(int, args.nodes.split(",")):
            tree = heap_tree(n)
            mask = median_time(backends["mask"], tree, args.repeats)
            hybrid = median_time(backends["hybrid"], tree, args.repeats)
            print(
                f"| {context} | {n} | {mask:.3f} | {hybrid:.3f} | {mask / hybrid:.2f} | "
                f"{hybrid / step:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
