"""PyTorch + transformers backend: tree verification with an explicit 4-D attention mask."""

from __future__ import annotations

from typing import Sequence

import torch

from ...errors import TokentreeError, UnsupportedModelError
from ...tree import TokenTree
from ..base import TreeBook, check_extends, shared_prefix
from . import kvcache
from .lane_attention import LANE_ATTENTION
from .ssm.families import FAMILIES
from .tree_attention import TREE_ATTENTION, TreeBlock, use_tree_attention

SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}
MASKABLE_ATTENTION = ("sdpa", "eager", LANE_ATTENTION, TREE_ATTENTION)
HYBRID_FROM = 1024  # cached tokens from which a tree's attention splits prefix and tree (LongSpec)
PREFILL_CHUNK = 2048  # prompt tokens per prefill forward: 512 cost 10-15% more than one shot at
# 8k-16k tokens (1.5B bf16, 2-core CPU); 2048 matches or beats one shot with a bounded peak
WINDOWED_FROM = 512  # sliding windows from this size on keep only the window (any level a draft
# model grows up to the planner's 512 nodes still sees its whole tree)


def tree_attention_mask(
    tree: TokenTree,
    prefix: int,
    dtype: torch.dtype,
    sliding_window: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Additive mask [1, 1, n, prefix + n] on ``device``: every prefix position visible, tree by
    ancestry.

    With ``sliding_window`` a query at position p sees only keys at positions > p - window.
    """
    n = len(tree)
    ancestors = tree.ancestor_mask.to(device)
    visible = torch.cat([torch.ones(n, prefix, dtype=torch.bool, device=device), ancestors], dim=1)
    if sliding_window is not None:
        depths = torch.tensor(tree.depths, device=device)
        key_pos = torch.cat([torch.arange(prefix, device=device), prefix + depths])
        query_pos = prefix + depths
        visible &= (query_pos[:, None] - key_pos[None, :]) < sliding_window
    mask = torch.zeros(n, prefix + n, dtype=dtype, device=device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


def check_tree_support(model: torch.nn.Module) -> None:
    """Raise UnsupportedModelError unless ``model`` can verify a tree with a custom 4-D mask."""
    config = model.config.get_text_config()
    kind = getattr(config, "model_type", type(model).__name__)
    if kind in FAMILIES:
        raise UnsupportedModelError(
            f"model type '{kind}' is a state-space model: it verifies trees one sequence at a "
            "time (max_batch 1)"
        )
    if getattr(model, "_is_stateful", False):
        raise UnsupportedModelError(
            f"model type '{kind}' keeps a recurrent state; tree verification needs a KV cache"
        )
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not layer_types <= SUPPORTED_LAYER_TYPES:
        odd = sorted(layer_types - SUPPORTED_LAYER_TYPES)
        raise UnsupportedModelError(
            f"model type '{kind}' has attention layers {odd} that cannot take a tree mask"
        )
    if model.config._attn_implementation not in MASKABLE_ATTENTION:
        try:
            model.set_attn_implementation("sdpa")
        except Exception as exc:  # noqa: BLE001 - transformers raises several types here
            raise UnsupportedModelError(
                f"model type '{kind}' uses attention '{model.config._attn_implementation}', which "
                "cannot take a "
                f"tree mask, and cannot switch to sdpa: {exc}"
            ) from exc


class HFBackend(TreeBook):
    """A transformers causal LM plus its KV cache (see :class:`tokentree.backends.Backend`)."""

    max_leaves = None  # a 4-D mask takes any tree

    def __init__(
        self, model: torch.nn.Module, hybrid_from: int = HYBRID_FROM, windowed: bool | None = None
    ):
        """``hybrid_from``: cached tokens from which trees take the hybrid tree attention;
        ``windowed``: sliding-window layers keep only their window (then every forward takes the
        hybrid attention; default: when the window is at least WINDOWED_FROM)."""
        check_tree_support(model)
        self.model = model.eval()
        hybrid = use_tree_attention(model)
        config = model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        layer_types = set(getattr(config, "layer_types", None) or [])
        self.sliding_window = config.sliding_window if "sliding_attention" in layer_types else None
        if windowed is None:
            windowed = (self.sliding_window or 0) >= WINDOWED_FROM
        self.windowed = hybrid and windowed and self.sliding_window is not None
        if self.windowed:
            kvcache.require_full_transformers("a sliding-window model (a windowed cache)")
        self.hybrid_from = 0 if self.windowed else hybrid_from
        self.cache = self._new_cache()
        self._tokens: list[int] = []
        self._pending: TokenTree | None = None
        self._lead: list[int] = []  # prefill tokens held back for the next forward (see prefill)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _new_cache(self):
        if self.windowed:
            return kvcache.new_windowed_cache(self.model.config)
        return kvcache.new_cache()

    def reset(self) -> None:
        """Drop the whole cache (the next prefill starts from nothing)."""
        self.cache = self._new_cache()
        self._tokens, self._lead = [], []
        self._pending = None

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold ``token_ids``, reusing the common cached prefix.

        With ``defer`` > 0 the last (at most ``defer``) missing tokens are held back and forwarded
        together with the next tree: one forward fewer (a prompt's tail goes with the first tree;
        a draft model catches up on the last accepted tokens while it drafts).
        """
        token_ids = [int(t) for t in token_ids]
        shared = shared_prefix(self._tokens, token_ids)
        try:
            kvcache.crop(self.cache, shared)
        except kvcache.CacheRollbackError:  # a windowed layer dropped what the prompt shares
            self.reset()
            shared = 0
        self._tokens = self._tokens[:shared]
        self._pending = None
        held = min(defer, len(token_ids) - shared)
        self._lead = token_ids[len(token_ids) - held :] if held else []
        forwarded = len(token_ids) - held
        for start in range(shared, forwarded, PREFILL_CHUNK):
            chunk = token_ids[start : min(start + PREFILL_CHUNK, forwarded)]
            self.model(
                input_ids=torch.tensor([chunk], device=self.device),
                position_ids=torch.arange(start, start + len(chunk), device=self.device)[None],
                **{kvcache.cache_argument(self.model): self.cache},
                use_cache=True,
                logits_to_keep=1,
            )
            kvcache.bound(self.cache)
            self._tokens.extend(chunk)

    @torch.inference_mode()
    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]``; nodes ``tree[:start]`` were forwarded by the previous
        call.

        Lets a draft model grow a tree level by level with one forward per level. Returns
        [n - start, V] float32 logits; ``commit`` then keeps forwarded nodes only.
        """
        check_extends(self._pending, tree, start)
        if start == 0 and self._lead:
            return self._grow_after_lead(tree)
        if self.windowed and start >= self.sliding_window:  # the layers return window - 1 + m
            raise TokentreeError(  # keys: the tree's earlier nodes would be cut off
                f"cannot grow a tree of {start} nodes by a level: this model's sliding window "
                f"is {self.sliding_window} tokens; use a smaller budget"
            )
        prefix = len(self._tokens)
        hybrid = self._hybrid_block(tree, prefix, start)
        mask = self._mask(tree, prefix) if hybrid is None else hybrid[1]
        if mask is not None and hybrid is None:
            mask = (
                {k: m[:, :, start:] for k, m in mask.items()}
                if isinstance(mask, dict)
                else mask[:, :, start:]
            )
        extra = {} if hybrid is None else {"tree_block": hybrid[0]}
        out = self.model(
            input_ids=torch.tensor([tree.tokens[start:]], device=self.device),
            position_ids=tree.positions(prefix)[start:].to(self.device)[None],
            attention_mask=mask,
            **{kvcache.cache_argument(self.model): self.cache},
            use_cache=True,
            **extra,
        )
        self._pending = tree
        return out.logits[0].float()

    def _hybrid_block(self, tree: TokenTree, prefix: int, start: int):
        """(TreeBlock, a placeholder 4-D mask) when this forward of ``tree[start:]`` takes the
        hybrid tree attention (at least ``hybrid_from`` cached tokens), else None."""
        if self.model.config._attn_implementation != TREE_ATTENTION:
            if self.windowed:  # (batch backends switch only models without sliding layers)
                raise RuntimeError("a windowed cache needs the tokentree_tree attention")
            return None
        if prefix < self.hybrid_from:
            return None
        ancestors = tree.ancestor_mask[start:].to(self.device)
        block = TreeBlock(ancestors, tree.positions(prefix))
        rows = len(tree) - start
        small = torch.zeros(1, 1, rows, rows, dtype=self.model.dtype, device=self.device)
        placeholder = (
            small if self.sliding_window is None else {k: small for k in SUPPORTED_LAYER_TYPES}
        )  # every layer reads the tree block instead; a 4-D mask stops transformers building one
        return block, placeholder

    def _mask(self, tree: TokenTree, prefix: int) -> torch.Tensor | dict[str, torch.Tensor] | None:
        if len(tree) == 1:
            return None  # one token: the model's own causal (and sliding) mask is exact
        dtype, device = self.model.dtype, self.device
        full = tree_attention_mask(tree, prefix, dtype, device=device)
        if self.sliding_window is None:
            return full
        sliding = tree_attention_mask(tree, prefix, dtype, self.sliding_window, device)
        return {"full_attention": full, "sliding_attention": sliding}

    def commit(self, nodes: Sequence[int]) -> None:
        tree = self._pending
        if tree is None:
            raise RuntimeError("commit called without a verified tree")
        kvcache.compact(self.cache, len(self._tokens), nodes)
        self._tokens.extend(tree.tokens[i] for i in nodes)
        self._pending = None
