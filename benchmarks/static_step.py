"""What does a verify cost through the growing cache, the static cache (--static-cache) and the
static cache with compiled forwards (--compile)?

Times a verify + commit of an n-node draft-shaped tree after a cached context of random tokens,
median of ``--repeats`` after one warm-up (the compiled mode's warm-up compiles that size), on
the embedded 1.5B target (or ``--target``) in ``--dtype``, modes in the order given:

    python benchmarks/static_step.py --modes growing,static,compiled --nodes 1,16 --slots 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokentree.api import load
from tokentree.backends import make_backend
from tokentree.backends.base import StaticConfig
from tokentree.planner import probe_tree


def seconds_per_verify(backend, context: list[int], nodes: int, repeats: int) -> float:
    tree = probe_tree(nodes, backend.vocab_size)
    backend.prefill(context)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.verify(tree)
        backend.commit((0,))
        times.append(time.perf_counter() - start)
        backend.prefill(context)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--modes", default="growing,static,compiled")
    parser.add_argument("--nodes", default="1,16")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--slots", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = load(args.target, drafter="none", dtype=args.dtype, device=args.device, backend="hf")
    model = model.target.model
    context = torch.randint(100, 20000, (args.context,), generator=torch.Generator().manual_seed(0))
    nodes = [int(n) for n in args.nodes.split(",")]
    print(f"{model.dtype}, {model.device}, {args.context} cached tokens, {args.slots} slots")
    header = " | ".join(f"{n} nodes ms" for n in nodes)
    print(f"| mode | {header} | mode total s (compiling included) |")
    print("|---|" + "---|" * (len(nodes) + 1))
    for mode in args.modes.split(","):
        start = time.perf_counter()
        static = None if mode == "growing" else StaticConfig(args.slots, mode == "compiled")
        backend = make_backend(model, static=static)
        ms = [seconds_per_verify(backend, context.tolist(), n, args.repeats) * 1000 for n in nodes]
        total = time.perf_counter() - start
        print(f"| {mode} | " + " | ".join(f"{t:.1f}" for t in ms) + f" | {total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
