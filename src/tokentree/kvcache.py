"""The only place that mutates a transformers KV cache (llama.cpp's cells are changed only by
``LlamaCppBackend``'s ``prefill``/``grow``/``commit``, through llama.cpp's own memory calls).

Caches are transformers ``DynamicCache`` objects whose attention layers all keep the full sequence
(``DynamicLayer``): keys/values of shape [batch, kv_heads, seq, head_dim]. Sliding-window models
keep full layers too; the window is applied by the attention mask instead, so one compaction rule
serves every layer. State-space layers (``LinearAttentionLayer``: a conv state [batch, C, K] and a
recurrent state [batch, H, P, N]) are read with :func:`linear_states` and advanced along an
accepted path with :func:`advance_linear`; compaction leaves them alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import (
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionCacheLayerMixin,
)


def new_cache() -> DynamicCache:
    """An empty cache whose layers are created lazily as full ``DynamicLayer``s."""
    return DynamicCache()


def new_state_cache(config) -> DynamicCache:
    """An empty cache laid out for ``config``'s layers (state-space layers get state layers)."""
    return DynamicCache(config=config)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = [x for x in cache.layers if not isinstance(x, LinearAttentionCacheLayerMixin)]
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


def linear_states(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """State-space layer ``layer``'s committed (conv [C, K], recurrent [H, P, N]) states, or None
    before it has seen a token."""
    conv = cache.get_conv_state(layer)
    if conv is None:
        return None
    return conv[0], cache.get_recurrent_state(layer)[0]


@torch.inference_mode()
def advance_linear(
    cache: DynamicCache, layer: int, conv_inputs: torch.Tensor, state: torch.Tensor, width: int
) -> None:
    """Append ``conv_inputs`` [C, L] (the accepted tokens' convolution inputs, oldest first) to
    layer ``layer``'s conv state (``width`` K inputs kept) and make ``state`` [H, P, N] its
    recurrent state."""
    old = linear_states(cache, layer)
    cache.update_conv_state(conv_inputs[None], layer, conv_kernel_size=width)
    dtype = old[1].dtype if old is not None else torch.float32
    cache.update_recurrent_state(state[None].to(dtype), layer)
