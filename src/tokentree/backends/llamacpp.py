"""llama.cpp backend over llama-cpp-python's low-level API: GGUF models, a tree in one
``llama_decode``.

Tree attention is expressed with sequence ids (see :mod:`tokentree.backends.sequences`); the
context's KV cells are shared by all sequences (a unified KV cache), so copying the context into
a path's sequence is bookkeeping, not data movement. ``commit`` keeps the accepted path's sequence,
drops every other cell and renames the path to the context sequence, which leaves the cache exactly
as plain decoding would.
"""

from __future__ import annotations

import ctypes
import logging
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
from .sequences import CONTEXT_SEQ, BatchRows, SequenceBook

LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
GGUF_MAGIC = b"GGUF"


def import_llama_cpp():
    """The ``llama_cpp`` module, or a TokentreeError that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise TokentreeError(
            "the llama.cpp backend needs llama-cpp-python: pip install 'tokentree[llamacpp]' "
            f"({LLAMA_CPP_PIN})"
        ) from exc
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs: errors only
    return llama_cpp


def is_gguf(path: str | Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


@dataclass
class LlamaCppConfig:
    """How llama.cpp runs a model (CLI: ``--threads``, ``--n-ctx``)."""

    threads: int | None = None  # None = all cores this process may use
    n_ctx: int = 4096  # KV cache size in tokens (prompt + generation + one tree)
    n_batch: int = 512  # the largest batch one llama_decode takes (prefill chunk, tree size)
    max_sequences: int = 64  # root-to-leaf paths per tree (llama.cpp allows at most 256)
    # on the CPU its results do not depend on the batch size, so a verified tree
    flash_attn: bool = True
    # scores every node exactly as one-token decoding would (without it they differ by up to ~1
    # logit)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise TokentreeError(f"--threads must be >= 1, got {self.threads}")
        if self.n_ctx < 16:
            raise TokentreeError(f"--n-ctx must be >= 16, got {self.n_ctx}")
        if not 1 <= self.max_sequences <= 256:
            raise TokentreeError(f"max_sequences must be in 1..256, got {self.max_sequences}")

    @property
    def thread_count(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


class LlamaCppModel:
    """A GGUF model and one llama.cpp context (its KV cache); freed by :meth:`close` or on
    collection."""

    def __init__(self, path: str | Path, config: LlamaCppConfig | None = None):
        self.lib = import_llama_cpp()
        self.path = Path(path)
        self.config = config or LlamaCppConfig()
        if not self.path.is_file():
            raise TokentreeError(f"no such GGUF file: {path}")
        if not is_gguf(self.path):
            raise TokentreeError(
                f"{path} is not a GGUF file (the llama.cpp backend reads .gguf models)"
            )
        lib = self.lib
        lib.llama_backend_init()
        self.model_p = lib.llama_model_load_from_file(
            str(self.path).encode(), lib.llama_model_default_params()
        )
        if not self.model_p:
            raise TokentreeError(f"llama.cpp could not load {path}")
        self.ctx = lib.llama_init_from_model(self.model_p, self._context_params())
        if not self.ctx:
            lib.llama_model_free(self.model_p)
            self.model_p = None
            raise TokentreeError(
                f"llama.cpp could not create a context for {path} (n_ctx {self.config.n_ctx})"
            )
        self.vocab = lib.llama_model_get_vocab(self.model_p)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self.vocab))
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.config.n_batch, 0, self.config.max_sequences)
        self.decoded_rows = 0  # every row decoded so far (each took a cache cell)

    def _context_params(self):
        params = self.lib.llama_context_default_params()
        params.n_ctx = self.config.n_ctx
        params.n_batch = params.n_ubatch = self.config.n_batch
        params.n_seq_max = self.config.max_sequences
        params.n_threads = params.n_threads_batch = self.config.thread_count
        params.kv_unified = True  # one token may belong to several sequences (shared tree nodes)
        params.swa_full = True  # sliding-window layers keep every cell, so any tree can be verified
        params.no_perf = True
        params.flash_attn_type = (
            self.lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.config.flash_attn
            else self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        return params

    @cached_property
    def eos_ids(self) -> frozenset[int]:
        """Every end-of-generation token of the GGUF vocabulary (what llama.cpp itself stops on)."""
        return frozenset(
            t for t in range(self.vocab_size) if self.lib.llama_vocab_is_eog(self.vocab, t)
        )

    @property
    def context_limit(self) -> int:
        return self.config.n_ctx

    def decode(self, rows: BatchRows) -> None:
        """One ``llama_decode`` of ``rows``; their flagged rows' logits are then :meth:`logits`."""
        batch, lib = self.batch, self.lib
        if len(rows.tokens) > self.config.n_batch:
            raise TokentreeError(
                f"a batch of {len(rows.tokens)} tokens exceeds the llama.cpp batch of "
                f"{self.config.n_batch}"
            )
        batch.n_tokens = len(rows.tokens)
        for i, (token, pos, seqs, out) in enumerate(
            zip(rows.tokens, rows.positions, rows.seq_ids, rows.outputs, strict=True)
        ):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = len(seqs)
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
            batch.logits[i] = out
        code = lib.llama_decode(self.ctx, batch)
        self.decoded_rows += len(rows.tokens) if code == 0 else 0
        if code != 0:
            raise TokentreeError(
                f"llama_decode failed with code {code} on a batch of {len(rows.tokens)} tokens"
                + (" (the KV cache is full: raise --n-ctx)" if code == 1 else "")
            )

    def decode_all(self, rows: BatchRows) -> torch.Tensor:
        """``rows`` in as many ``llama_decode`` calls of at most ``n_batch`` as they need (the
        first steps of a batch carry every sequence's prompt tail); [outputs, V] their flagged
        rows' logits, in order."""
        if len(rows.tokens) <= self.config.n_batch:
            self.decode(rows)
            return self.logits(rows.output_count)
        pieces = []
        for chunk in rows.chunks(self.config.n_batch):
            self.decode(chunk)
            pieces.append(self.logits(chunk.output_count))
        return torch.cat(pieces)

    def logits(self, rows: int) -> torch.Tensor:
        """[rows, V] float32: a copy of the last decode's output logits, in batch order."""
        pointer = self.lib.llama_get_logits(self.ctx)
        array = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(rows, self.vocab_size)
        )
        return torch.from_numpy(array.copy())

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model_p", None):
            self.lib.llama_model_free(self.model_p)
            self.model_p = None

    def __del__(self) -> None:
        self.close()


class LlamaCppBackend(TreeBook):
    """The backend contract over a :class:`LlamaCppModel` (see :class:`tokentree.backends.Backend`).

    ``in_order`` keeps the committed KV cells in position order, as plain decoding leaves them, so
    the target's logits are bit-identical to one-token decoding (flash attention sums over cells in
    storage order): a tree is decoded depth-first, first child first, so an accepted path through
    first children is already contiguous; any other accepted path is re-decoded behind the context
    (a few tokens, rarely). A draft model does not need exact logits and skips that.

    ``sequences`` are the llama.cpp sequence ids this backend owns (default: all of the context's):
    several backends over one model, each with its own ids, are the sequences of a batch
    (:func:`verify_many` forwards their trees in one ``llama_decode``). Every cache operation
    touches only the owned ids.

    With ``trash`` (a sequence id no backend owns) cells this backend lets go are handed to that
    sequence instead of freed. llama.cpp's CPU attention sums over a sequence's cells in storage
    order, in F16, so the order shows in the logits, and it fills freed cells first: with several
    sequences in one cache a freed cell of one would take another's next token ahead of its older
    ones. Kept occupied, every new cell lands after all earlier ones. That is not all llama.cpp's
    rounding depends on (a sequence whose cells span several 256-cell tiles of a shared cache, or a
    batch of 64 rows or more, rounds differently from decoding alone), so a batch's sequences equal
    their plain decoding exactly only while the cache is small. The batch frees the trash when it
    is empty (see :class:`tokentree.batch.BatchEngine`).
    """

    plans_every_tree = True  # batch costs rise steeply on a CPU: plan every tree

    def __init__(
        self,
        model: LlamaCppModel,
        in_order: bool = True,
        sequences: range | None = None,
        trash: int | None = None,
    ):
        self.model = model
        self.in_order = in_order
        self.lib = model.lib
        self.vocab_size = model.vocab_size
        self.sequences = range(model.config.max_sequences) if sequences is None else sequences
        if (
            not self.sequences
            or self.sequences.step != 1
            or not (0 <= self.sequences.start and self.sequences.stop <= model.config.max_sequences)
        ):
            raise ValueError(
                f"sequence ids {self.sequences} are not a block of the context's "
                f"{model.config.max_sequences}"
            )
        if trash is not None and (
            trash in self.sequences or not 0 <= trash < model.config.max_sequences
        ):
            raise ValueError(
                f"the trash sequence {trash} must be a sequence id outside {self.sequences}"
            )
        self.trash = trash
        self.max_leaves = len(self.sequences)
        self.capacity = model.config.n_batch
        # a prompt that fits one batch rides whole with the first tree: on a CPU one batch of n
        # rows costs less than two that share them (stage decodes it first when the tree leaves
        # no room beside it)
        self.prompt_tail = self.capacity - 1
        self.context_seq = self.sequences.start + CONTEXT_SEQ
        self.book = SequenceBook(len(self.sequences))
        self._tokens: list[int] = []
        self._pending: TokenTree | None = None
        self._order: tuple[int, ...] = ()  # the pending tree's nodes in the order they were decoded
        self._lead: list[
            int
        ] = []  # prefill tokens held back for the next tree's batch (see prefill)
        self._staged: tuple[int, tuple[int, ...]] = (
            0,
            (),
        )  # (start, decode order) of the staged rows
        self.redecoded = 0  # accepted tokens decoded again to keep the cells in order

    @property
    def lead(self) -> int:
        """Prompt tokens still to be decoded (with the next tree)."""
        return len(self._lead)

    def reset(self) -> None:
        for seq in self.sequences:
            self._release(seq, -1, -1)
        self._tokens, self._pending, self._lead = [], None, []
        self.book.reset()

    def prefill(self, token_ids: Sequence[int], defer: int = 0) -> None:
        """Make the cache hold ``token_ids``, reusing the common cached prefix; the last (at most
        ``defer``) missing tokens are held back and decoded in the next tree's batch."""
        token_ids = [int(t) for t in token_ids]
        self._check_room(len(token_ids))
        shared = shared_prefix(self._tokens, token_ids)
        self._drop_branches(keep=self.context_seq)  # any pending tree's
        if not self._release(self.context_seq, shared, -1):
            self.reset()
            shared = 0
        self._tokens, self._pending = self._tokens[:shared], None
        self.book.reset()
        held = min(defer, len(token_ids) - shared, self.capacity - 1)
        forwarded = len(token_ids) - held
        self._lead = token_ids[forwarded:]
        self._decode_prompt(token_ids[shared:forwarded])

    def _decode_prompt(self, token_ids: Sequence[int]) -> None:
        """Decode prompt tokens after the cached ones on the context sequence, in batches of
        ``capacity``."""
        for begin in range(0, len(token_ids), self.capacity):
            chunk = list(token_ids[begin : begin + self.capacity])
            first = len(self._tokens)
            rows = BatchRows()
            rows.add(
                chunk,
                range(first, first + len(chunk)),
                [(self.context_seq,)] * len(chunk),
                outputs=1,
            )
            self.model.decode(rows)
            self._tokens.extend(chunk)

    def adopt(self, source: LlamaCppBackend, count: int) -> None:
        """Start from the first ``count`` cached tokens of ``source`` (another backend over the same
        model): its cells get this backend's context sequence too, so a shared prompt prefix is
        decoded once (bookkeeping in the unified cache, no data moves)."""
        if (
            source.model is not self.model
            or source.pending is not None
            or count > len(source._tokens)
        ):
            raise ValueError(
                "adopt needs a backend over the same model, between steps, with that many tokens"
            )
        self.reset()
        self.lib.llama_memory_seq_cp(
            self.model.memory, source.context_seq, self.context_seq, 0, count
        )
        self._tokens = source._tokens[:count]

    def grow(self, tree: TokenTree, start: int) -> torch.Tensor:
        """Forward nodes ``tree[start:]`` (earlier nodes were forwarded by the previous call).

        Returns [n - start, V] float32 logits, like :meth:`HFBackend.grow`.
        """
        rows = self.stage(tree, start)
        self.model.decode(rows)
        return self.absorb(self.model.logits(rows.output_count))

    def stage(self, tree: TokenTree, start: int) -> BatchRows:
        """Plan the forward of ``tree[start:]``: copy the cells its new branches need and return its
        batch rows; :meth:`absorb` takes the logits once they are decoded (alone or in a batch)."""
        check_extends(self._pending, tree, start)
        if start == 0 and len(self._lead) + len(tree) > self.capacity:
            self._decode_prompt(self._lead)  # no room beside this tree: the held prompt goes first
            self._lead = []
        lead = self._lead if start == 0 else []
        if len(lead) + len(tree) - start > self.capacity:
            raise TokentreeError(
                f"a tree of {len(tree) - start} new nodes exceeds the llama.cpp batch of "
                f"{self.capacity}"
            )
        self._check_room(len(self._tokens) + len(lead) + max(tree.depths) + 1)
        prefix = len(self._tokens) + len(lead)
        try:
            plan = self.book.plan(tree, start, prefix)
        except ValueError as exc:
            raise TokentreeError(
                f"llama.cpp backend: {exc} (cap the tree's leaves at {self.max_leaves})"
            ) from exc
        base = self.sequences.start
        for source, target, end in plan.copies:
            self.lib.llama_memory_seq_cp(self.model.memory, base + source, base + target, -1, end)
        order = tree.preorder if self.in_order and start == 0 else tuple(range(start, len(tree)))
        every_seq = tuple(
            sorted({base + seq for seqs in plan.seq_ids for seq in seqs} | {self.context_seq})
        )
        rows = BatchRows()
        rows.add(
            lead + [tree.tokens[i] for i in order],
            [*range(prefix - len(lead), prefix), *(prefix + tree.depths[i] for i in order)],
            [every_seq] * len(lead)
            + [tuple(base + s for s in plan.seq_ids[i - start]) for i in order],
            outputs=len(order),
        )
        self._tokens.extend(lead)  # context now, seen by every path of the tree
        self._lead = [] if start == 0 else self._lead
        self._pending, self._order = tree, self._order[:start] + order
        self._staged = (start, order)
        return rows

    def absorb(self, logits: torch.Tensor) -> torch.Tensor:
        """[m, V] logits of the staged rows, in decode order -> [m, V] in node order."""
        start, order = self._staged
        if order == tuple(range(start, len(self._pending))):
            return logits
        rows = torch.empty(len(order), dtype=torch.long)
        rows[torch.tensor(order) - start] = torch.arange(len(order))
        return logits[rows]

    def commit(self, nodes: Sequence[int]) -> None:
        tree = self._pending
        if tree is None:
            raise RuntimeError("commit called without a verified tree")
        keep = self.sequences.start + self.book.own[nodes[-1]]
        prefix, memory, lib = len(self._tokens), self.model.memory, self.lib
        in_place = len(nodes)
        if (
            self.in_order
        ):  # accepted nodes stored at the first slots, in order, stay; the rest is redone
            in_place = next(
                (j for j, node in enumerate(nodes) if self._order[j] != node), len(nodes)
            )
        self._drop_branches(keep)
        self._release(keep, prefix + in_place, -1)
        if keep != self.context_seq:
            lib.llama_memory_seq_cp(memory, keep, self.context_seq, -1, -1)
            lib.llama_memory_seq_rm(memory, keep, -1, -1)
        tokens = [tree.tokens[i] for i in nodes]
        if in_place < len(nodes):
            redo = range(in_place, len(nodes))
            rows = BatchRows()
            rows.add(
                tokens[in_place:],
                [prefix + j for j in redo],
                [(self.context_seq,)] * len(redo),
                outputs=1,
            )
            self.model.decode(rows)
            self.redecoded += len(redo)
        self._tokens.extend(tokens)
        self._pending, self._order = None, ()
        self.book.reset()

    # ------------------------------------------------------------------ llama.cpp calls
    def _drop_branches(self, keep: int) -> None:
        """Remove every sequence the pending tree used except ``keep`` (the context's cells stay
        where ``keep`` holds them too)."""
        for seq in {self.sequences.start + s for s in self.book.own} - {keep}:
            self._release(seq, -1, -1)

    def _release(self, seq: int, begin: int, end: int) -> bool:
        """Drop ``seq`` from its cells at positions [begin, end) (-1: open); with a trash sequence
        the cells stay occupied by it (see the class docstring)."""
        if self.trash is not None:
            self.lib.llama_memory_seq_cp(self.model.memory, seq, self.trash, begin, end)
        return self.lib.llama_memory_seq_rm(self.model.memory, seq, begin, end)

    def _check_room(self, needed: int) -> None:
        if needed > self.model.config.n_ctx:
            raise TokentreeError(
                f"{needed} tokens do not fit the llama.cpp context of {self.model.config.n_ctx} "
                "(raise --n-ctx)"
            )


def verify_many(
    backends: Sequence[LlamaCppBackend], trees: Sequence[TokenTree]
) -> list[torch.Tensor]:
    """Verify each backend's tree in one ``llama_decode``: backends over one model, with disjoint
    sequence ids (the sequences of a batch). Returns each tree's [n_i, V] logits."""
    if not backends:
        return []
    model = backends[0].model
    if any(b.model is not model for b in backends) or len(
        {b.sequences.start for b in backends}
    ) < len(backends):
        raise ValueError("verify_many needs backends over one model with their own sequence ids")
    rows, counts = BatchRows(), []
    for backend, tree in zip(backends, trees, strict=True):
        if backend.pending is not None:
            raise RuntimeError("verify called twice without commit")
        staged = backend.stage(tree, 0)
        rows.extend(staged)
        counts.append(staged.output_count)
    logits = model.decode_all(rows)
    out, begin = [], 0
    for backend, count in zip(backends, counts):
        out.append(backend.absorb(logits[begin : begin + count]))
        begin += count
    return out
