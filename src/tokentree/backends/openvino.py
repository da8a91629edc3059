"""OpenVINO backend: a model exported by :mod:`tokentree.backends.openvino_export` verifies a
whole token tree per inference, its KV cache kept inside OpenVINO as state.

The state is a row of *columns*, one per token ever forwarded since the last compaction. A
column holds a committed token or a node a verify rejected; :attr:`OpenVINOBackend.visible` says
which. Rejected columns stay where they are, masked out of every later row (so a commit costs no
data movement), until they are ``junk_limit`` and an eighth of the state, or the context needs
the room: then the
state is rewritten with the committed columns only, in order (the one place that mutates it
besides an inference). Positions are explicit, so a column's place in the state never matters.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import TokentreeError
from ..tree import TokenTree
from .base import TreeBook, check_extends, shared_prefix
from .openvino_export import MODEL_FILE, WEIGHT_FORMATS

OPENVINO_EXTRA = "pip install 'tokentree[openvino]'"
COMPUTE = ("auto", "f32")
MASKED = float(np.finfo(np.float32).min)  # additive mask value of a column a row may not see
PREFILL_CHUNK = 512  # prompt rows per inference


def import_openvino():
    """The ``openvino`` module, or a TokentreeError that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise TokentreeError(f"the openvino backend needs OpenVINO: {OPENVINO_EXTRA}") from exc
    return openvino


@dataclass
class OpenVINOConfig:
    """How OpenVINO runs a model (CLI: ``--ov-weights``, ``--ov-compute``, ``--threads``,
    ``--n-ctx``)."""

    weights: str = "int4"  # int4 (symmetric, groups of 128), int8 (per channel), f16 or f32
    compute: str = "auto"  # auto: OpenVINO's fastest precision on this CPU (bf16 where native);
    # f32: f32 arithmetic and an f32 cache (exact to ~1e-6 against transformers in fp32)
    threads: int | None = None  # None = all cores this process may use
    n_ctx: int = 4096  # state columns at most (prompt + answer + one tree + rejected columns)
    junk_limit: int = 16  # rejected columns the state keeps, at least, before it is compacted
    # (and at least an eighth of its width: measured on an AVX2 EPYC, a rejected column costs each
    # later step ~0.3 ms, a compaction ~0.04 ms per column, so it pays back within a step)

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FORMATS:
            raise TokentreeError(
                f"unknown --ov-weights '{self.weights}': choose {', '.join(WEIGHT_FORMATS)}"
            )
        if self.compute not in COMPUTE:
            raise TokentreeError(f"unknown --ov-compute '{self.compute}': choose auto, f32")
        if self.threads is not None and self.threads < 1:
            raise TokentreeError(f"--threads must be >= 1, got {self.threads}")
        if self.n_ctx < 16:
            raise TokentreeError(f"--n-ctx must be >= 16, got {self.n_ctx}")
        if self.junk_limit < 0:
            raise TokentreeError(f"junk_limit must be >= 0, got {self.junk_limit}")

    @property
    def thread_count(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def properties(self) -> dict[str, str]:
        """OpenVINO CPU properties: one stream for the lowest latency, our thread count."""
        props = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.thread_count),
        }
        if self.compute == "f32":
            props |= {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        return props


class OpenVINOModel:
    """An exported model compiled for the CPU. Each backend over it has its own infer request,
    whose state is that backend's cache (the weights are shared)."""

    def __init__(self, export_dir: str | Path, config: OpenVINOConfig | None = None):
        ov = import_openvino()
        self.path = Path(export_dir)
        self.config = config or OpenVINOConfig()
        core = ov.Core()
        try:
            compiled = core.compile_model(
                str(self.path / MODEL_FILE), "CPU", self.config.properties()
            )
        except RuntimeError as exc:
            raise TokentreeError(f"OpenVINO could not compile {self.path}: {exc}") from exc
        self.compiled = compiled
        self.model_config = json.loads((self.path / "config.json").read_text())
        text = self.model_config.get("text_config", self.model_config)
        self.vocab_size = int(text["vocab_size"])
        self.dtype_name = f"openvino {self.config.weights}"

    @cached_property
    def eos_ids(self) -> frozenset[int]:
        """EOS ids from the generation config, else the model config."""
        for name in ("generation_config.json", "config.json"):
            path = self.path / name
            if path.exists():
                eos = json.loads(path.read_text()).get("eos_token_id")
                if eos is not None:
                    return frozenset([eos] if isinstance(eos, int) else eos)
        return frozenset()

    @property
    def context_limit(self) -> int:
        return self.config.n_ctx

    def new_request(self):
        """An infer request with an empty state (a cache of its own)."""
        return self.compiled.create_infer_request()

    @staticmethod
    def infer(
        request, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray, rows: np.ndarray
    ) -> torch.Tensor:
        """One inference: ``tokens``/``positions`` [m] int64, ``mask`` [m, c + m] float32 additive,
        ``rows`` [k] int64 -> [k, V] float32 logits (a copy). Appends m columns to the state."""
        request.infer(
            {
                "input_ids": tokens[None],
                "position_ids": positions[None],
                "tree_mask": mask[None, None],
                "output_rows": rows,
            }
        )
        return torch.from_numpy(request.get_tensor("logits").data[0].copy())

    @staticmethod
    def keep_columns(request, columns: np.ndarray) -> None:
        """Rewrite every cache state of ``request`` with only ``columns`` (in that order)."""
        import openvino as ov

        if len(columns) == 0:
            request.reset_state()
            return
        for state in request.query_state():
            kept = np.ascontiguousarray(state.state.data[:, :, columns, :])
            state.state = ov.Tensor(kept)


class OpenVINOBackend(TreeBook):
    """The backend contract over an :class:`OpenVINOModel` (see
    :class:`tokentree.backends.Backend`): any tree in one inference, through the tree mask."""

    plans_every_tree = True  # batch costs rise steeply on a CPU: plan every tree
    max_leaves = None  # a mask takes any tree

    def __init__(self, model: OpenVINOModel):
        self.model = model
        self.request = model.new_request()
        self.vocab_size = model.vocab_size
        self.junk_limit = model.config.junk_limit
        self.compactions = 0  # how often the state was rewritten
        self._reset_book()

    def _reset_book(self) -> None:
        self._tokens: list[int] = []
        self._columns: list[int] = []  # the state column of each committed token
        self.visible = np.zeros(0, dtype=bool)  # per state column: holds a committed token
        self._pending: TokenTree | None = None
        self._node_columns: list[int] = []  # the state column of each forwarded pending node
        self._lead: list[int] = []

    @property
    def width(self) -> int:
        """State columns, committed and rejected."""
        return len(self.visible)

    def reset(self) -> None:
        self.request.reset_state()
        self._reset_book()

    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold ``token_ids``, reusing the common cached prefix (later columns are
        masked, and compacted away once they cost); the last (at most ``defer``) missing tokens
        are held back and forwarded with the next tree."""
        token_ids = [int(t) for t in token_ids]
        self._pending, self._node_columns = None, []
        shared = shared_prefix(self._tokens, token_ids)
        self.visible[self._columns[shared:]] = False
        self._tokens, self._columns = self._tokens[:shared], self._columns[:shared]
        held = min(defer, len(token_ids) - shared)
        forwarded = len(token_ids) - held
        self._lead = token_ids[forwarded:]
        self._make_room(forwarded - shared + held + 1)
        for begin in range(shared, forwarded, PREFILL_CHUNK):
            chunk = token_ids[begin : min(begin + PREFILL_CHUNK, forwarded)]
            causal = np.tril(np.ones((len(chunk), len(chunk)), dtype=bool))
            self._forward(chunk, np.arange(begin, begin + len(chunk)), causal, last_only=True)
            self._commit_columns(chunk, range(self.width - len(chunk), self.width))

    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]`` (earlier nodes were forwarded by the previous call);
        returns [n - start, V] float32 logits."""
        check_extends(self._pending, tree, start)
        if start == 0 and self._lead:
            return self._grow_after_lead(tree)
        if start == 0:
            self._make_room(len(tree))
        elif self.width + len(tree) - start > self.model.context_limit:
            raise TokentreeError(
                f"a tree of {len(tree)} nodes does not fit the openvino context of "
                f"{self.model.context_limit} columns (raise --n-ctx)"
            )
        ancestors = tree.ancestor_mask[start:].numpy()  # [m, n]
        first = self.width
        self._node_columns = self._node_columns[:start] + list(
            range(first, first + len(tree) - start)
        )
        logits = self._forward(
            tree.tokens[start:],
            tree.positions(len(self._tokens))[start:].numpy(),
            ancestors,
            columns=self._node_columns,
        )
        self._pending = tree
        return logits

    def _grow_after_lead(self, tree: TokenTree) -> torch.Tensor:
        """Forward the held-back prompt tokens and ``tree`` in one inference; the tree's logits
        (the lead's columns are committed)."""
        lead, self._lead = self._lead, []
        logits = self.grow(tree.behind(lead), 0)
        self._commit_columns(lead, self._node_columns[: len(lead)])
        self._node_columns = self._node_columns[len(lead) :]
        self._pending = tree
        return logits[len(lead) :]

    def commit(self, nodes: Sequence[int]) -> None:
        tree = self._pending
        if tree is None:
            raise RuntimeError("commit called without a verified tree")
        self._commit_columns(
            [tree.tokens[i] for i in nodes], [self._node_columns[i] for i in nodes]
        )
        self._pending, self._node_columns = None, []

    def _commit_columns(self, tokens: Sequence[int], columns: Sequence[int]) -> None:
        self.visible[list(columns)] = True
        self._columns.extend(columns)
        self._tokens.extend(tokens)

    # ------------------------------------------------------------------ state
    def _forward(
        self,
        tokens: Sequence[int],
        positions: np.ndarray,
        sees: np.ndarray,
        columns: Sequence[int] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Append ``tokens`` as new columns. Each row sees the committed columns and, by ``sees``
        [m, len(columns)], the new or pending ``columns`` (default: the m new ones)."""
        m, first = len(tokens), self.width
        columns = list(range(first, first + m)) if columns is None else columns
        mask = np.full((m, first + m), MASKED, dtype=np.float32)
        mask[:, :first][:, self.visible] = 0.0
        mask[:, columns] = np.where(sees, np.float32(0.0), np.float32(MASKED))
        rows = np.array([m - 1]) if last_only else np.arange(m)
        logits = self.model.infer(
            self.request,
            np.asarray(tokens, dtype=np.int64),
            np.asarray(positions, dtype=np.int64),
            mask,
            rows,
        )
        self.visible = np.concatenate([self.visible, np.zeros(m, dtype=bool)])
        return logits

    def _make_room(self, rows: int) -> None:
        """Compact the state when rejected columns reach ``junk_limit`` and an eighth of its
        width, or when ``rows`` more would not fit; TokentreeError when they do not fit even
        then."""
        junk = self.width - len(self._columns)
        limit = max(self.junk_limit, self.width // 8)
        if junk and (junk >= limit or self.width + rows > self.model.context_limit):
            self.model.keep_columns(self.request, np.asarray(self._columns, dtype=np.int64))
            self._columns = list(range(len(self._tokens)))
            self.visible = np.ones(len(self._tokens), dtype=bool)
            self.compactions += 1
        if self.width + rows > self.model.context_limit:
            raise TokentreeError(
                f"{self.width + rows} tokens do not fit the openvino context of "
                f"{self.model.context_limit} (raise --n-ctx)"
            )
