"""Attention per lane of a packed cache, registered through transformers' attention interface.

A packed forward (:mod:`tokentree.backends.hf.batch`) holds every lane's cells in one cache row, and
its 4-D mask shows each node only its own lane's cells. Plain SDPA still scores every query against
every cell (masked ones included) and expands the grouped key/value heads over all of them, which
with 8 lanes of 300 cells made a plain step 1.45x the cost of 8 batch rows. This implementation,
given a :class:`LanePlan`, gathers each lane's queries and keys into the rows of one SDPA call, so
each query is scored against its own lane's keys only. Without a plan it is exactly transformers'
SDPA, and the packed forward always passes its full mask as well, so the result never depends on
which of the two runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .tree_attention import TREE_ATTENTION

LANE_ATTENTION = "tokentree_lanes"


@dataclass(frozen=True)
class LanePlan:
    """Where each lane's queries and keys sit in the packed row, padded to B lanes x the longest.

    queries: [B, n] index of each lane's queries among the forward's Q (padding repeats one);
    keys:    [B, k] index of the keys each lane sees among the cache row's cells (padding: any);
    mask:    [B, 1, n, k] additive: a query sees its lane's cells and its ancestors; a padding
             query sees one key (its output is dropped), a padding key none;
    rows:    [Q] where each real query's output sits in the flattened [B * n] outputs.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor


def lane_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lanes: LanePlan | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, H, Q, D], key/value [1, KVH, K, D] -> ([1, Q, H, D], None), as transformers
    expects.

    With a plan: the lanes as the rows of one SDPA call, each key/value head with its group of query
    heads packed as more queries ([B, KVH, groups * n, D] against [B, KVH, k, D]: on a CPU far
    cheaper than SDPA's own grouped-query path, which walks every query head over the keys)."""
    if lanes is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    (count, n), k = lanes.queries.shape, lanes.keys.shape[1]
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[-1]
    groups = (
        heads // kv_heads
    )  # query heads per key/value head: packed as more queries of that head
    q = query[0].index_select(1, lanes.queries.flatten()).view(heads, count, n, dim).transpose(0, 1)
    q = q.reshape(count, kv_heads, groups * n, dim)
    keys = (
        key[0].index_select(1, lanes.keys.flatten()).view(kv_heads, count, k, dim).transpose(0, 1)
    )
    values = (
        value[0].index_select(1, lanes.keys.flatten()).view(kv_heads, count, k, -1).transpose(0, 1)
    )
    mask = lanes.mask.repeat(1, 1, groups, 1) if groups > 1 else lanes.mask
    out = torch.nn.functional.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, scale=scaling
    )
    out = (
        out.view(count, heads, n, -1)
        .transpose(1, 2)
        .reshape(count * n, heads, -1)
        .index_select(0, lanes.rows)
    )
    return out[None], None


def use_lane_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` from SDPA to lane attention (the same function when no plan is passed);
    False, changing nothing, for other attention implementations."""
    if model.config._attn_implementation not in ("sdpa", LANE_ATTENTION, TREE_ATTENTION):
        return False
    AttentionInterface.register(LANE_ATTENTION, lane_attention)
    AttentionMaskInterface.register(LANE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(LANE_ATTENTION)
    return True
