"""The only place that mutates a transformers KV cache (llama.cpp's cells are changed only by
``LlamaCppBackend``'s ``prefill``/``grow``/``commit``, through llama.cpp's own memory calls).

Caches are transformers ``DynamicCache`` objects. Full attention layers (``DynamicLayer``) keep
the whole sequence: keys/values of shape [batch, kv_heads, seq, head_dim]. Sliding-window layers
are full layers too (the window applied by the attention mask), except in a
:func:`new_windowed_cache`: there they are ``DynamicSlidingWindowLayer``s recording their past
(a forward appends to them and returns what the window needs), which :func:`compact`, :func:`crop`
and :func:`bound` keep to the last ``window - 1 + ROLLBACK`` positions, so their memory stays
bounded whatever the context. State-space layers (``LinearAttentionLayer``: a conv state
[batch, C, K] and a recurrent state [batch, H, P, N]) are read with :func:`linear_states` and
advanced along an accepted path with :func:`advance_linear`; compaction leaves them alone.
A :func:`new_static_cache` (``StaticLayer``s: [1, kv_heads, slots, head_dim] allocated once) is
written from its ``cumulative_length`` on; :func:`seek` moves that and :func:`compact_static`
keeps an accepted path, so its tensors never change address (what CUDA graphs need).
"""

from __future__ import annotations

import functools
import inspect
from typing import Sequence

import torch
import transformers
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import (
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionCacheLayerMixin,
    StaticLayer,
)

from ...errors import UnsupportedModelError

ROLLBACK = 256  # positions a windowed layer keeps beyond its window: how far a crop can go back


FULL_SUPPORT = (5, 24)  # transformers from which windowed and state-space caches roll back


def require_full_transformers(what: str, version: str | None = None) -> None:
    """UnsupportedModelError naming ``what`` when the installed transformers predates
    FULL_SUPPORT (its windowed and linear-attention cache layers crop differently); the rest of
    tokentree runs on earlier 5.x releases (the GPU machine's 5.17: see benchmarks/gpu_check.py)."""
    version = version or transformers.__version__
    if tuple(int(part) for part in version.split(".")[:2]) < FULL_SUPPORT:
        raise UnsupportedModelError(
            f"{what} needs transformers >= {'.'.join(map(str, FULL_SUPPORT))} "
            f"(found {version}): its cache layers roll back differently before"
        )


def cache_argument(module: torch.nn.Module) -> str:
    """The keyword ``module``'s forward takes its cache under: ``cache`` since transformers 5.24,
    ``past_key_values`` before (the GPU machine's 5.17, for one)."""
    return _cache_argument(type(module))


@functools.lru_cache(maxsize=None)
def _cache_argument(cls: type) -> str:
    parameters = inspect.signature(cls.forward).parameters
    return next(
        (name for name in ("cache", "past_key_values", "past_key_value") if name in parameters),
        "cache",
    )


class CacheRollbackError(ValueError):
    """A crop reaches back past what a windowed layer still holds (prefill from scratch)."""


def new_cache() -> DynamicCache:
    """An empty cache whose layers are created lazily as full ``DynamicLayer``s."""
    return DynamicCache()


def new_state_cache(config) -> DynamicCache:
    """An empty cache laid out for ``config``'s layers (state-space layers get state layers)."""
    return DynamicCache(config=config)


def filled_cache(config, past: Sequence[torch.Tensor]) -> DynamicCache:
    """A cache of full layers holding ``past`` (key, value, key, value, ... per layer, each
    [batch, kv_heads, seq, head_dim]) without copying them (what a traced export starts from)."""
    cache = DynamicCache(config=config)
    for layer, keys, values in zip(cache.layers, past[0::2], past[1::2], strict=True):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def new_windowed_cache(config) -> DynamicCache:
    """An empty cache for ``config`` whose sliding-window layers keep only their window."""
    cache = DynamicCache(config=config)
    for layer in cache.layers:
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.activate_past_recording()  # a forward keeps everything until we bound it
    return cache


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = [x for x in cache.layers if not isinstance(x, LinearAttentionCacheLayerMixin)]
    for layer in layers:
        windowed = isinstance(layer, DynamicSlidingWindowLayer) and layer.record_past
        if type(layer) is not DynamicLayer and not windowed:
            raise TypeError(
                "tokentree compacts only DynamicLayer and past-recording "
                f"DynamicSlidingWindowLayer caches, got {type(layer).__name__}"
            )
    return [layer for layer in layers if layer.is_initialized]


def _first(layer: DynamicLayer) -> int:
    """The position of the first key ``layer`` holds (0 unless a windowed layer dropped some)."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return layer.cumulative_length - layer.keys.shape[-2]
    return 0


def _set_end(layer: DynamicLayer, end: int) -> None:
    """Keep ``layer``'s positions before ``end`` (absolute)."""
    local = end - _first(layer)
    layer.keys = layer.keys[..., :local, :]
    layer.values = layer.values[..., :local, :]
    if isinstance(layer, DynamicSlidingWindowLayer):
        layer.cumulative_length = end


def length(cache: DynamicCache) -> int:
    """Number of positions the cache has seen (and a full layer holds)."""
    layers = _layers(cache)
    return _first(layers[0]) + layers[0].keys.shape[-2] if layers else 0


def crop(cache: DynamicCache, keep: int) -> None:
    """Keep the first ``keep`` positions of every layer (a windowed layer: the last of them its
    window needs); CacheRollbackError, changing nothing, when a windowed layer no longer holds
    them."""
    layers = _layers(cache)
    for layer in layers:
        if isinstance(layer, DynamicSlidingWindowLayer) and keep < length(cache):
            if _first(layer) > max(0, keep - layer.sliding_window + 1):
                raise CacheRollbackError(
                    f"a sliding-window layer no longer holds position {keep} of the context"
                )
    for layer in layers:
        _set_end(layer, min(keep, _first(layer) + layer.keys.shape[-2]))


def bound(cache: DynamicCache) -> None:
    """Drop what windowed layers hold beyond ``window - 1 + ROLLBACK`` positions."""
    for layer in _layers(cache):
        if isinstance(layer, DynamicSlidingWindowLayer):
            keep = layer.sliding_window - 1 + ROLLBACK
            layer.keys = layer.keys[..., -keep:, :]
            layer.values = layer.values[..., -keep:, :]


@torch.inference_mode()
def compact(cache: DynamicCache, prefix: int, nodes: Sequence[int]) -> None:
    """Keep positions [0, prefix) and ``prefix + nodes[j]`` for each j, contiguous, in that order.

    After verifying a tree of n nodes the cache holds prefix + n positions; ``nodes`` are the
    accepted node indices (ascending, starting at 0). The result holds prefix + len(nodes)
    (windowed layers: the last of them, see :func:`bound`).
    """
    nodes = list(nodes)
    end = prefix + len(nodes)
    for layer in _layers(cache):
        first = _first(layer)
        if nodes != list(range(len(nodes))):  # not already contiguous: move the accepted nodes
            index = torch.tensor(nodes, device=layer.keys.device) + prefix - first
            layer.keys[..., prefix - first : end - first, :] = layer.keys.index_select(-2, index)
            layer.values[..., prefix - first : end - first, :] = layer.values.index_select(
                -2, index
            )
        _set_end(layer, end)
    bound(cache)


def new_static_cache(
    config, slots: int, dtype: torch.dtype, device: torch.device | str
) -> StaticCache:
    """A cache of ``slots`` positions per full-attention layer, allocated now on ``device``."""
    text = config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    cache = StaticCache(config=config, max_cache_len=slots)
    cache.early_initialization(1, kv_heads, head_dim, dtype, torch.device(device))
    return cache


def _static_layers(cache: StaticCache) -> list[StaticLayer]:
    if any(type(layer) is not StaticLayer for layer in cache.layers):
        raise TypeError("a static cache of full-attention StaticLayers only")
    return cache.layers


def seek(cache: StaticCache, end: int) -> None:
    """The next forward writes its keys/values from position ``end`` on (what lies beyond is
    stale; the caller's masks hide it)."""
    for layer in _static_layers(cache):
        layer.cumulative_length.fill_(end)


@torch.inference_mode()
def compact_static(cache: StaticCache, prefix: int, nodes: Sequence[int]) -> None:
    """Like :func:`compact` for a static cache: positions ``prefix + nodes[j]`` move to
    ``prefix + j`` in place, and the next forward writes from ``prefix + len(nodes)``."""
    nodes = list(nodes)
    end = prefix + len(nodes)
    if nodes != list(range(len(nodes))):
        for layer in _static_layers(cache):
            index = torch.tensor(nodes, device=layer.keys.device) + prefix
            layer.keys[:, :, prefix:end] = layer.keys.index_select(2, index)
            layer.values[:, :, prefix:end] = layer.values.index_select(2, index)
    seek(cache, end)


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
