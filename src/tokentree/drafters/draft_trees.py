"""The draft-model drafters: chain, specinfer, rsd-c, sequoia and dyspec (see ``model.py``; rsd-s
in ``beam.py``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from ..backends import GrowingBackend, make_backend
from ..backends.llamacpp import LlamaCppModel
from ..backends.openvino import OpenVINOModel
from ..sampling import Acceptance, Draft, Draw, SamplingParams
from ..tree import TokenTree
from .model import CATCH_UP, DraftModel, GrowingTree
from .pld import PLDConfig, PromptLookupDrafter
from .sequoia import DEFAULT_VECTOR, load_calibration, optimal_tree

GREEDY = SamplingParams()


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(
            f"widths must be comma-separated integers like 4,2,2,1,1, got '{text}'"
        ) from None
    if not widths or any(not 1 <= w <= 32 for w in widths) or len(widths) > 32:
        raise ValueError(f"widths must be 1..32 integers in [1, 32], got '{text}'")
    return widths


class _DraftModelDrafter:
    """Shared plumbing: greedy ``propose`` and sampled ``propose_sampled`` both call ``_grow``."""

    draw = Draw.WITHOUT_REPLACEMENT
    runs_draft_model = True

    def __init__(
        self, draft_model: torch.nn.Module | LlamaCppModel | OpenVINOModel | GrowingBackend
    ):
        """``draft_model``: a loaded model (run on its default backend) or the backend to run it
        on (e.g. a static cache, see ``tokentree.api.draft_source``)."""
        if isinstance(draft_model, (torch.nn.Module, LlamaCppModel, OpenVINOModel)):
            draft_model = make_backend(draft_model, draft=True)
        self.model = DraftModel(draft_model)

    def propose(self, context: Sequence[int], budget: int) -> TokenTree:
        return self._grow(context, self.model.room(budget), GREEDY, torch.Generator()).tree

    def propose_sampled(
        self,
        context: Sequence[int],
        budget: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Draft:
        return self._grow(context, self.model.room(budget), params, generator)

    def _grow(
        self,
        context: Sequence[int],
        budget: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Draft:
        raise NotImplementedError

    def observe(self, tree: TokenTree, logits: torch.Tensor, acceptance: Acceptance) -> None:
        self.model.commit(tree, acceptance)

    def reset(self) -> None:
        pass

    def clear_caches(self) -> None:
        self.model.backend.reset()

    def _finish(self, grown: GrowingTree) -> Draft:
        return grown.draft(self.draw, self.model.backend.vocab_size)


@dataclass
class ChainConfig:
    """Chain speculative decoding (CLI flags ``--chain-<field>``)."""

    k: int = 5  # draft tokens per step to start with
    adaptive: bool = True  # HF's rule: k + 2 after a fully accepted step, k - 1 after a miss
    max_k: int = 16
    # stop drafting when the draft's top probability falls below this (0 = never)
    confidence: float = 0.3
    # greedy: guess up to this many of the draft's own next tokens by prompt lookup (0 = off)
    lookup: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.max_k <= 64:
            raise ValueError(f"need 1 <= k <= max_k <= 64, got k={self.k}, max_k={self.max_k}")
        if not 0 <= self.lookup <= 64:
            raise ValueError(f"lookup must be in [0, 64], got {self.lookup}")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0, 1), got {self.confidence}")


class ChainDrafter(_DraftModelDrafter):
    name = "chain"
    default_budget = 16

    def __init__(self, config: ChainConfig, draft_model: torch.nn.Module):
        super().__init__(draft_model)
        self.config = config
        self.k = config.k
        self.guesser = PromptLookupDrafter(PLDConfig(max_ngram=4, min_ngram=1))

    def propose_guided(self, context: Sequence[int], budget: int, guide: TokenTree) -> TokenTree:
        """The greedy chain, guessing first along ``guide``'s most likely path (then by prompt
        lookup)."""
        return self._grow_staged(context, min(self.k, budget), guide).tree

    def _grow(self, context, budget, params, generator) -> Draft:
        depth = min(self.k, budget)
        if params.greedy and self.config.lookup:
            return self._grow_staged(context, depth, TokenTree.root(int(context[-1])))
        grown = self.model.start(context)

        def may_expand(node: int) -> bool:
            """Below the length, and the node itself was a confident draw (its distribution was
            computed anyway, so even an unconfident token is drafted, as transformers does)."""
            return (
                len(grown.ranks[node]) < depth and grown.step_prob(node) >= self.config.confidence
            )

        self.model.grow_levels(
            grown,
            lambda node, probs: int(may_expand(node)),
            depth,
            self.draw,
            params,
            generator,
            may_expand=may_expand,
        )
        return self._finish(grown)

    def _grow_staged(self, context: Sequence[int], depth: int, guide: TokenTree) -> Draft:
        """The greedy chain, with the draft's own next tokens guessed (staged speculation): along
        ``guide`` while the chain follows it, else by prompt lookup. Each draft forward carries
        the chain's newest token plus a guessed continuation; every guess the draft's argmax
        agrees with is drafted without a forward of its own. The chain is exactly the one
        ``_grow`` drafts, in fewer (wider) draft forwards.
        """
        seen = self.model.start(context)  # every node given to the draft, guesses included
        chain = GrowingTree([int(context[-1])])  # the drafted chain, scored by draft probabilities
        history, tip = list(context), 0  # tip: the chain's newest node in `seen`, not yet forwarded
        while len(chain.tokens) - 1 < depth:
            room = min(depth - len(chain.tokens), self.config.lookup)
            node = tip
            for token in self._guess(history, room, guide, len(chain.tokens)):
                node = seen.add(node, 0, token, 1.0)
            nodes, logits = self.model.forward_new(seen)
            for i, row in enumerate(logits):
                top_prob, top = (float(v) for v in torch.softmax(row.float(), dim=-1).max(dim=-1))
                top = int(top)
                chain.add(len(chain.tokens) - 1, 0, top, top_prob)
                history.append(top)
                if len(chain.tokens) - 1 >= depth or top_prob < self.config.confidence:
                    return Draft(chain.tree())
                if i + 1 < len(nodes) and seen.tokens[nodes[i + 1]] == top:
                    continue  # the guess was right: its logits give the next token
                tip = seen.add(nodes[i], 0, top, top_prob)
                break
        return Draft(chain.tree())

    def _guess(self, history: list[int], count: int, guide: TokenTree, chain_len: int) -> list[int]:
        """Up to ``count`` guesses of the tokens after ``history``, whose last ``chain_len`` tokens
        are the chain so far (its root included): ``guide``'s best path below them, else prompt
        lookup."""
        if count <= 0:
            return []
        path = guide.follow(history[len(history) - chain_len :])
        node = path[-1] if len(path) == chain_len else None
        guesses: list[int] = []
        scores = guide.scores or (1.0,) * len(guide)
        while node is not None and guide.children[node] and len(guesses) < count:
            node = max(guide.children[node], key=lambda child: scores[child])
            guesses.append(guide.tokens[node])
        return guesses or self.guesser.propose(history, count).tokens[1:]

    def observe(self, tree, logits, acceptance) -> None:
        super().observe(tree, logits, acceptance)
        if self.config.adaptive and len(tree) > 1:
            full = acceptance.accepted == len(tree) - 1
            self.k = min(self.k + 2, self.config.max_k) if full else max(1, self.k - 1)


@dataclass
class SpecInferConfig:
    """SpecInfer's per-depth branching (CLI flags ``--specinfer-<field>``); children drawn i.i.d.
    when sampling."""

    widths: str = "2,2,1,1"  # children per node at depth 0, 1, 2, ...

    def __post_init__(self) -> None:
        parse_widths(self.widths)


@dataclass
class RSDCConfig(SpecInferConfig):
    """RSD-C's per-depth branching (CLI flags ``--rsdc-<field>``); children drawn without
    replacement when sampling."""


class WidthsDrafter(_DraftModelDrafter):
    """SpecInfer (i.i.d. children, V-MSS) or RSD-C (children without replacement, V-RRS) trees."""

    default_budget = 16

    def __init__(
        self, config: SpecInferConfig, draft_model: torch.nn.Module, name: str, draw: Draw
    ):
        super().__init__(draft_model)
        self.name, self.draw = name, draw
        self.widths = parse_widths(config.widths)

    def _grow(self, context, budget, params, generator) -> Draft:
        grown = self.model.start(context)
        widths = self.widths

        def child_count(node: int, probs: torch.Tensor) -> int:
            depth = len(grown.ranks[node])
            return widths[depth] if depth < len(widths) else 0

        self.model.grow_levels(
            grown,
            child_count,
            budget,
            self.draw,
            params,
            generator,
            may_expand=lambda node: len(grown.ranks[node]) < len(widths),
        )
        return self._finish(grown)


@dataclass
class SequoiaConfig:
    """Sequoia (CLI flags ``--sequoia-<field>``)."""

    depth: int = 6  # maximum tree depth
    calibration: str = ""  # JSON from 'tokentree calibrate' (empty: the built-in default vector)

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 32:
            raise ValueError(f"depth must be in [1, 32], got {self.depth}")


class SequoiaDrafter(_DraftModelDrafter):
    name = "sequoia"
    default_budget = 16
    _warned = False

    def __init__(self, config: SequoiaConfig, draft_model: torch.nn.Module):
        super().__init__(draft_model)
        self.config = config
        if config.calibration:
            self.vector = load_calibration(config.calibration)
        else:
            self.vector = DEFAULT_VECTOR
            if not SequoiaDrafter._warned:
                print(
                    "tokentree: sequoia uses its built-in acceptance vector; 'tokentree "
                    "calibrate' measures "
                    "one for your model pair",
                    file=sys.stderr,
                )
                SequoiaDrafter._warned = True

    def shape(self, budget: int) -> dict[tuple[int, ...], int]:
        """Children count per rank path of the optimal tree with ``budget`` nodes."""
        _, paths = optimal_tree(self.vector, budget, self.config.depth)
        counts: dict[tuple[int, ...], int] = {}
        for path in paths:
            counts[path[:-1]] = counts.get(path[:-1], 0) + 1
        return counts

    def _grow(self, context, budget, params, generator) -> Draft:
        grown = self.model.start(context)
        counts = self.shape(budget)
        self.model.grow_levels(
            grown,
            lambda node, probs: counts.get(grown.ranks[node], 0),
            budget,
            self.draw,
            params,
            generator,
            may_expand=lambda node: grown.ranks[node] in counts,
        )
        return self._finish(grown)


@dataclass
class DySpecConfig:
    """DySpec (CLI flags ``--dyspec-<field>``)."""

    rounds: int = 4  # draft forwards per step at most (the tree's depth)
    candidates: int = 8  # children considered per expanded node
    # > 0: the threshold variant, keep every candidate whose path probability exceeds it
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 32:
            raise ValueError(f"rounds must be in [1, 32], got {self.rounds}")
        if not 1 <= self.candidates <= 64:
            raise ValueError(f"candidates must be in [1, 64], got {self.candidates}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")


class DySpecDrafter(_DraftModelDrafter):
    """The ``budget`` highest path-probability nodes, found with one draft forward per depth level.

    Level by level, only nodes that are currently among the best ``budget`` known nodes are
    forwarded and give their top ``candidates`` children. The best-n threshold only rises as nodes
    become known, so a node left out is never needed later: the final choice is exactly the n
    best nodes of the depth-limited top-k tree, ancestor-closed. Candidates are the draft's top
    tokens, a deterministic choice, so sampled requests verify them with V-det.
    """

    name = "dyspec"
    default_budget = 16
    draw = Draw.DETERMINISTIC

    def __init__(self, config: DySpecConfig, draft_model: torch.nn.Module):
        super().__init__(draft_model)
        self.config = config

    def _grow(self, context, budget, params, generator) -> Draft:
        backend = self.model.backend
        backend.prefill(context[:-1], defer=CATCH_UP)
        known = GrowingTree(
            [int(context[-1])]
        )  # every node explored so far; scores = path probabilities
        forwarded: dict[int, int] = {}  # known node -> index in the forwarded tree
        fwd_tokens: list[int] = []
        fwd_parents: list[int] = []
        frontier = [0]
        for _ in range(self.config.rounds):
            start = len(fwd_tokens)
            frontier = self._within_sequences(known, frontier, start)
            if not frontier:
                break
            for node in frontier:
                forwarded[node] = len(fwd_tokens)
                fwd_tokens.append(known.tokens[node])
                fwd_parents.append(-1 if node == 0 else forwarded[known.parents[node]])
            logits = backend.grow(TokenTree(tuple(fwd_tokens), tuple(fwd_parents)), start)
            added = []
            for node, row in zip(frontier, logits):
                probs, ids = torch.softmax(row.float(), -1).topk(self.config.candidates)
                added += [
                    known.add(node, rank, token, p)
                    for rank, (p, token) in enumerate(zip(probs.tolist(), ids.tolist()))
                ]
            chosen = set(self._best(known, budget))
            frontier = [node for node in added if node in chosen]
            if not frontier:
                break
        keep = sorted(self._best(known, budget))
        self.model.forwarded = len(fwd_tokens)
        return Draft(known.tree().subset(keep))

    def _within_sequences(
        self, known: GrowingTree, frontier: list[int], forwarded: int
    ) -> list[int]:
        """The frontier's best nodes that a draft backend with a sequence limit (llama.cpp) can
        still forward: each forwarded node may open a sequence, and nodes forwarded in earlier
        rounds keep theirs even when they drop out of the best set."""
        limit = self.model.backend.max_leaves
        if limit is None or forwarded + len(frontier) <= limit:
            return frontier
        best = sorted(frontier, key=lambda n: -known.scores[n])[: max(0, limit - forwarded)]
        return sorted(best)

    def _best(self, known: GrowingTree, budget: int) -> list[int]:
        """The best ``budget`` known nodes (or those above the threshold), ancestor-closed (path
        probabilities never rise from a parent to its child)."""
        ranked = known.tree().ranked()
        if self.config.threshold > 0:
            ranked = [n for n in ranked if known.scores[n] > self.config.threshold]
        return ranked[:budget]
