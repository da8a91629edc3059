"""The feature head as a draft backend: it drafts from the target's own features.

:class:`FeatureTap` watches the target's forwards through hooks on the target's own modules (its
inputs, and its final norm's output: the features); nothing is forwarded twice. Before each step
:class:`HeadBackend` finds, in the latest target forward, the feature of the last committed token
(the one that predicted the pending root), and then grows trees from it with the head alone.
Features only steer drafting: a missing or stale one costs accepted tokens, never correctness.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..backends.base import TreeBook, check_extends
from ..tree import TokenTree
from .model import FeatureHead, final_norm


class FeatureTap:
    """The latest forward of ``model``: input ids [1, m], position ids [1, m], its 4-D mask (None
    for a causal forward) and its features [1, m, H]."""

    def __init__(self, model: torch.nn.Module):
        self.ids = self.positions = self.mask = self.features = None
        self._hooks = [
            model.register_forward_pre_hook(self._inputs, with_kwargs=True),
            final_norm(model).register_forward_hook(self._outputs),
        ]

    def _inputs(self, module, args, kwargs) -> None:
        self.ids, self.positions = kwargs.get("input_ids"), kwargs.get("position_ids")
        mask = kwargs.get("attention_mask")
        self.mask = mask.get("full_attention") if isinstance(mask, dict) else mask
        self.features = None

    def _outputs(self, module, args, output) -> None:
        self.features = output

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def feature_after(self, context: Sequence[int]) -> torch.Tensor | None:
        """[H]: the latest forward's feature at ``context``'s last token (position len - 1), from a
        row whose ancestors in that forward are ``context``'s tokens before it; None if none is."""
        if self.features is None or self.ids is None or self.positions is None or not context:
            return None
        ids, positions = self.ids[0].tolist(), self.positions[0].tolist()
        last = len(context) - 1
        for row, (token, position) in enumerate(zip(ids, positions)):
            if position != last or token != context[-1]:
                continue
            if self.mask is None:
                ancestors = list(range(row + 1))  # a causal forward: every earlier row
            else:
                block = self.mask[0, 0, :, -len(ids) :]
                ancestors = (block[row] == 0).nonzero().flatten().tolist()
            if [ids[a] for a in ancestors] == list(context[last + 1 - len(ancestors) :]):
                return self.features[0, row]
        return None


class HeadBackend(TreeBook):
    """A :class:`~tokentree.backends.GrowingBackend` over a feature head: no cache of its own;
    each tree node's feature is the head's step from its parent's (the root's parent: the target's
    feature of the last committed token)."""

    max_leaves = None

    def __init__(self, head: FeatureHead, tap: FeatureTap):
        self.head, self.tap = head, tap
        self.vocab_size = head.shape.vocab_size
        self._tokens: list[int] = []
        self._feature: torch.Tensor | None = None
        self._pending: TokenTree | None = None
        self._node_features: torch.Tensor | None = None  # [len(pending), H]

    @property
    def ready(self) -> bool:
        """Whether the target's feature of the last committed token is known (so it can draft)."""
        return self._feature is not None

    def reset(self) -> None:
        self._tokens, self._feature, self._pending = [], None, None

    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Take the committed tokens; their last one's feature comes from the target's latest
        forward (``defer`` does not apply: nothing is forwarded here)."""
        token_ids = [int(t) for t in token_ids]
        found = self.tap.feature_after(token_ids)
        if found is not None or token_ids != self._tokens:
            self._feature = found
        self._tokens, self._pending = token_ids, None

    @torch.inference_mode()
    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Step the head over nodes ``tree[start:]``, a depth at a time. Returns [n - start, V]
        float32 logits (-inf outside the draft vocabulary)."""
        if self._feature is None:
            raise RuntimeError("the head has no target feature to draft from (see ready)")
        check_extends(self._pending, tree, start)
        features = self._feature.new_empty(len(tree), self._feature.shape[-1])
        if start:
            features[:start] = self._node_features[:start]
        depths = tree.depths
        for depth in sorted({depths[i] for i in range(start, len(tree))}):
            nodes = [i for i in range(start, len(tree)) if depths[i] == depth]
            parents = torch.stack(
                [self._feature if i == 0 else features[tree.parents[i]] for i in nodes]
            )
            tokens = torch.tensor([tree.tokens[i] for i in nodes], device=parents.device)
            features[nodes] = self.head.step(parents, tokens)
        self._node_features, self._pending = features, tree
        logits = torch.full((len(tree) - start, self.vocab_size), float("-inf"))
        logits[:, self.head.draft_ids.cpu()] = self.head.logits(features[start:]).float().cpu()
        return logits

    def commit(self, nodes: Sequence[int]) -> None:
        """Nothing is cached: the next step reads the target's feature again."""
        self._pending = None
