"""STAND: an n-gram table of the target's own next-token distributions.

After every verify, each tree node's target distribution (top entries of the softmax) is merged by
running average into the table under the node's last 1..max_n tokens. Prompt n-grams enter as
one-hot observations. Drafting grows the tree best-first by path probability, looking each node
up under its longest known context (back-off to shorter n-grams), so the tree shape follows the
stored distributions. The table persists across requests and is size-capped (least recently
updated contexts go first).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

from ..reductions import top_probabilities
from ..sampling import Acceptance, Draft, Draw, SamplingParams, gumbel_top_k, warp
from ..tree import TokenTree
from .base import fresh_request_copy
from .template import TEMPLATES, TemplateShape

Distribution = dict[int, float]
MAX_SHARED_CONTEXTS = 16_384  # contexts one knowledge delta carries at most (the latest updated)


@dataclass
class StandConfig:
    """STAND options (CLI flags ``--stand-<field>``)."""

    max_n: int = 4  # longest n-gram context
    top: int = 10  # tokens kept per context
    rate: float = 0.5  # running-average weight of a new observation
    max_contexts: int = 300_000  # table cap; least recently updated contexts are dropped beyond it
    template: str = "paper"  # rank-path template of sampled drafts (paper: 80 nodes, small: 20)
    learning_rate: float = 0.05  # running-average rate of the template nodes' acceptance

    def __post_init__(self) -> None:
        if not 1 <= self.max_n <= 8:
            raise ValueError(f"max_n must be in [1, 8], got {self.max_n}")
        if not 1 <= self.top <= 64:
            raise ValueError(f"top must be in [1, 64], got {self.top}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if self.max_contexts < 1000:
            raise ValueError(f"max_contexts must be >= 1000, got {self.max_contexts}")
        if self.template not in TEMPLATES:
            raise ValueError(
                f"template must be one of {', '.join(TEMPLATES)}, got '{self.template}'"
            )
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")


def merge(old: Distribution | None, new: Distribution, rate: float, top: int) -> Distribution:
    """(1 - rate) * old + rate * new, keeping the ``top`` most likely tokens."""
    if old is None:
        merged = dict(new)
    else:
        merged = {t: (1 - rate) * p for t, p in old.items()}
        for t, p in new.items():
            merged[t] = merged.get(t, 0.0) + rate * p
    if len(merged) > top:
        merged = dict(heapq.nlargest(top, merged.items(), key=lambda kv: kv[1]))
    return merged


class StandDrafter:
    name = "stand"
    default_budget = 16
    runs_draft_model = False

    def __init__(self, config: StandConfig | None = None):
        self.config = config or StandConfig()
        self.table: dict[tuple[int, ...], Distribution] = {}
        # contexts updated since the last knowledge delta (bounded: the latest; forks share it)
        self.touched: dict[tuple[int, ...], None] = {}
        self.shape = TemplateShape(self.config.template)
        self.vocab_size: int | None = None  # known after the first verify
        self.reset()

    def fork(self) -> StandDrafter:
        """Its own request state over this table and template shape (see
        :class:`ForkingDrafter`)."""
        return fresh_request_copy(self)

    def reset(self) -> None:
        self._context: list[int] = []
        self._prompt_done = False
        # template node per tree node of the last sampled draft
        self._proposed: list[int] | None = None

    # ----------------------------------------------------------------- table
    def update(self, context: Sequence[int], dist: Distribution) -> None:
        """Merge ``dist`` (the next-token distribution after ``context``) under its last 1..max_n
        tokens."""
        for n in range(1, min(self.config.max_n, len(context)) + 1):
            key = tuple(context[-n:])
            self._merge(key, dist)
            self.touched.pop(key, None)
            self.touched[key] = None
            if len(self.touched) > MAX_SHARED_CONTEXTS:
                del self.touched[next(iter(self.touched))]
        self._evict()

    def _merge(self, key: tuple[int, ...], dist: Distribution) -> None:
        old = self.table.pop(key, None)  # re-inserted last: dict order = recency
        self.table[key] = merge(old, dist, self.config.rate, self.config.top)

    def _evict(self) -> None:
        if len(self.table) > self.config.max_contexts:
            for key in list(self.table)[: len(self.table) - 3 * self.config.max_contexts // 4]:
                del self.table[key]

    # ----------------------------------------------------------------- sharing (replicas)
    def knowledge_delta(self, final: bool = False) -> dict:
        """The contexts updated since the last call with their distributions now (the latest
        MAX_SHARED_CONTEXTS)."""
        keys, self.touched = list(self.touched), {}
        return {"stand": [[list(k), list(d), list(d.values())] for k in keys
                          if (d := self.table.get(k))]}  # fmt: skip

    def absorb_knowledge(self, delta: dict) -> None:
        """Merge another table's entries as observations of the same contexts (same running
        average, same cap)."""
        for key, tokens, probs in delta.get("stand", []):
            self._merge(tuple(key), dict(zip(tokens, probs)))
        self._evict()

    def lookup(self, context: Sequence[int]) -> Distribution | None:
        """The stored distribution under the longest known suffix of ``context``."""
        for n in range(min(self.config.max_n, len(context)), 0, -1):
            dist = self.table.get(tuple(context[-n:]))
            if dist:
                return dist
        return None

    def _learn_prompt(self, prompt: Sequence[int]) -> None:
        window = self.config.max_n
        for end in range(1, len(prompt)):
            self.update(prompt[max(0, end - window) : end], {int(prompt[end]): 1.0})

    # ----------------------------------------------------------------- drafting
    def _start_step(self, context: Sequence[int]) -> None:
        self._context = list(context)
        self._proposed = None
        if not self._prompt_done:
            self._learn_prompt(self._context)
            self._prompt_done = True

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        self._start_step(context)
        tail = self._context[-self.config.max_n :]
        tokens, parents, scores, paths = [tail[-1]], [-1], [1.0], [tail]
        heap: list[tuple[float, int, int, int]] = []  # (-path prob, arrival, parent node, token)
        arrival = itertools.count()

        def expand(node: int) -> None:
            for token, p in (self.lookup(paths[node]) or {}).items():
                heapq.heappush(heap, (-scores[node] * p, next(arrival), node, token))

        expand(0)
        while heap and len(tokens) <= budget:
            neg, _, parent, token = heapq.heappop(heap)
            tokens.append(token)
            parents.append(parent)
            scores.append(-neg)
            paths.append((paths[parent] + [token])[-self.config.max_n :])
            expand(len(tokens) - 1)
        return TokenTree(tuple(tokens), tuple(parents), tuple(scores))

    def propose_sampled(
        self,
        context: Sequence[int],
        budget: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Draft:
        """The template's best ``budget`` nodes, each parent's children drawn without replacement
        from q."""
        self._start_step(context)
        tail = self._context[-self.config.max_n :]
        tokens, parents, paths, proposed = [tail[-1]], [-1], [tail], [0]
        draws: dict[int, list[int]] = {}  # tree node -> its children's tokens in draw order
        q_rows: dict[int, torch.Tensor] = {}
        placed = {0: 0}  # template node -> tree node
        for node in self.shape.ranked() if self.vocab_size else []:
            if len(tokens) > budget:
                break
            up, sibling = placed.get(self.shape.parent[node]), self.shape.previous_sibling[node]
            if up is None or (sibling is not None and sibling not in placed):
                continue
            if up not in draws:
                q_rows[up] = self._draft_distribution(paths[up], params)
                draws[up] = (
                    []
                    if q_rows[up] is None
                    else [
                        q_rows[up][0][i]
                        for i in gumbel_top_k(q_rows[up][1], self.shape.max_rank + 1, generator)
                    ]
                )
            if self.shape.rank(node) >= len(draws[up]):
                continue
            token = draws[up][self.shape.rank(node)]
            placed[node] = len(tokens)
            tokens.append(token)
            parents.append(up)
            paths.append((paths[up] + [token])[-self.config.max_n :])
            proposed.append(node)
        self._proposed = proposed
        q = torch.zeros(len(tokens), self.vocab_size or 1)
        for up, row in q_rows.items():
            if row is not None:
                q[up, row[0]] = row[1]
        return Draft(TokenTree(tuple(tokens), tuple(parents)), Draw.WITHOUT_REPLACEMENT, q)

    def _draft_distribution(
        self, context: Sequence[int], params: SamplingParams
    ) -> tuple[list[int], torch.Tensor] | None:
        """The stored distribution after ``context``, warped: (support tokens [k], q over them [k]).

        Warping only the stored support equals warping a full [V] row whose other entries are -inf
        (temperature, top-k, top-p and min-p only see the support), at a fraction of the cost.
        """
        dist = self.lookup(context)
        if not dist:
            return None
        logits = torch.tensor([list(dist.values())]).clamp_min(1e-30).log()
        return list(dist), warp(logits, params)[0]

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        """Merge every verified node's target distribution into the table."""
        if not self._context or self._context[-1] != tree.tokens[0]:
            return
        self.vocab_size = logits.shape[-1]
        if self._proposed is not None and len(self._proposed) == len(tree):
            self.shape.learn(tree, self._proposed, acceptance, self.config.learning_rate)
        probs, ids = top_probabilities(logits, self.config.top)
        probs, ids = probs.tolist(), ids.tolist()
        base = self._context[:-1]
        for node in range(len(tree)):
            path = [tree.tokens[i] for i in tree.path_to(node)]
            context = (base[-self.config.max_n :] + path)[-self.config.max_n :]
            self.update(context, dict(zip(ids[node], probs[node])))

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return {
            "max_n": self.config.max_n,
            "vocab_size": self.vocab_size,
            "template": self.config.template,
            "rate": self.shape.rate.tolist(),
            "table": [[list(k), list(d), list(d.values())] for k, d in self.table.items()],
        }

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state["max_n"] != self.config.max_n:
            raise ValueError(
                f"saved with max_n {state['max_n']}, this drafter uses {self.config.max_n}"
            )
        table = {}
        for key, tokens, probs in state["table"]:
            ids = list(key) + list(tokens)
            if not all(isinstance(t, int) and 0 <= t < vocab_size for t in ids):
                raise ValueError("table holds token ids outside the vocabulary")
            if (
                not 1 <= len(key) <= self.config.max_n
                or len(tokens) != len(probs)
                or len(tokens) > self.config.top
            ):
                raise ValueError("table entry has the wrong shape")
            if not all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in probs):
                raise ValueError("table holds probabilities outside [0, 1]")
            table[tuple(key)] = dict(zip(tokens, map(float, probs)))
        if state.get("template", self.config.template) == self.config.template and "rate" in state:
            self.shape.load_rates(state["rate"])
        self.table = table
        self.vocab_size = vocab_size if state.get("vocab_size") else None
