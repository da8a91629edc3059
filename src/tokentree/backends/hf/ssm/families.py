"""The state-space model families tokentree verifies trees on, and how their layers compose.

A family names where its causal LM keeps the embeddings, layers and final norm, and how a
state-space ("linear_attention") layer wraps its mixer: the residual structure around the mixer,
written once per family, since the mixer's own sequence mixing is what a tree changes. Attention
layers of a hybrid run as the model's own modules under the tree's 4-D mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

MixerRun = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (mixer, [1, n, D]) -> same


def mamba2_block(layer: torch.nn.Module, hidden: torch.Tensor, run: MixerRun) -> torch.Tensor:
    """``Mamba2Block``: norm, mixer, residual (kept in float32 when the config says so)."""
    residual = hidden.float() if layer.residual_in_fp32 else hidden
    return residual + run(layer.mixer, layer.norm(hidden.to(layer.norm.weight.dtype)))


def bamba_linear_layer(layer: torch.nn.Module, hidden: torch.Tensor, run: MixerRun) -> torch.Tensor:
    """``BambaDecoderLayer`` of type linear_attention: norm, mixer, residual, norm, MLP,
    residual."""
    hidden = hidden + run(layer.mamba, layer.input_layernorm(hidden))
    return hidden + layer.feed_forward(layer.pre_ff_layernorm(hidden))


@dataclass(frozen=True)
class SSMFamily:
    """Where a family's parts live (attribute names on the causal LM and its body)."""

    body: str  # the base model inside the causal LM
    embeddings: str
    final_norm: str
    mixer: str  # the state-space mixer inside a linear_attention layer
    linear_layer: Callable[[torch.nn.Module, torch.Tensor, MixerRun], torch.Tensor]
    rotary: str | None = None  # the body's rotary embedding (hybrids with attention layers)


FAMILIES = {
    "mamba2": SSMFamily("backbone", "embeddings", "norm_f", "mixer", mamba2_block),
    "bamba": SSMFamily(
        "model", "embed_tokens", "final_layernorm", "mamba", bamba_linear_layer, "rotary_emb"
    ),
}


def model_type(model: torch.nn.Module) -> str:
    return getattr(model.config.get_text_config(), "model_type", type(model).__name__)


def family_of(model: torch.nn.Module) -> SSMFamily | None:
    """The model's family when tokentree verifies trees on it as a state-space model."""
    return FAMILIES.get(model_type(model))


def layer_types(model: torch.nn.Module) -> list[str]:
    """Per layer: "linear_attention" (a state-space mixer) or "full_attention"."""
    config = model.config.get_text_config()
    return list(config.layer_types)
