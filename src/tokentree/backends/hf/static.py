"""A transformers target over a preallocated KV cache with fixed forward shapes (--static-cache).

Each tree forward is padded to the next bucket (1, 2, 4, 8, ... nodes) and its mask spans every
slot of the cache, so a bucket's forward has the same shapes at every step and the cache tensors
never move: what CUDA graphs need. With ``compile`` the tree forward runs through
``torch.compile(mode="reduce-overhead")``, which on a GPU captures one CUDA graph per bucket (the
gpt-fast recipe); prompts are prefilled eagerly. Cache layout: slot = position of a committed token;
a forward of tree nodes ``[start, n)`` writes slots ``prefix + start ...`` (its padding rows after
them, stale once the step is committed); :mod:`.kvcache` moves an accepted path into place.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...errors import TokentreeError, UnsupportedModelError
from ...tree import TokenTree
from ..base import StaticConfig, TreeBook, bucket, check_extends, shared_prefix
from . import kvcache
from .backend import PREFILL_CHUNK, check_tree_support


def static_tree_mask(
    ancestors: torch.Tensor, prefix: int, rows: int, slots: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask [1, 1, rows, slots] for a forward of the last m of a tree's n nodes.

    ``ancestors``: [m, n] bool, row i = node n - m + i's ancestor-or-self mask over the tree, whose
    node j sits in slot prefix + j. Rows see every slot before ``prefix`` and their ancestors;
    padding rows (m <= i < rows) the prefix and their own slot; every other slot is hidden.
    """
    m, n = ancestors.shape
    visible = torch.zeros(rows, slots, dtype=torch.bool, device=ancestors.device)
    visible[:, :prefix] = True
    visible[:m, prefix : prefix + n] = ancestors
    padding = torch.arange(m, rows, device=ancestors.device)
    visible[padding, prefix + n - m + padding] = True
    mask = torch.zeros(rows, slots, dtype=dtype, device=ancestors.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


class StaticHFBackend(TreeBook):
    """A transformers causal LM plus a static KV cache (see :class:`tokentree.backends.Backend`);
    full-attention models only."""

    max_leaves = None

    def __init__(self, model: torch.nn.Module, config: StaticConfig):
        check_tree_support(model)
        text = model.config.get_text_config()
        if set(getattr(text, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            raise UnsupportedModelError(
                f"--static-cache takes full-attention models only; model type "
                f"'{text.model_type}' has sliding-window layers (leave --static-cache out)"
            )
        self.model = model.eval()
        self.config = config
        self.vocab_size = int(text.vocab_size)
        self.cache = kvcache.new_static_cache(model.config, config.slots, model.dtype, model.device)
        self._forward = (
            torch.compile(model, mode="reduce-overhead", fullgraph=True, dynamic=False)
            if config.compile
            else model
        )
        self._tokens: list[int] = []
        self._pending: TokenTree | None = None
        self._lead: list[int] = []  # prefill tokens held back for the next forward (see prefill)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self) -> None:
        """Forget every cached token (the slots stay allocated)."""
        self._tokens, self._pending, self._lead = [], None, []

    def _check_room(self, needed: int) -> None:
        if needed > self.config.slots:
            raise TokentreeError(
                f"{needed} tokens do not fit the static cache of {self.config.slots} "
                "(raise --static-cache)"
            )

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold ``token_ids``, reusing the common cached prefix; the last (at most
        ``defer``) missing tokens are held back and forwarded with the next tree, in its bucket
        (a draft model's catch-up then takes no forward of its own)."""
        token_ids = [int(t) for t in token_ids]
        self._check_room(len(token_ids) + 1)
        shared = shared_prefix(self._tokens, token_ids)
        self._tokens, self._pending = self._tokens[:shared], None
        held = min(defer, len(token_ids) - shared)
        forwarded = len(token_ids) - held
        self._lead = token_ids[forwarded:]
        for start in range(shared, forwarded, PREFILL_CHUNK):
            chunk = token_ids[start : min(start + PREFILL_CHUNK, forwarded)]
            causal = torch.ones(len(chunk), len(chunk), dtype=torch.bool, device=self.device)
            self._run(self.model, chunk, torch.arange(start, start + len(chunk)), causal.tril())
            self._tokens.extend(chunk)

    @torch.inference_mode()
    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]`` (the previous call forwarded ``tree[:start]``), padded to
        their bucket. Returns [n - start, V] float32 logits."""
        check_extends(self._pending, tree, start)
        if start == 0 and self._lead:
            return self._grow_after_lead(tree)
        prefix, rows = len(self._tokens), len(tree) - start
        self._check_room(prefix + start + bucket(rows))
        ancestors = tree.ancestor_mask[start:].to(self.device)
        logits = self._run(
            self._forward,
            tree.tokens[start:],
            tree.positions(prefix)[start:],
            ancestors,
            padded=True,
        )
        self._pending = tree
        return logits

    def _run(self, forward, tokens, positions, ancestors, padded: bool = False) -> torch.Tensor:
        """One forward of ``tokens`` (their ``ancestors`` [m, n] over the slots from
        len(tokens) on), written after the committed tokens; [m, V] float32 logits."""
        prefix, m = len(self._tokens), len(tokens)
        rows = bucket(m) if padded else m
        ids = list(tokens) + [tokens[-1]] * (rows - m)
        positions = torch.cat([positions, positions.new_full((rows - m,), prefix)])
        mask = static_tree_mask(ancestors, prefix, rows, self.config.slots, self.model.dtype)
        kvcache.seek(self.cache, prefix + ancestors.shape[1] - m)
        out = forward(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=positions.to(self.device)[None],
            attention_mask=mask,
            **{kvcache.cache_argument(self.model): self.cache},
            use_cache=True,
        )
        return out.logits[0, :m].to(torch.float32, copy=True)  # a graph reuses its output

    def commit(self, nodes: Sequence[int]) -> None:
        tree = self._pending
        if tree is None:
            raise RuntimeError("commit called without a verified tree")
        kvcache.compact_static(self.cache, len(self._tokens), nodes)
        self._tokens.extend(tree.tokens[i] for i in nodes)
        self._pending = None
