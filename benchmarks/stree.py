"""What does verifying a tree cost on a Mamba-2, by the tree scan (STree) and the alternatives?

Times, on a random-weight Mamba-2 of a published size (the time does not depend on the weights;
no pretrained state-space model can be downloaded here), with a cached context:

- tree: tokentree's ``SSMBackend.verify`` of an n-node tree, then the commit of its deepest path;
- per path: each root-to-leaf path verified on its own as a chain, by the same code (what a tree
  costs without the tree scan: the recurrence replayed along every branch);
- chain: a chain as deep as the tree (depth + 1 tokens), by the same code;
- model chain: the model's own forward over that chain from a copy of the cached state (its
  chunked scan, padded to ``chunk_size``), for reference.

Trees are binary heaps (node i's parent is (i - 1) // 2: depth log2 n, n / 2 leaves) or four
chains from the root (``--shape chains``).

    python benchmarks/stree.py --size 130m --dtype float32,bfloat16 --nodes 1,2,4,8,16,32,64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, Mamba2Config

from tokentree.backends.hf.ssm_backend import SSMBackend
from tokentree.tree import TokenTree

SIZES = {  # the published Mamba-2 130M and 1.3B shapes (state-spaces/mamba2-*)
    "130m": dict(hidden_size=768, num_hidden_layers=24, num_heads=24),
    "1.3b": dict(hidden_size=2048, num_hidden_layers=48, num_heads=64),
}
COMMON = dict(vocab_size=50288, head_dim=64, state_size=128, n_groups=1, expand=2, conv_kernel=4)
COMMON["chunk_size"] = 256


def shaped_tree(n: int, shape: str) -> TokenTree:
    if shape == "binary":
        parents = [-1] + [(i - 1) // 2 for i in range(1, n)]
    else:  # four chains below the root
        parents = [-1] + [i - 4 if i > 4 else 0 for i in range(1, n)]
    return TokenTree(tuple(range(10, 10 + n)), tuple(parents))


def median_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run warms up


def verify_and_commit(backend: SSMBackend, tree: TokenTree, path: list[int]) -> None:
    backend.verify(tree)
    backend.commit(path)


def model_forward(model, cache, tokens) -> None:
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokens]), cache=copy.deepcopy(cache), use_cache=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="130m")
    parser.add_argument("--dtype", default="float32,bfloat16")
    parser.add_argument("--nodes", default="1,2,4,8,16,32,64")
    parser.add_argument("--shape", choices=["binary", "chains"], default="binary")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"Mamba-2 {args.size} (random weights), {torch.get_num_threads()} threads, {args.shape}")
    print("seconds per verify, median of", args.repeats)
    print("| dtype | nodes | depth | paths | tree s | per path s | chain s | model chain s |"
          " per path / tree | tree / chain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtype.split(","):
        torch.manual_seed(0)
        config = Mamba2Config(**COMMON, **SIZES[args.size])
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name)).eval()
        backend = SSMBackend(model)
        backend.prefill(torch.randint(0, 1000, (args.context,)).tolist())
        for n in map(int, args.nodes.split(",")):
            tree = shaped_tree(n, args.shape)
            deepest = tree.path_to(max(range(n), key=lambda i: tree.depths[i]))
            chains = [TokenTree.chain(tree.tokens[0], [tree.tokens[i] for i in p[1:]])
                      for p in tree.paths]  # fmt: skip
            chain = TokenTree.chain(tree.tokens[0], [tree.tokens[i] for i in deepest[1:]])
            scan = median_time(lambda: verify_and_commit(backend, tree, deepest), args.repeats)
            per_path = median_time(
                lambda: [verify_and_commit(backend, c, [0]) for c in chains], args.repeats
            )
            alone = median_time(
                lambda: verify_and_commit(backend, chain, list(range(len(chain)))), args.repeats
            )
            own = median_time(
                lambda: model_forward(model, backend.cache, chain.tokens), args.repeats
            )
            print(
                f"| {dtype_name} | {n} | {max(tree.depths)} | {len(chains)} | {scan:.4f} | "
                f"{per_path:.4f} | {alone:.4f} | {own:.4f} | {per_path / scan:.2f} | "
                f"{scan / alone:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
