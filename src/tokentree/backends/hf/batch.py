"""Many sequences per transformers forward: one packed cache row, a forest of trees, a block mask.

Every sequence of a batch (a *lane*) keeps the cache cells it sees as a list of cell indices into
one shared ``DynamicCache`` row; a forward appends every lane's tree (a forest) behind all cells,
and the 4-D mask lets a node see its own lane's cells and its ancestors only. Positions are each
lane's own. Lanes may share cells: ``n`` samples of one prompt point at the prompt's cells once.

Why one packed row rather than one batch row per sequence (``benchmarks/batch_layout.py``, see
docs/results.md): on a CPU the weights dominate a step, so the rows a forward carries decide its
cost; batch rows pad every tree to the largest one of the step (the planner sizes trees very
unequally) and every context to the longest, while the packed row carries exactly the drafted
nodes. Plain SDPA over the packed mask scores every query against every lane's cells (8 lanes of
300 cells, one node each: 1.45x the cost of 8 rows); lane attention
(:mod:`tokentree.backends.hf.lane_attention`) scores each lane against its own cells only, and then
the packed row costs at most what rows do at every measured size. It also shares prompt cells
between lanes without copies. Models with sliding-window layers keep the full mask (a lane plan
would need a window per layer type).

Cells of rejected nodes and of finished lanes are garbage; the batch drops them (through
:func:`tokentree.backends.hf.kvcache.compact`, the one cache mutator) before its next forward.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...tree import TokenTree
from ..base import LaneSlots, shared_prefix
from . import kvcache
from .backend import PREFILL_CHUNK, check_tree_support
from .lane_attention import LanePlan, use_lane_attention


class PackedLane:
    """One sequence of a :class:`PackedBatch`: the :class:`~tokentree.backends.Backend` contract
    over its cells of the shared cache."""

    max_leaves = None  # a mask takes any tree
    prompt_tail = 64  # see Backend.prompt_tail
    plans_every_tree = False

    def __init__(self, batch: PackedBatch):
        self.batch = batch
        self.vocab_size = batch.vocab_size
        self.cells: list[int] = []  # cache cell of each committed token, in position order
        self._tokens: list[int] = []
        self._lead: list[int] = []  # prompt tokens held back for the next tree's forward
        self._pending: tuple[TokenTree, int] | None = None  # the verified tree and its first cell

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    @property
    def lead(self) -> int:
        """Prompt tokens still to be forwarded (with the next tree)."""
        return len(self._lead)

    @property
    def pending(self) -> TokenTree | None:
        return None if self._pending is None else self._pending[0]

    def reset(self) -> None:
        """Let go of every cell (they become garbage unless another lane shares them)."""
        self.cells, self._tokens, self._lead, self._pending = [], [], [], None

    def adopt(self, source: PackedLane, count: int) -> None:
        """Start from the first ``count`` cached tokens of ``source``: the same cells, no
        forward."""
        if (
            source.batch is not self.batch
            or source._pending is not None
            or count > len(source._tokens)
        ):
            raise ValueError(
                "adopt needs a lane of the same batch, between steps, with that many tokens"
            )
        self.reset()
        self.cells, self._tokens = source.cells[:count], source._tokens[:count]

    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make this lane hold ``token_ids``, reusing its common cached prefix; the last (at most
        ``defer``) missing tokens go with the next tree's forward."""
        token_ids = [int(t) for t in token_ids]
        shared = shared_prefix(self._tokens, token_ids)
        self.cells, self._tokens, self._pending = self.cells[:shared], self._tokens[:shared], None
        self._lead = []
        forwarded = len(token_ids) - min(defer, len(token_ids) - shared)
        for start in range(shared, forwarded, PREFILL_CHUNK):
            chunk = token_ids[start : min(start + PREFILL_CHUNK, forwarded)]
            self.batch.forward([self], [TokenTree.chain(chunk[0], chunk[1:])], logits=False)
            self.commit(range(len(chunk)))
        self._lead = token_ids[forwarded:]

    def verify(self, tree: TokenTree) -> torch.Tensor:
        return self.batch.forward([self], [tree])[0]

    def commit(self, nodes: Sequence[int]) -> None:
        if self._pending is None:
            raise RuntimeError("commit called without a verified tree")
        tree, first = self._pending
        self.cells.extend(first + i for i in nodes)
        self._tokens.extend(tree.tokens[i] for i in nodes)
        self._pending = None


class PackedBatch(LaneSlots):
    """Up to ``max_batch`` lanes over one transformers model, verified together in one forward
    (:class:`tokentree.backends.base.BatchTarget`)."""

    capacity = None  # no fixed number of cells: the cache grows as lanes need

    def __init__(self, model: torch.nn.Module, max_batch: int):
        check_tree_support(model)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        config = model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        layer_types = set(getattr(config, "layer_types", None) or [])
        self.sliding_window = config.sliding_window if "sliding_attention" in layer_types else None
        # attention over each lane's own cells (sliding-window layers would need a window per layer
        # type)
        self.lane_attention = self.sliding_window is None and use_lane_attention(self.model)
        self.cache = kvcache.new_cache()
        self.cell_positions = torch.empty(
            0, dtype=torch.long
        )  # [cells] each cell's position in its lane
        self.lanes = [PackedLane(self) for _ in range(max_batch)]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def verify_many(self, slots: Sequence[int], trees: Sequence[TokenTree]) -> list[torch.Tensor]:
        """Each slot's tree in one forward; each tree's [n_i, V] float32 logits."""
        return self.forward([self.lanes[slot] for slot in slots], trees)

    def clear(self) -> None:
        self.reset_lanes()
        self.cache = kvcache.new_cache()
        self.cell_positions = torch.empty(0, dtype=torch.long)

    def spare_cells(self, owed: int) -> int | None:
        return None

    @torch.inference_mode()
    def forward(self, lanes: Sequence[PackedLane], trees: Sequence[TokenTree], logits: bool = True):
        """Forward every lane's tree (behind its held-back lead) in one call; the trees' logits, or
        None with ``logits=False`` (a prefill, which keeps only one row's)."""
        if any(lane._pending is not None for lane in self.lanes):
            raise RuntimeError(
                "a lane's verified tree is not committed yet (verify called twice without commit)"
            )
        self._collect()
        cells = kvcache.length(self.cache)
        joined = [tree.behind(lane._lead) for lane, tree in zip(lanes, trees, strict=True)]
        positions = torch.cat([t.positions(len(lane._tokens)) for lane, t in zip(lanes, joined)])
        out = self.model(
            input_ids=torch.tensor([[tok for t in joined for tok in t.tokens]], device=self.device),
            position_ids=positions.to(self.device)[None],
            attention_mask=self._mask(lanes, joined, cells, positions),
            **{kvcache.cache_argument(self.model): self.cache},
            use_cache=True,
            logits_to_keep=0 if logits else 1,
            **({"lanes": self._plan(lanes, joined, cells)} if self.lane_attention else {}),
        )
        self.cell_positions = torch.cat([self.cell_positions, positions])
        rows, first = [], cells
        for lane, tree, full in zip(lanes, trees, joined):
            lead = len(full) - len(tree)
            lane.cells.extend(range(first, first + lead))
            lane._tokens.extend(lane._lead)
            lane._lead, lane._pending = [], (tree, first + lead)
            rows.append((first - cells + lead, len(tree)))
            first += len(full)
        if not logits:
            return None
        table = out.logits[0]
        return [table[begin : begin + n].float() for begin, n in rows]

    def _mask(
        self,
        lanes: Sequence[PackedLane],
        trees: Sequence[TokenTree],
        cells: int,
        positions: torch.Tensor,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive [1, 1, Q, cells + Q] mask: a node sees its lane's cells and its own ancestors
        (and, on sliding-window layers, only keys less than the window behind it)."""
        queries = len(positions)
        visible = torch.zeros(queries, cells + queries, dtype=torch.bool)
        begin = 0
        for lane, tree in zip(lanes, trees):
            end = begin + len(tree)
            if lane.cells:
                visible[begin:end, lane.cells] = True
            visible[begin:end, cells + begin : cells + end] = tree.ancestor_mask
            begin = end
        full = self._additive(visible)
        if self.sliding_window is None:
            return full
        keys = torch.cat([self.cell_positions, positions])
        near = (positions[:, None] - keys[None, :]) < self.sliding_window
        return {"full_attention": full, "sliding_attention": self._additive(visible & near)}

    def _plan(
        self, lanes: Sequence[PackedLane], trees: Sequence[TokenTree], cells: int
    ) -> LanePlan:
        """What lane attention needs (see :class:`LanePlan`): each lane's queries, the keys they see
        (its cells, then its tree's own rows) and their ancestry."""
        n, k = (
            max(len(t) for t in trees),
            max(len(lane.cells) + len(t) for lane, t in zip(lanes, trees)),
        )
        queries = torch.zeros(len(lanes), n, dtype=torch.long)
        keys = torch.zeros(len(lanes), k, dtype=torch.long)
        visible = torch.zeros(len(lanes), n, k, dtype=torch.bool)
        visible[:, :, 0] = True  # padding queries see one key; real ones are set below
        rows, begin = [], 0
        for i, (lane, tree) in enumerate(zip(lanes, trees)):
            size, seen = len(tree), len(lane.cells)
            queries[i] = begin
            queries[i, :size] = torch.arange(begin, begin + size)
            keys[i, : seen + size] = torch.tensor(
                lane.cells + list(range(cells + begin, cells + begin + size))
            )
            visible[i, :size, :seen] = True
            visible[i, :size, seen : seen + size] = tree.ancestor_mask
            visible[i, :size, seen + size :] = False
            rows.extend(range(i * n, i * n + size))
            begin += size
        mask = self._additive(visible)[0, 0][:, None]  # [B, 1, n, k]
        return LanePlan(
            queries.to(self.device),
            keys.to(self.device),
            mask,
            torch.tensor(rows, device=self.device),
        )

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        dtype = self.model.dtype
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(
            ~visible, torch.finfo(dtype).min
        )
        return mask[None, None].to(self.device)

    def _collect(self) -> None:
        """Drop cells no lane holds (rejected nodes, finished lanes), keeping the rest in order."""
        cells = kvcache.length(self.cache)
        live = torch.zeros(cells, dtype=torch.bool)
        for lane in self.lanes:
            if lane.cells:
                live[lane.cells] = True
        if bool(live.all()):
            return
        keep = live.nonzero().squeeze(1)
        gap = int((~live).nonzero()[0])
        kvcache.compact(self.cache, gap, (keep[gap:] - gap).tolist())
        self.cell_positions = self.cell_positions[keep]
        moved = torch.full((cells,), -1, dtype=torch.long)
        moved[keep] = torch.arange(len(keep))
        for lane in self.lanes:
            if lane.cells and lane.cells[-1] >= gap:
                lane.cells = moved[lane.cells].tolist()
