"""Log-probabilities of the emitted tokens, read from the rows the verify already computed (no
extra forward): each emitted token's row is its accepted parent's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .sampling import SamplingParams, warp
from .tree import TokenTree

if TYPE_CHECKING:
    from .backends.base import Backend

MAX_TOP = 20  # top_logprobs at most (OpenAI's limit)
# as vLLM's logprobs_mode: the model's own distribution, or the one the token was drawn from
# (the grammar's mask and, when sampling, temperature, top-k, top-p and min-p applied)
MODES = ("raw_logprobs", "processed_logprobs")


@dataclass(frozen=True)
class TokenLogprob:
    """One emitted token: its log-probability and the ``top`` most likely tokens at its position
    (token, log-probability), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = None  # 1 = the most likely (prompt logprobs carry it)

    def to_dict(self) -> dict:
        body = {"token": self.token, "logprob": self.logprob, "top": [list(t) for t in self.top]}
        return body if self.rank is None else body | {"rank": self.rank}


def distribution(rows: torch.Tensor, params: SamplingParams, processed: bool) -> torch.Tensor:
    """[m, V] log-probabilities of ``rows`` ([m, V] logits): their log-softmax, or with
    ``processed`` the sampling law's (warped by ``params`` when sampling; rows a grammar masked
    come masked)."""
    if processed and not params.greedy:
        return warp(rows, params).log()
    return rows.float().log_softmax(dim=-1)


def token_logprobs(
    rows: torch.Tensor,
    tokens: Sequence[int],
    top: int,
    params: SamplingParams,
    processed: bool = False,
) -> list[TokenLogprob]:
    """Each of ``tokens`` (token i emitted after row i of ``rows``, [m, V] logits with
    m >= len(tokens)) with its log-probability and the ``top`` (0..MAX_TOP) best at its row."""
    if not tokens:
        return []
    logp = distribution(rows[: len(tokens)], params, processed)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device).unsqueeze(1))[:, 0].tolist()
    best = logp.topk(top, dim=-1) if top else None
    result = []
    for i, token in enumerate(tokens):
        pairs: tuple[tuple[int, float], ...] = ()
        if best is not None:
            ids, values = best.indices[i].tolist(), best.values[i].tolist()
            pairs = tuple((t, v) for t, v in zip(ids, values) if v > -math.inf)
        result.append(TokenLogprob(int(token), float(chosen[i]), pairs))
    return result


PROMPT_CHUNK = 128  # prompt positions scored per forward (their rows: chunk x vocabulary floats)


@torch.inference_mode()
def prompt_logprobs(
    backend: Backend, prompt_ids: Sequence[int], top: int, chunk: int = PROMPT_CHUNK
) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability under the model given the tokens before it, its rank
    and the ``top`` best there (None for the first token, which nothing predicts), as vLLM's
    ``prompt_logprobs``. It is the prefill: the prompt is forwarded from an empty cache in chains
    of ``chunk`` tokens whose every row is kept, and leaves the cache holding all but the last
    prompt token, so the generation's own prefill forwards nothing again."""
    ids = [int(t) for t in prompt_ids]
    backend.prefill([])
    result: list[TokenLogprob | None] = [None]
    for start in range(0, len(ids) - 1, chunk):
        end = min(start + chunk, len(ids) - 1)
        rows = backend.verify(TokenTree.chain(ids[start], ids[start + 1 : end]))
        backend.commit(range(end - start))
        logp = rows.float().log_softmax(dim=-1)  # row j predicts ids[start + j + 1]
        targets = torch.tensor(ids[start + 1 : end + 1], device=logp.device)
        chosen = logp.gather(1, targets[:, None])
        ranks = ((logp > chosen).sum(dim=1) + 1).tolist()
        entries = token_logprobs(rows, targets.tolist(), top, SamplingParams())
        result.extend(TokenLogprob(e.token, e.logprob, e.top, r) for e, r in zip(entries, ranks))
    return result
