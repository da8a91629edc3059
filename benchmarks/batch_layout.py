"""Which layout should many sequences' trees take in one transformers forward?

Times one verify forward of B sequences, each with a cached context and a tree of ``nodes`` nodes,
in the two layouts the batch issue names, on a random-weight model of the target's config (the
time does not depend on the weights):

- packed: one cache row holding every sequence's context back to back, all trees in one row, a
  block (forest) mask: a node sees its own sequence's cells and its ancestors;
- packed + lanes: the same, with tokentree's lane attention (SDPA over each sequence's own cells
  only, :mod:`tokentree.backends.hf.lane_attention`);
- rows: one batch row per sequence (the best case for rows: equal contexts and trees, no padding;
  unequal trees pad every row to the largest).

    python benchmarks/batch_layout.py --contexts 300 --batches 1,2,4,8 --nodes 1,4,8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache, Qwen2Config

from tokentree.backends.hf.lane_attention import LanePlan, use_lane_attention

QWEN_1_5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)


def filled_cache(model, batch: int, length: int) -> DynamicCache:
    cache = DynamicCache()
    with torch.inference_mode():
        model(
            input_ids=torch.randint(0, 1000, (batch, length)),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return cache


def snapshot(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def restore(cache: DynamicCache, saved) -> None:
    for layer, (k, v) in zip(cache.layers, saved):
        layer.keys, layer.values = k, v


def packed_inputs(batch: int, context: int, nodes: int, dtype):
    """One row: batch * context cached cells, batch chains of ``nodes`` (a chain and a tree cost
    the same)."""
    cells, queries = batch * context, batch * nodes
    owner_cell = torch.arange(cells) // context
    owner_query = torch.arange(queries) // nodes
    seen = owner_query[:, None] == owner_cell[None, :]
    block = (owner_query[:, None] == owner_query[None, :]) & (
        torch.arange(queries)[None, :] % nodes <= torch.arange(queries)[:, None] % nodes
    )
    visible = torch.cat([seen, block], dim=1)
    mask = torch.zeros(queries, cells + queries, dtype=dtype).masked_fill_(
        ~visible, torch.finfo(dtype).min
    )
    positions = (context + torch.arange(queries) % nodes)[None]
    return torch.randint(0, 1000, (1, queries)), positions, mask[None, None]


def lane_plan(batch: int, context: int, nodes: int, dtype) -> LanePlan:
    cells = batch * context
    queries = torch.arange(batch * nodes).view(batch, nodes)
    keys = torch.cat([torch.arange(cells).view(batch, context), cells + queries], dim=1)
    visible = torch.cat(
        [
            torch.ones(nodes, context, dtype=torch.bool),
            torch.tril(torch.ones(nodes, nodes, dtype=torch.bool)),
        ],
        dim=1,
    )
    mask = torch.zeros(nodes, context + nodes, dtype=dtype).masked_fill_(
        ~visible, torch.finfo(dtype).min
    )
    return LanePlan(
        queries, keys, mask[None, None].expand(batch, 1, -1, -1), torch.arange(batch * nodes)
    )


def rows_inputs(batch: int, context: int, nodes: int, dtype):
    visible = torch.cat(
        [
            torch.ones(nodes, context, dtype=torch.bool),
            torch.tril(torch.ones(nodes, nodes, dtype=torch.bool)),
        ],
        dim=1,
    )
    mask = torch.zeros(nodes, context + nodes, dtype=dtype).masked_fill_(
        ~visible, torch.finfo(dtype).min
    )
    positions = (context + torch.arange(nodes))[None].expand(batch, -1)
    return (
        torch.randint(0, 1000, (batch, nodes)),
        positions,
        mask[None, None].expand(batch, 1, -1, -1),
    )


def timed(model, cache, saved, inputs, repeats: int, **extra) -> float:
    ids, positions, mask = inputs
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            restore(cache, saved)
            start = time.perf_counter()
            model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=mask,
                cache=cache,
                use_cache=True,
                **extra,
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="300")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--nodes", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN_1_5B), dtype=dtype).eval()
    use_lane_attention(model)  # SDPA itself unless a plan is passed
    print(
        f"threads {torch.get_num_threads()}, {args.dtype}; seconds per verify forward (median of "
        f"{args.repeats})"
    )
    print(
        "| context | sequences | nodes each | packed s | packed + lanes s | rows s | rows / "
        "packed + lanes |"
    )
    print("|---|---|---|---|---|---|---|")
    for context in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            packed_cache = filled_cache(model, 1, batch * context)
            rows_cache = filled_cache(model, batch, context)
            packed_saved, rows_saved = snapshot(packed_cache), snapshot(rows_cache)
            for nodes in map(int, args.nodes.split(",")):
                inputs = packed_inputs(batch, context, nodes, dtype)
                packed = timed(model, packed_cache, packed_saved, inputs, args.repeats)
                lanes = timed(
                    model,
                    packed_cache,
                    packed_saved,
                    inputs,
                    args.repeats,
                    lanes=lane_plan(batch, context, nodes, dtype),
                )
                rows = timed(
                    model,
                    rows_cache,
                    rows_saved,
                    rows_inputs(batch, context, nodes, dtype),
                    args.repeats,
                )
                print(
                    f"| {context} | {batch} | {nodes} | {packed:.3f} | {lanes:.3f} | {rows:.3f} | "
                    f"{rows / lanes:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
