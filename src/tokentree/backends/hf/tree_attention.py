"""LongSpec's hybrid tree attention, registered through transformers' attention interface.

Verifying a tree with an explicit 4-D mask scores every node against ``prefix + n`` keys through
the generic masked path, and builds a mask of that size every step. Here the cached prefix and
the tree are attended separately: the prefix with the fast kernel and no mask (every node sees
all of it; on a sliding-window layer only the last ``window`` keys, under a mask of that width),
the tree as a small masked block over its own ``n`` keys, and the two merged by their log-sum-exps
(``out = out_p * sigmoid(lse_p - lse_t) + out_t * sigmoid(lse_t - lse_p)``). Exact: it is the same
softmax over the same keys, split in two. Without a :class:`TreeBlock` it is transformers' SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TREE_ATTENTION = "tokentree_tree"


@dataclass(frozen=True)
class TreeBlock:
    """The tree of a forward: ``ancestors`` [m, t] bool (query i, the tree's node t - m + i, sees
    node j) and ``positions`` [t] long (the nodes' positions). The forward's queries are the tree's
    last m nodes (all of them, or a level grown onto nodes forwarded before); the last t keys of
    the cache are the tree's nodes and the keys before them are the committed tokens at positions
    ``positions[0] - prefix .. positions[0] - 1``."""

    ancestors: torch.Tensor
    positions: torch.Tensor


def _attend(q, k, v, scale: float, visible: torch.Tensor | None):
    """Softmax attention with its log-sum-exp: q [G, m, D], k/v [G, K, D], visible [m, K] bool or
    None. Returns out [G, m, Dv] (q's dtype) and lse [G, m] float32."""
    if visible is None and q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q[None], k[None], v[None], 0.0, False, attn_mask=None, scale=scale
        )
        return out[0], lse[0]
    scores = torch.einsum("gmd,gkd->gmk", q.float(), k.float()) * scale
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = scores.logsumexp(-1)  # -inf where a query sees none of these keys: its out is 0
    finite = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    out = torch.einsum("gmk,gkd->gmd", torch.exp(scores - finite[..., None]), v.float())
    return out.to(q.dtype), lse


def tree_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    tree_block: TreeBlock | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, H, m, D], key/value [1, KVH, prefix + t, D] -> ([1, m, H, D], None).

    With ``tree_block`` the last t keys are the tree's; query heads are packed as more queries of
    their key/value head ([KVH, groups * m, D]), so grouped heads are never expanded."""
    if tree_block is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
    heads, m, dim = query.shape[1:]
    kv_heads, nodes = key.shape[1], tree_block.ancestors.shape[1]
    prefix, groups = key.shape[2] - nodes, heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    q = query[0].reshape(kv_heads, groups * m, dim)
    positions = tree_block.positions.to(query.device)
    at = positions[nodes - m :]  # the queries' positions
    tree_visible = tree_block.ancestors.to(query.device)
    start, window = 0, None
    if sliding_window is not None:  # key p' is visible to a node at p when p - p' < window
        first = int(tree_block.positions[0]) - prefix  # the first cached key's position
        start = max(0, prefix - sliding_window + 1)
        keys_at = torch.arange(first + start, first + prefix, device=query.device)
        window = (at[:, None] - keys_at[None, :] < sliding_window).repeat(groups, 1)
        tree_visible = tree_visible & (at[:, None] - positions[None, :] < sliding_window)
    out_t, lse_t = _attend(
        q, key[0, :, prefix:], value[0, :, prefix:], scale, tree_visible.repeat(groups, 1)
    )
    if start < prefix:
        out_p, lse_p = _attend(q, key[0, :, start:prefix], value[0, :, start:prefix], scale, window)
        share = torch.sigmoid(lse_p - lse_t)[..., None]  # [KVH, groups * m, 1]: the prefix's
        out_t = (out_p.float() * share + out_t.float() * (1 - share)).to(query.dtype)
    return out_t.reshape(heads, m, -1).transpose(0, 1)[None], None


def use_tree_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` from SDPA to the hybrid tree attention (SDPA itself unless a tree block
    is passed); False, changing nothing, for other attention implementations."""
    if model.config._attn_implementation not in ("sdpa", TREE_ATTENTION):
        return False
    AttentionInterface.register(TREE_ATTENTION, tree_attention)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(TREE_ATTENTION)
    return True
