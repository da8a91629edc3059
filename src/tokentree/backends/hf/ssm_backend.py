"""Transformers backend for state-space models and SSM/attention hybrids (STree).

Prefill runs the model's own forward (its chunked scan). A tree runs through the model's own
modules layer by layer: state-space layers through :func:`.ssm.mixer.tree_mixer` (every
node along its own root path, in one pass), attention layers under the tree's 4-D mask. Commit
advances each state-space layer's conv and recurrent states along the accepted path (from what the
tree pass kept) and compacts the attention layers' KV cache.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch

from ...errors import UnsupportedModelError
from ...tree import TokenTree
from ..base import TreeBook, shared_prefix
from . import kvcache
from .backend import MASKABLE_ATTENTION, PREFILL_CHUNK, tree_attention_mask
from .ssm.families import SSMFamily, family_of, layer_types, model_type
from .ssm.mixer import MixerTrace, TreeGeometry, empty_states, tree_mixer
from .ssm.scan import path_state

LINEAR = "linear_attention"


def is_state_space(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a state-space family tokentree verifies trees on."""
    return family_of(model) is not None


class SSMBackend(TreeBook):
    """A Mamba-2 or hybrid causal LM and its cache (see :class:`tokentree.backends.Backend`)."""

    max_leaves = None

    def __init__(self, model: torch.nn.Module):
        family = family_of(model)
        if family is None:
            raise UnsupportedModelError(f"model type '{model_type(model)}' is not a known SSM")
        self.family: SSMFamily = family
        kvcache.require_full_transformers("a state-space (Mamba-2) target")
        self.model = model.eval()
        self.kinds = layer_types(model)
        self.hybrid = any(kind != LINEAR for kind in self.kinds)
        if self.hybrid and model.config._attn_implementation not in MASKABLE_ATTENTION:
            model.set_attn_implementation("sdpa")
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        self.body = getattr(model, family.body)
        mixers = [self._mixer(i) for i, kind in enumerate(self.kinds) if kind == LINEAR]
        self.width = mixers[0].conv1d.kernel_size[0]
        self.reset()

    def _mixer(self, index: int) -> torch.nn.Module:
        return getattr(self.body.layers[index], self.family.mixer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self) -> None:
        self.cache = kvcache.new_state_cache(self.model.config)
        self._tokens: list[int] = []
        self._pending: TokenTree | None = None
        self._traces: dict[int, MixerTrace] = {}

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold ``token_ids``. A recurrent state cannot be rewound: unless the
        cached tokens are a prefix of ``token_ids``, prefill starts over."""
        token_ids = [int(t) for t in token_ids]
        if shared_prefix(self._tokens, token_ids) < len(self._tokens):
            self.reset()
        self._pending, self._traces = None, {}
        for start in range(len(self._tokens), len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[start : start + PREFILL_CHUNK]
            self.model(
                input_ids=torch.tensor([chunk], device=self.device),
                position_ids=torch.arange(start, start + len(chunk), device=self.device)[None],
                **{kvcache.cache_argument(self.model): self.cache},
                use_cache=True,
                logits_to_keep=1,
            )
            self._tokens.extend(chunk)

    def verify(self, tree: TokenTree) -> torch.Tensor:
        return self.grow(tree, 0)

    @torch.inference_mode()
    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Score every node of ``tree`` (only whole trees: ``start`` must be 0). Returns [n, V]."""
        if self._pending is not None:
            raise RuntimeError("verify called twice without commit")
        if start:
            raise UnsupportedModelError("a state-space model verifies whole trees, not levels")
        prefix = len(self._tokens)
        geometry = TreeGeometry(
            tree.ancestor_mask.to(self.device), tree.ancestor_table(self.width).to(self.device)
        )
        positions = tree.positions(prefix).to(self.device)[None]
        hidden = getattr(self.body, self.family.embeddings)(
            torch.tensor([tree.tokens], device=self.device)
        )
        rotary, mask = None, None
        if self.hybrid:
            rotary = getattr(self.body, self.family.rotary)(hidden, positions)
            mask = tree_attention_mask(tree, prefix, self.model.dtype, device=self.device)
        traces: dict[int, MixerTrace] = {}
        for index, (layer, kind) in enumerate(zip(self.body.layers, self.kinds)):
            if kind == LINEAR:
                run = partial(self._run_mixer, index, geometry, traces)
                hidden = self.family.linear_layer(layer, hidden, run)
                continue
            out = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                **{kvcache.cache_argument(layer): self.cache},
                use_cache=True,
                position_embeddings=rotary,
            )
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = getattr(self.body, self.family.final_norm)(hidden)
        head = self.model.get_output_embeddings()
        self._pending, self._traces = tree, traces
        return head(hidden.to(head.weight.dtype))[0].float()

    def _run_mixer(
        self,
        index: int,
        geometry: TreeGeometry,
        traces: dict[int, MixerTrace],
        mixer: torch.nn.Module,
        hidden: torch.Tensor,
    ) -> torch.Tensor:
        """One state-space layer's mixer over the tree ([1, n, D] -> [1, n, D]); keeps its
        trace."""
        states = kvcache.linear_states(self.cache, index)
        conv, ssm = states if states is not None else empty_states(mixer, hidden.dtype)
        out, traces[index] = tree_mixer(mixer, hidden[0], geometry, conv, ssm)
        return out[None]

    @torch.inference_mode()
    def commit(self, nodes: Sequence[int]) -> None:
        tree = self._pending
        if tree is None:
            raise RuntimeError("commit called without a verified tree")
        path = list(nodes)
        if path != tree.path_to(path[-1]):
            raise ValueError(f"commit takes a root path of the tree, got {path}")
        for index, trace in self._traces.items():
            states = kvcache.linear_states(self.cache, index)
            mixer = self._mixer(index)
            ssm = states[1] if states is not None else empty_states(mixer, trace.x.dtype)[1]
            state = path_state(trace.x, trace.dt, trace.B, trace.cum, path, ssm.float())
            conv_inputs = trace.conv_inputs[torch.tensor(path, device=self.device)].T
            kvcache.advance_linear(self.cache, index, conv_inputs, state, self.width)
        kvcache.compact(self.cache, len(self._tokens), path)
        self._tokens.extend(tree.tokens[i] for i in path)
        self._pending, self._traces = None, {}
