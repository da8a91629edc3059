"""llama.cpp's own plain greedy decoding, the honest baseline of the llama.cpp backend: one
``llama_decode`` and an argmax per token (with a grammar: over the tokens it allows)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .llamacpp import LlamaCppModel
from .sequences import CONTEXT_SEQ, BatchRows

if TYPE_CHECKING:
    from ..constraints import GrammarState


def plain_greedy(
    model: LlamaCppModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    grammar: GrammarState | None = None,
) -> list[int]:
    """The new token ids of :func:`plain_greedy_tokens`."""
    return list(plain_greedy_tokens(model, prompt_ids, max_new_tokens, grammar))


def plain_greedy_tokens(
    model: LlamaCppModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    grammar: GrammarState | None = None,
) -> Iterator[int]:
    """llama.cpp's own greedy decoding, as its tools run it: the prompt in ``n_batch`` chunks,
    then one ``llama_decode`` and an argmax per token until an end-of-generation token (what a
    user of llama.cpp gets, without llama-cpp-python's Python sampling loop). With ``grammar``,
    each argmax is over the tokens it allows (as llama.cpp built with llguidance decodes), until it
    completes. The cache is emptied first. Yields each new token id as it is chosen."""
    lib = model.lib
    lib.llama_memory_clear(model.memory, True)
    prompt = [int(t) for t in prompt_ids]
    for begin in range(0, len(prompt), model.config.n_batch):
        chunk = prompt[begin : begin + model.config.n_batch]
        rows = BatchRows()
        rows.add(chunk, range(begin, begin + len(chunk)), [(CONTEXT_SEQ,)] * len(chunk), outputs=1)
        model.decode(rows)
    pointer = ctypes.cast(lib.llama_get_logits(model.ctx), ctypes.POINTER(ctypes.c_float))
    for count in range(1, max_new_tokens + 1):
        logits = np.ctypeslib.as_array(pointer, shape=(model.vocab_size,))
        if grammar is not None:
            logits = np.where(grammar.allowed_next(), logits, -np.inf)
        token = int(logits.argmax())
        yield token
        if token in model.eos_ids or count == max_new_tokens:
            return
        if grammar is not None and (grammar.advance([token]) and grammar.finished):
            return
        rows = BatchRows()
        rows.add([token], [len(prompt) + count - 1], [(CONTEXT_SEQ,)], outputs=1)
        model.decode(rows)
