"""The math of verifying a tree through a Mamba-2 mixer (STree): pure functions, no modules.

A state-space layer has no KV cache to mask; along a tree the recurrence runs down every branch.
In the SSD (state space duality) form it does so in one pass: a node's accumulated log-decay is its
own plus its parent's, so ``cum[i] = sum of dA over i's ancestors-or-self``, and node j feeds node i
with weight ``exp(cum[i] - cum[j])`` exactly when j is an ancestor-or-self of i. The short causal
convolution reads its window along the same ancestors. After acceptance the committed state is the
accepted path's, computed from what the tree pass kept (:func:`path_state`).

Shapes: n tree nodes, C convolution channels, K convolution width, H heads, P head size, N state
size.
"""

from __future__ import annotations

from typing import Sequence

import torch


def tree_conv(
    inputs: torch.Tensor,
    table: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Causal depthwise convolution of every node over its own ancestors.

    inputs:     [n, C] the nodes' convolution inputs.
    table:      [n, K] ``TokenTree.ancestor_table(K)``: node ids, or ``-j`` for the j-th last
                committed input.
    conv_state: [C, K] the last K committed inputs, oldest first.
    weight:     [C, K] (tap K - 1 multiplies the node itself); bias: [C] or None.
    Returns [n, C] before the activation, in the weight's dtype.
    """
    width = weight.shape[1]
    rows = torch.cat([conv_state.T, inputs]).to(weight.dtype)  # row K - j: j-th last committed
    window = rows[(table + width).flip(1).to(inputs.device)]  # [n, K, C], oldest first
    out = torch.einsum("nkc,ck->nc", window, weight)
    return out if bias is None else out + bias


def tree_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    ancestors: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every node's SSM output, each along its own root path, in one pass (float32 in and out).

    x: [n, H, P]; dt: [n, H] (after bias, softplus and limits); A: [H] (negative); B, C: [n, H, N]
    (groups expanded to heads); D: [H]; ancestors: [n, n] bool (``[i, j]``: j is i or above i);
    state: [H, P, N] the committed state.
    Returns y [n, H, P] and cum [n, H], the log-decay accumulated from the committed state.
    """
    cum = ancestors.to(dt.dtype) @ (dt * A)
    gap = (cum[:, None, :] - cum[None, :, :]).masked_fill(~ancestors[..., None], float("-inf"))
    weights = torch.einsum("ihn,jhn->ijh", C, B) * torch.exp(gap)  # [n, n, H]
    y = torch.einsum("ijh,jhp->ihp", weights, x * dt[..., None])
    y = y + torch.exp(cum)[..., None] * torch.einsum("ihn,hpn->ihp", C, state)
    return y + D[:, None] * x, cum


def path_state(
    x: torch.Tensor,
    dt: torch.Tensor,
    B: torch.Tensor,
    cum: torch.Tensor,
    path: Sequence[int],
    state: torch.Tensor,
) -> torch.Tensor:
    """The SSM state after the nodes of ``path`` (root to its last node), as one-token decoding
    would have left it. x, dt, B, cum as in :func:`tree_ssd`; state: [H, P, N]. Returns
    [H, P, N]."""
    index = torch.tensor(list(path), device=x.device)
    last = cum[index[-1]]  # [H]
    weight = torch.exp(last - cum[index]) * dt[index]  # [L, H]
    fed = torch.einsum("lh,lhp,lhn->hpn", weight, x[index], B[index])
    return torch.exp(last)[:, None, None] * state + fed
