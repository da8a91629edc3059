"""Warping and acceptance rules: pure functions from (draft, target logits) to the accepted path.

Notation (DESIGN.md section 2): ``p`` is the target's warped next-token distribution at a node,
``q`` the warped draft distribution the node's children were drawn from. The rule is chosen by how
the drafter drew the children (:class:`Draw`), which travels with the tree in a :class:`Draft`, so
a drafter cannot be verified by a rule that would be lossy for it:

- V-greedy: temperature 0, any draft.
- V-det (``Draw.DETERMINISTIC``): candidates chosen without randomness (PLD, tries, recycling).
- V-RRS (``Draw.WITHOUT_REPLACEMENT``): children drawn from q without replacement, in order.
- V-MSS (``Draw.IID``): children drawn i.i.d. from q.
- Block verification (any draw) wherever the rest of a draft is one chain: the chain is judged at
  once (Sun et al., ICLR 2025); the same output law, and at least as many accepted tokens as the
  token-by-token rules (optimal for one chain).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .errors import TokentreeError
from .reductions import row_argmax
from .tree import TokenTree

# temperatures below this decode greedily (the limit T -> 0; logits / T would overflow)
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Warping applied identically to target and draft distributions (HF order: T, top-k, top-p,
    min-p)."""

    temperature: float = 0.0  # 0 (or below GREEDY_BELOW) = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 100:
            raise TokentreeError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise TokentreeError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise TokentreeError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise TokentreeError(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Next-token probabilities after temperature, top-k, top-p and min-p.

    logits: [n, V] (any float dtype) -> [n, V] float32 rows summing to 1. Requires temperature > 0.
    Ties at the top-k / top-p boundary resolve like transformers' logits warpers.
    """
    if params.greedy:
        raise ValueError("warp needs temperature > 0; greedy decoding uses the argmax")
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = scores.topk(params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1:
        ascending, order = scores.sort(dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - params.top_p
        drop[..., -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if params.min_p > 0:
        probs = scores.softmax(dim=-1)
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        scores = scores.masked_fill(probs < floor, float("-inf"))
    return scores.softmax(dim=-1)


class Draw(enum.Enum):
    """How a drafter chose each node's children; decides the acceptance rule."""

    DETERMINISTIC = "det"
    WITHOUT_REPLACEMENT = "rrs"
    IID = "mss"


@dataclass(frozen=True)
class Draft:
    """A proposed tree and how it was drawn.

    q: [n, V] float32, row i = the warped draft distribution node i's children were drawn from
       (in the order of ``tree.children[i]``); required for sampled draws, absent for deterministic.
    """

    tree: TokenTree
    draw: Draw = Draw.DETERMINISTIC
    q: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.q is None) != (self.draw is Draw.DETERMINISTIC):
            raise ValueError(
                f"a {self.draw.name} draft {'needs' if self.q is None else 'takes no'} q"
            )
        if self.q is not None and self.q.shape[0] != len(self.tree):
            raise ValueError(f"q has {self.q.shape[0]} rows for a tree of {len(self.tree)} nodes")

    def on(self, device: torch.device) -> "Draft":
        """This draft with q on ``device`` (the target's logits' device; unchanged when it is
        there)."""
        if self.q is None or self.q.device == device:
            return self
        return Draft(self.tree, self.draw, self.q.to(device))

    def capped(self, max_leaves: int | None) -> "Draft":
        """This draft cut to its longest node prefix with at most ``max_leaves`` leaves (None:
        unchanged)."""
        if max_leaves is None:
            return self
        m = self.tree.prefix_with_leaves(max_leaves)
        if m == len(self.tree):
            return self
        return Draft(self.tree.prefix(m), self.draw, None if self.q is None else self.q[:m])


@dataclass(frozen=True)
class Acceptance:
    """Result of verifying one tree.

    nodes: accepted node indices from the root (always starting with 0), in tree order.
    bonus: the token the target chose after the last accepted node.
    """

    nodes: tuple[int, ...]
    bonus: int

    @property
    def accepted(self) -> int:
        """Drafted tokens accepted (the root and the bonus not counted)."""
        return len(self.nodes) - 1

    def new_tokens(self, tree: TokenTree) -> list[int]:
        """Tokens this step commits: the accepted drafted tokens, then the bonus."""
        return [tree.tokens[i] for i in self.nodes[1:]] + [self.bonus]


def _check_rows(tree: TokenTree, logits: torch.Tensor) -> None:
    if logits.shape[0] != len(tree):
        raise ValueError(f"logits has {logits.shape[0]} rows for a tree of {len(tree)} nodes")


def _uniform(generator: torch.Generator) -> float:
    """One U(0, 1) draw from ``generator`` (the request's CPU generator, on every device)."""
    return float(torch.rand((), generator=generator))


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from ``probs`` [V] (any device), drawn by ``generator`` on its own device: the
    same draw on a GPU as on a CPU."""
    return int(torch.multinomial(probs.to(generator.device), 1, generator=generator))


def accept_greedy(tree: TokenTree, logits: torch.Tensor) -> Acceptance:
    """V-greedy: follow the child equal to the target argmax until a miss.

    logits: [n, V] target logits, row i = distribution after node i. Only the rows along the
    accepted path are reduced (a step reads a few of a large tree's rows).
    """
    _check_rows(tree, logits)
    nodes = [0]
    while True:
        best = int(row_argmax(logits[nodes[-1] : nodes[-1] + 1])[0])
        child = tree.child_with_token(nodes[-1], best)
        if child is None:
            return Acceptance(tuple(nodes), best)
        nodes.append(child)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)) for [V] rows; p itself if the difference vanishes (p == q up to
    rounding)."""
    rest = (p - q).clamp_min(0)
    total = rest.sum()
    return rest / total if total > 1e-12 else p


def _without(q: torch.Tensor, token: int) -> torch.Tensor:
    """q with ``token`` removed and renormalised (zeros if nothing is left)."""
    q = q.clone()
    q[token] = 0
    total = q.sum()
    return q / total if total > 0 else q


def _try_children(
    children: list[tuple[int, int]],
    p: torch.Tensor,
    q: torch.Tensor | None,
    draw: Draw,
    generator: torch.Generator,
) -> tuple[int | None, torch.Tensor]:
    """Try ``(node, token)`` children in order at one node; the accepted node (or None) and the
    final p."""
    for node, token in children:
        if draw is Draw.DETERMINISTIC:
            chance = p[token]
        else:
            chance = torch.clamp(p[token] / q[token], max=1.0) if q[token] > 0 else 0.0
        if _uniform(generator) < float(chance):
            return node, p
        if draw is Draw.DETERMINISTIC:
            p = _without(p, token)
        else:
            p = residual(p, q)
            if draw is Draw.WITHOUT_REPLACEMENT:
                q = _without(q, token)
    return None, p


def accept_sampled(draft: Draft, p: torch.Tensor, generator: torch.Generator) -> Acceptance:
    """V-det / V-RRS / V-MSS by ``draft.draw``; the bonus is drawn from the residual at the first
    miss.

    p: [n, V] warped target probabilities (see :func:`warp`), row i = distribution after node i.
    """
    tree, draft = draft.tree, draft.on(p.device)
    _check_rows(tree, p)
    nodes = [0]
    while True:
        node = nodes[-1]
        children = [(c, tree.tokens[c]) for c in tree.children[node]]
        q = None if draft.q is None else draft.q[node]
        accepted, rest = _try_children(children, p[node], q, draft.draw, generator)
        if accepted is None:
            return Acceptance(tuple(nodes), _draw(rest, generator))
        nodes.append(accepted)


def _draft_row(draft: Draft, node: int, like: torch.Tensor) -> torch.Tensor:
    """q at ``node`` [V], on ``like``'s device: the draft's own row, or one-hot at the child a
    deterministic drafter chose."""
    if draft.q is not None:
        return draft.q[node].to(like.device)
    row = torch.zeros(like.shape[-1], device=like.device)
    row[draft.tree.tokens[node + 1]] = 1.0
    return row


def accept_block(
    draft: Draft, p: torch.Tensor, generator: torch.Generator, start: int = 0
) -> Acceptance:
    """Block verification of the chain below ``start`` (any draw; a deterministic one has one-hot
    q).

    Along the chain x_1..x_g below node ``start`` (its own distributions taken as they are), with
    weights w_0 = 1, w_i = min(w_{i-1} p_{i-1}(x_i) / q_{i-1}(x_i), 1) (p_i, q_i: the rows at the
    i-th chain node), node i < g is a stopping point with chance h_i = m_i / (m_i + 1 - w_i), where
    m_i = sum(max(w_i p_i - q_i, 0)), and node g with chance w_g; one uniform draw per node decides,
    and the deepest node that says stop ends the accepted prefix. The bonus comes from
    norm(max(w_i p_i - q_i, 0)) at that node i (from p_g after the whole chain). p: [n, V].
    The accepted nodes start at the root, through ``start``.
    """
    tree = draft.tree
    _check_rows(tree, p)
    if not tree.chain_below[start]:
        raise ValueError("block verification takes a chain draft")
    chain = tree.path_to(start)
    first = len(chain) - 1  # chain[first] is ``start``
    while tree.children[chain[-1]]:
        chain.append(tree.children[chain[-1]][0])
    weights, stop = [1.0], first
    for i in range(first + 1, len(chain)):
        parent, node = chain[i - 1], chain[i]
        q = _draft_row(draft, parent, p)
        token = tree.tokens[node]
        ratio = float(p[parent, token] / q[token]) if q[token] > 0 else 0.0
        weights.append(min(weights[-1] * ratio, 1.0))
        if i == len(chain) - 1:
            chance = weights[-1]
        elif weights[-1] >= 1.0:
            chance = 1.0
        else:
            mass = float((weights[-1] * p[node] - _draft_row(draft, node, p)).clamp_min(0).sum())
            chance = mass / (mass + 1.0 - weights[-1])
        if _uniform(generator) < chance:
            stop = i
    end = chain[stop]
    rest = p[end]
    if stop < len(chain) - 1:
        difference = (weights[stop - first] * p[end] - _draft_row(draft, end, p)).clamp_min(0)
        rest = difference if difference.sum() > 1e-12 else rest  # multinomial normalises
    return Acceptance(tuple(chain[: stop + 1]), _draw(rest, generator))


def accept_tree(draft: Draft, p: torch.Tensor, generator: torch.Generator) -> Acceptance:
    """The token-by-token rule of the draft's draw from the root down, and block verification from
    the first node whose subtree is one chain (the whole draft, when it is a chain).

    Lossless by composition: the token rule leaves the target's own p at an accepted node, and the
    chain below it was drawn from q given that node's prefix alone. p: [n, V] warped target rows.
    """
    tree, draft = draft.tree, draft.on(p.device)
    _check_rows(tree, p)
    nodes = [0]
    while True:
        node = nodes[-1]
        if tree.chain_below[node] and tree.children[node]:
            return accept_block(draft, p, generator, start=node)
        children = [(c, tree.tokens[c]) for c in tree.children[node]]
        q = None if draft.q is None else draft.q[node]
        accepted, rest = _try_children(children, p[node], q, draft.draw, generator)
        if accepted is None:
            return Acceptance(tuple(nodes), _draw(rest, generator))
        nodes.append(accepted)


class PositionNoise:
    """Gumbel noise for one seeded request: a [V] row per output position, a function of (seed,
    position) alone. Sampling position i as argmax(log p_i + G_i) draws exactly from p_i (the
    Gumbel-max trick), and since G_i does not depend on anything a drafter did, the text is a
    function of the seed: the same with every drafter, learned state and tree size, and the same
    as plain decoding with that seed."""

    KEEP = 256  # rows kept (the positions a step can still ask for lie just past the output)

    def __init__(self, seed: int):
        self.seed = seed
        self._rows: dict[int, torch.Tensor] = {}

    def at(self, position: int, vocab_size: int) -> torch.Tensor:
        """[vocab_size] float32 standard Gumbel noise of ``position``."""
        row = self._rows.get(position)
        if row is None or row.shape[0] != vocab_size:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + position) % 2**63)
            uniform = torch.rand(vocab_size, generator=generator).clamp_min(1e-20)
            row = -(-uniform.log()).log()
            self._rows = {k: v for k, v in self._rows.items() if k > position - self.KEEP}
            self._rows[position] = row
        return row


def accept_coupled(
    tree: TokenTree, logits: torch.Tensor, params: SamplingParams, noise: PositionNoise, start: int
) -> Acceptance:
    """Seeded sampling: V-greedy on Gumbel-perturbed warped log-probabilities.

    The token after a node of depth d is output position ``start + d``; it is argmax(log p + G) with
    that position's noise (see :class:`PositionNoise`), and the child holding it, if any, is
    accepted. Lossless for any tree: every emitted token is the Gumbel-max draw from the target's
    own p at its position. logits: [n, V]; only the rows along the accepted path are warped.
    """
    _check_rows(tree, logits)
    nodes = [0]
    while True:
        node = nodes[-1]
        p = warp(logits[node : node + 1], params)[0]
        gumbel = noise.at(start + tree.depths[node], p.shape[0]).to(p.device)
        token = int(row_argmax((p.log() + gumbel)[None])[0])
        child = tree.child_with_token(node, token)
        if child is None:
            return Acceptance(tuple(nodes), token)
        nodes.append(child)


def accept(
    draft: Draft, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> Acceptance:
    """The lossless rule for ``draft`` under ``params``: V-greedy at temperature 0, else
    :func:`accept_tree` (the draw kind's token rule, block verification along chains)."""
    if params.greedy:
        return accept_greedy(draft.tree, logits)
    return accept_tree(draft, warp(logits, params), generator)


def gumbel_top_k(q: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """``k`` tokens drawn from ``q`` [V] without replacement, in draw order (Gumbel-top-k trick).

    Returns fewer than ``k`` when q has fewer non-zero entries.
    """
    k = min(k, int((q > 0).sum()))
    if k <= 0:
        return []
    uniform = torch.rand(q.shape, generator=generator).clamp_min(1e-20).to(q.device)
    keys = q.log() - (-uniform.log()).log()
    return keys.topk(k).indices.tolist()
