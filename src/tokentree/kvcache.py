"""The only place that mutates a transformers KV cache (llama.cpp's cells are changed only by
``LlamaCppBackend``'s ``prefill``/``grow``/``commit``, through llama.cpp's own memory calls).

Caches are transformers ``DynamicCache`` objects whose layers all keep the full sequence
(``DynamicLayer``): keys/values of shape [batch, kv_heads, seq, head_dim]. Sliding-window models
keep full layers too; the window is applied by the attention mask instead, so one compaction rule
serves every layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


def new_cache() -> DynamicCache:
    """An empty cache whose layers are created lazily as full ``DynamicLayer``s."""
    return DynamicCache()


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) is not DynamicLayer or isinstance(layer, DynamicSlidingWindowLayer):
            raise TypeError(
                f"tokentree compacts only full DynamicLayer caches, got {type(layer).__name__}"
            )
    return [layer for layer in layers if layer.is_initialized]


def length(cache: DynamicCache) -> int:
    """Number of positions held by the cache."""
    layers = _layers(cache)
    return layers[0].keys.shape[-2] if layers else 0


def crop(cache: DynamicCache, keep: int) -> None:
    """Keep the first ``keep`` positions of every layer."""
    for layer in _layers(cache):
        layer.keys = layer.keys[..., :keep, :]
        layer.values = layer.values[..., :keep, :]


@torch.inference_mode()
def compact(cache: DynamicCache, prefix: int, nodes: Sequence[int]) -> None:
    """Keep positions [0, prefix) and ``prefix + nodes[j]`` for each j, contiguous, in that order.

    After verifying a tree of n nodes the cache holds prefix + n positions; ``nodes`` are the
    accepted node indices (ascending, starting at 0). The result holds prefix + len(nodes).
    """
    nodes = list(nodes)
    if nodes == list(range(len(nodes))):  # accepted path is already contiguous: just crop
        crop(cache, prefix + len(nodes))
        return
    for layer in _layers(cache):
        index = torch.tensor(nodes, device=layer.keys.device) + prefix
        end = prefix + len(nodes)
        layer.keys[..., prefix:end, :] = layer.keys.index_select(-2, index)
        layer.values[..., prefix:end, :] = layer.values.index_select(-2, index)
        layer.keys = layer.keys[..., :end, :]
        layer.values = layer.values[..., :end, :]
