"""Suffix decoding (SuffixDecoding, Snowflake Arctic; vLLM and SGLang adopted it): drafts from the
longest match of the context's suffix in suffix tries of this request and of past responses.

Two tries cut at ``depth`` tokens: one of this request (prompt and output so far) and one of past
responses (global, bounded: the oldest responses are evicted past ``max_nodes`` or
``max_responses``). In each, the longest suffix of the context that occurs is found; a match of m
tokens may speculate ``min(alpha * m + offset, depth - m)`` tokens, grown best-first by the
empirical continuation probability (a node's count over the count of the match's continuations) and
pruned below ``min_prob``; of the match lengths tried the one with the highest expected accepted
length (the sum of its nodes' probabilities) is kept. Agent loops re-emit large parts of earlier
answers: long matches let this drafter speculate long chains that n-gram windows lose.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import Acceptance
from ..tree import TokenTree
from .base import fresh_request_copy
from .trie import TrieNode, WindowTrie

# last prompt tokens stored before each response: the chat header predicts its start
HEADER_TOKENS = 4


@dataclass
class SuffixConfig:
    """Suffix decoding options (CLI flags ``--suffix-<field>``; defaults are vLLM's)."""

    depth: int = 24  # trie depth: match plus speculated tokens
    alpha: float = 1.0  # a match of m tokens speculates up to alpha * m + offset tokens
    offset: float = 0.0
    min_prob: float = 0.1  # prune continuations estimated below this probability
    max_nodes: int = 500_000  # cap on the global trie; the oldest responses are evicted beyond it
    max_responses: int = 10_000  # responses kept in the global trie

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.alpha <= 0 or self.offset < 0:
            raise ValueError(
                f"alpha must be > 0 and offset >= 0, got {self.alpha} and {self.offset}"
            )
        if not 0 <= self.min_prob < 1:
            raise ValueError(f"min_prob must be in [0, 1), got {self.min_prob}")
        if self.max_nodes < 1000 or self.max_responses < 1:
            raise ValueError(
                f"max_nodes must be >= 1000 and max_responses >= 1, got {self.max_nodes} and "
                f"{self.max_responses}"
            )


@dataclass
class Response:
    """One request's stored text (its prompt's tail, then its output as it grows)."""

    tokens: list[int]
    evicted: bool = False
    seen: int = -1  # its length at the last knowledge delta
    shared: bool = False  # in a knowledge delta already, or absorbed from one


class ResponseStore:
    """The global trie over past responses, evicting whole responses oldest first."""

    def __init__(self, depth: int, max_nodes: int, max_responses: int):
        self.trie = WindowTrie(depth, 1 << 62)  # bounded here by eviction, never by halving
        self.max_nodes, self.max_responses = max_nodes, max_responses
        self.responses: deque[Response] = deque()

    def begin(self, prompt_tail: Sequence[int]) -> Response:
        response = Response([])
        self.responses.append(response)
        self.extend(response, prompt_tail)
        return response

    def extend(self, response: Response, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to ``response`` (ignored once it was evicted), then evict past the
        caps."""
        if response.evicted or not tokens:
            return
        seen = len(response.tokens)
        response.tokens.extend(tokens)
        self.trie.extend(response.tokens, seen)
        while self.responses and (
            self.trie.nodes > self.max_nodes or len(self.responses) > self.max_responses
        ):
            oldest = self.responses.popleft()
            self.trie.remove(oldest.tokens)
            oldest.evicted = True


def _grow(
    start: TrieNode, max_depth: int, budget: int, min_prob: float
) -> tuple[list[list[int]], list[float]]:
    """Up to ``budget`` continuation paths below ``start``, best-first by probability (count over
    the count of all continuations of ``start``), at most ``max_depth`` deep, none below
    ``min_prob``."""
    total = sum(child.count for child in start.children.values())
    heap = [
        (-child.count / total, token, [token], child) for token, child in start.children.items()
    ]
    heapq.heapify(heap)
    paths, probs = [], []
    while heap and len(paths) < budget:
        neg, _, path, node = heapq.heappop(heap)
        if -neg < min_prob:
            break
        paths.append(path)
        probs.append(-neg)
        if len(path) < max_depth:
            for token, child in node.children.items():
                heapq.heappush(heap, (-child.count / total, token, path + [token], child))
    return paths, probs


def _match_lengths(longest: int) -> list[int]:
    """Match lengths tried, longest first: the longest match and a few shorter ones."""
    return sorted(
        {
            m
            for m in (longest, 3 * longest // 4, longest // 2, longest // 4, 2, 1)
            if 1 <= m <= longest
        },
        reverse=True,
    )


class SuffixDrafter:
    name = "suffix"
    default_budget = 16
    runs_draft_model = False

    def __init__(self, config: SuffixConfig | None = None):
        self.config = config or SuffixConfig()
        self.store = ResponseStore(
            self.config.depth, self.config.max_nodes, self.config.max_responses
        )
        self.reset()

    def fork(self) -> SuffixDrafter:
        """Its own request trie and response over this global store (see
        :class:`ForkingDrafter`)."""
        return fresh_request_copy(self)

    def reset(self) -> None:
        self.request_trie = WindowTrie(self.config.depth, 1 << 62)
        self._response: Response | None = None  # begun at the request's first proposal
        self._prompt_len = 0
        self._context: list[int] = []

    def _absorb(self, context: Sequence[int]) -> None:
        """Bring both tries up to ``context`` (the prompt, then the output as it grows)."""
        seen = len(self._context)
        if self._response is None:
            self._prompt_len = len(context)
            self._response = self.store.begin(context[-HEADER_TOKENS:])
        self._context = list(context)
        self.request_trie.extend(self._context, seen)
        self.store.extend(self._response, self._context[max(seen, self._prompt_len) :])

    def _best_match(
        self, trie: WindowTrie, context: Sequence[int], budget: int
    ) -> tuple[list, list]:
        """The paths and probabilities of the match length with the highest expected accepted
        length."""
        best: tuple[float, list, list] = (0.0, [], [])
        for m in _match_lengths(trie.longest_suffix(context)):
            start = trie.find(context[-m:])
            room = min(int(self.config.alpha * m + self.config.offset), trie.window - m)
            paths, probs = _grow(start, room, budget, self.config.min_prob)
            if sum(probs) > best[0]:
                best = (sum(probs), paths, probs)
        return best[1], best[2]

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        self._absorb(context)
        paths, scores = [], []
        for trie in (self.request_trie, self.store.trie):
            found, probs = self._best_match(trie, context, budget)
            paths += found
            scores += [[p] * len(path) for path, p in zip(found, probs)]
        return TokenTree.from_paths(context[-1], paths, scores).best(budget)

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        # absorb this step's tokens now, so the last step of a request reaches the global trie too
        self._absorb(self._context + acceptance.new_tokens(tree))

    # ----------------------------------------------------------------- sharing (replicas)
    def knowledge_delta(self, final: bool = False) -> dict:
        """Responses that stopped growing since the last call (their requests ended; with
        ``final`` every one), each shared once."""
        ready = []
        for response in self.store.responses:
            if response.shared:
                continue
            if final or response.seen == len(response.tokens):
                response.shared = True
                ready.append(list(response.tokens))
            response.seen = len(response.tokens)
        return {"suffix": ready}

    def absorb_knowledge(self, delta: dict) -> None:
        """Store another's responses as past responses here (same caps, oldest evicted first)."""
        for tokens in delta.get("suffix", []):
            response = self.store.begin([])
            response.shared = True
            self.store.extend(response, [int(t) for t in tokens])

    def state_dict(self) -> dict:
        """The persistent part: the stored responses (the global trie is rebuilt from them)."""
        return {"depth": self.config.depth, "responses": [r.tokens for r in self.store.responses]}

    def load_state_dict(self, state: dict, vocab_size: int) -> None:
        if state["depth"] != self.config.depth:
            raise ValueError(
                f"saved with depth {state['depth']}, this drafter uses {self.config.depth}"
            )
        responses = state["responses"]
        if not isinstance(responses, list) or not all(
            isinstance(r, list) and all(isinstance(t, int) and 0 <= t < vocab_size for t in r)
            for r in responses
        ):
            raise ValueError("responses must be lists of token ids below the vocabulary size")
        self.store = ResponseStore(
            self.config.depth, self.config.max_nodes, self.config.max_responses
        )
        for tokens in responses:
            self.store.extend(self.store.begin([]), tokens)
