"""A Mamba-2 mixer (transformers' ``Mamba2Mixer`` / ``BambaMixer``) run over a tree, as a
function of the module's own parameters (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).

The module is not replaced or patched: :func:`tree_mixer` reads its weights and calls its
projections and gated norm; the sequence mixing along the tree is :mod:`.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from .scan import tree_conv, tree_ssd


@dataclass(frozen=True)
class MixerTrace:
    """What one mixer's tree pass keeps to commit an accepted path afterwards.

    conv_inputs: [n, C] convolution inputs; x: [n, H, P], dt: [n, H], B: [n, H, N], cum: [n, H]
    (float32, as in :func:`tokentree.backends.hf.ssm.scan.tree_ssd`).
    """

    conv_inputs: torch.Tensor
    x: torch.Tensor
    dt: torch.Tensor
    B: torch.Tensor
    cum: torch.Tensor


@dataclass(frozen=True)
class TreeGeometry:
    """The tree's structure as the mixers read it: ``ancestors`` [n, n] bool and ``table`` [n, K]
    (see ``TokenTree.ancestor_mask`` and ``TokenTree.ancestor_table``)."""

    ancestors: torch.Tensor
    table: torch.Tensor


def mixer_shape(mixer: torch.nn.Module) -> tuple[int, int, int, int, int]:
    """(heads, head size, groups, state size, conv width) of a Mamba-2 mixer."""
    return (
        mixer.num_heads,
        mixer.head_dim,
        mixer.n_groups,
        mixer.ssm_state_size,
        mixer.conv1d.kernel_size[0],
    )


def empty_states(mixer: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero conv [C, K] and SSM [H, P, N] states: a mixer that has seen nothing."""
    heads, head_dim, _, state_size, width = mixer_shape(mixer)
    device = mixer.A_log.device
    conv = torch.zeros(mixer.conv_dim, width, dtype=dtype, device=device)
    return conv, torch.zeros(heads, head_dim, state_size, dtype=torch.float32, device=device)


def tree_mixer(
    mixer: torch.nn.Module,
    hidden: torch.Tensor,
    geometry: TreeGeometry,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, MixerTrace]:
    """The mixer's output for every node of a tree, each as if decoded along its own path.

    hidden: [n, D] the mixer's input; conv_state: [C, K]; ssm_state: [H, P, N] (committed).
    Returns [n, D] and the trace :func:`tokentree.backends.hf.ssm.scan.path_state` commits from.
    """
    n = hidden.shape[0]
    heads, head_dim, groups, state_size, _ = mixer_shape(mixer)
    inner = mixer.intermediate_size
    gate, conv_inputs, dt = mixer.in_proj(hidden).split([inner, mixer.conv_dim, heads], dim=-1)
    weight = mixer.conv1d.weight[:, 0, :]
    mixed = tree_conv(conv_inputs, geometry.table, conv_state, weight, mixer.conv1d.bias)
    mixed = ACT2FN[mixer.activation](mixed).to(hidden.dtype)
    x, B, C = mixed.split([inner, groups * state_size, groups * state_size], dim=-1)
    x = x.reshape(n, heads, head_dim).float()
    B = B.reshape(n, groups, state_size).repeat_interleave(heads // groups, dim=1).float()
    C = C.reshape(n, groups, state_size).repeat_interleave(heads // groups, dim=1).float()
    dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype)).clamp(*mixer.time_step_limit).float()
    A = -torch.exp(mixer.A_log.float())
    y, cum = tree_ssd(x, dt, A, B, C, mixer.D.float(), geometry.ancestors, ssm_state.float())
    y = mixer.norm(y.to(hidden.dtype).reshape(n, inner), gate)
    out = mixer.out_proj(y.to(hidden.dtype))
    return out, MixerTrace(conv_inputs, x, dt, B, cum)
