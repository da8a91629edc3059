"""Several sequences over one llama.cpp context: each slot owns a block of its sequence ids."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import TokentreeError
from ..tree import TokenTree
from .base import LaneSlots, TreeBook
from .llamacpp import LlamaCppBackend, LlamaCppModel, verify_many


def slot_ids(slot: int, slots: int, max_sequences: int) -> range:
    """The sequence ids of slot ``slot`` of ``slots``: an equal block of the context's ids each, the
    last id left out (the batch's trash sequence, see :class:`LlamaCppBackend`)."""
    per = (max_sequences - 1) // slots
    return range(slot * per, (slot + 1) * per)


class LlamaCppBatch(LaneSlots):
    """Up to ``max_batch`` :class:`LlamaCppBackend` lanes over one context
    (:class:`tokentree.backends.base.BatchTarget`).

    Cells a lane lets go (rejected nodes, finished sequences) stay occupied by the trash sequence
    until :meth:`clear`, so each lane's cells stay in position order (see :class:`LlamaCppBackend`
    for what else llama.cpp's rounding depends on).
    """

    def __init__(self, model: LlamaCppModel, max_batch: int):
        limit = model.config.max_sequences - 1  # the last id is the trash
        if not 1 <= max_batch <= limit:
            raise TokentreeError(
                f"max_batch must be in 1..{limit} (the llama.cpp context's sequences, less one), "
                f"got {max_batch}"
            )
        self.model = model
        self.trash = limit
        self.capacity = model.config.n_ctx
        self.lanes = [
            LlamaCppBackend(model, sequences=slot_ids(i, max_batch, limit + 1), trash=self.trash)
            for i in range(max_batch)
        ]
        for lane in self.lanes:  # lanes share a prompt's prefix: each forwards only a short tail
            lane.prompt_tail = TreeBook.prompt_tail
        self._cleared_at = (
            model.decoded_rows
        )  # cells in use: rows decoded since the cache was last emptied

    def verify_many(self, slots: Sequence[int], trees: Sequence[TokenTree]) -> list[torch.Tensor]:
        return verify_many([self.lanes[slot] for slot in slots], trees)

    def clear(self) -> None:
        self.reset_lanes()
        self.model.lib.llama_memory_seq_rm(self.model.memory, self.trash, -1, -1)
        self._cleared_at = self.model.decoded_rows

    def spare_cells(self, owed: int) -> int | None:
        used = self.model.decoded_rows - self._cleared_at
        return self.capacity - used - owed - sum(lane.lead for lane in self.lanes)
