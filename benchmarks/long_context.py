"""What does a tree cost at a long context, through the explicit 4-D mask and through LongSpec's
hybrid tree attention (prefix by the fast kernel, tree as a small block, merged by log-sum-exp)?

Times a verify of an n-node tree (binary heap) on a random-weight model of the embedded 1.5B
target's shape (the time does not depend on the weights) after a cached context, against a
one-token step through the model's own attention, median of ``--repeats``; and the peak memory a
verify adds over what the process held before it (VmHWM after resetting it, Linux; glibc is told
to map large blocks so that freed memory leaves the process). ``--windowed`` also prints the KV
cache a Gemma-3 model of the embedded 270M's shape holds after each context, with sliding layers
at full length and kept to their window:

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/long_context.py \
        --contexts 1024,4096,8192,16384 --nodes 1,4,16,64 --windowed
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from batch_layout import QWEN_1_5B
from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config

from tokentree.backends.hf import HFBackend
from tokentree.tree import TokenTree


def heap_tree(n: int) -> TokenTree:
    return TokenTree(tuple(range(10, 10 + n)), tuple([-1] + [(i - 1) // 2 for i in range(1, n)]))


def verify_once(backend: HFBackend, tree: TokenTree) -> None:
    backend.verify(tree)
    backend.commit([0])


def median_time(backend: HFBackend, tree: TokenTree, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.verify(tree)
        times.append(time.perf_counter() - start)
        backend.commit([0])  # keep the root only: the context grows by one token per repeat
    return statistics.median(times[1:])


def peak_mb(work) -> float:
    """MB of peak resident memory ``work()`` adds to what the process holds when it starts."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    before = _status_kb("VmRSS")
    work()
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1])


def cache_mb(backend: HFBackend) -> float:
    layers = backend.cache.layers
    return sum(x.keys.numel() * x.keys.element_size() * 2 for x in layers) / 2**20


def windowed_table(contexts: list[int]) -> None:
    """KV cache of a Gemma-3 270M-shaped model (window 512, 5 sliding layers per full one)."""
    config = Gemma3TextConfig(**GEMMA3_270M)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    print("\nKV cache held (MB), Gemma-3 270M shape, bf16: sliding layers full vs windowed")
    print("| context | full layers MB | windowed MB | windowed / full |")
    print("|---|---|---|---|")
    for context in contexts:
        prompt = torch.randint(0, 1000, (context,)).tolist()
        sizes = []
        for windowed in (False, True):
            backend = HFBackend(model, windowed=windowed)
            backend.prefill(prompt)
            sizes.append(cache_mb(backend))
        print(f"| {context} | {sizes[0]:.1f} | {sizes[1]:.1f} | {sizes[1] / sizes[0]:.2f} |")


GEMMA3_270M = dict(
    vocab_size=262144,
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    sliding_window=512,
    max_position_embeddings=32768,
    layer_types=["sliding_attention"] * 5
    + ["full_attention"]
    + ["sliding_attention"] * 5
    + ["full_attention"]
    + ["sliding_attention"] * 5
    + ["full_attention"],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,4096,8192")
    parser.add_argument("--nodes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--windowed", action="store_true", help="also the Gemma-3 cache table")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(**{**QWEN_1_5B, "max_position_embeddings": 32768})
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).eval()
    print(f"{torch.get_num_threads()} threads, {args.dtype}, seconds per verify (median)")
    print(
        "| context | nodes | 4-D mask s | hybrid s | mask / hybrid | hybrid / one-token step "
        "| mask peak MB | hybrid peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    contexts = list(map(int, args.contexts.split(",")))
    for context in contexts:
        backends = {"mask": HFBackend(model, hybrid_from=10**9), "hybrid": HFBackend(model, 0)}
        prompt = torch.randint(0, 1000, (context,)).tolist()
        for backend in backends.values():
            backend.prefill(prompt)
        step = median_time(backends["mask"], heap_tree(1), args.repeats)
        for n in map(int, args.nodes.split(",")):
            tree = heap_tree(n)
            mask = median_time(backends["mask"], tree, args.repeats)
            hybrid = median_time(backends["hybrid"], tree, args.repeats)
            peaks = [peak_mb(lambda: verify_once(b, tree)) for b in backends.values()]
            print(
                f"| {context} | {n} | {mask:.3f} | {hybrid:.3f} | {mask / hybrid:.2f} | "
                f"{hybrid / step:.2f} | {peaks[0]:.0f} | {peaks[1]:.0f} |",
                flush=True,
            )
    if args.windowed:
        windowed_table(contexts)


if __name__ == "__main__":
    main()
