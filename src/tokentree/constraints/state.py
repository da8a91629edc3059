"""One sequence's place in its grammar: the masks of a tree's nodes (each node's row allows the
tokens legal after its own path), drafted nodes the grammar forbids cut before the verify, the
tokens it forces added as drafts, and the committed tokens consumed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from ..sampling import Draft, Draw
from ..tree import TokenTree
from .spec import Constraint, ConstraintError, _llguidance

STUCK = (
    "the constraint allows no next token here (no token of this model's vocabulary continues it)"
)
MAX_FORCED = 16  # forced tokens added after one node at most
ALL = -1  # an int32 word with every bit set: a row nothing constrains (a node never reached)


class TokenGrammar:
    """A tokenizer as llguidance sees it, from which each constrained request starts a
    :class:`GrammarState`; built on the first constrained request (a second or two for a 150k
    vocabulary) and kept."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Iterable[int]):
        self.hf_tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _ll_tokenizer(self.hf_tokenizer, self.vocab_size, self.eos_ids)
        return self._tokenizer

    def warm(self) -> None:
        """Build the tokenizer and compute one mask: llguidance's first mask on a new tokenizer
        takes most of a second, which a server pays before it listens rather than in a request's
        first step."""
        state = self.start(Constraint.regex("[a-z]"))
        state.masks(TokenTree.root(0))

    def start(self, constraint: Constraint) -> GrammarState:
        matcher = _llguidance().LLMatcher(self.tokenizer, constraint.grammar())
        if matcher.is_error():
            raise ConstraintError(f"the {constraint.kind} constraint: {matcher.get_error()}")
        return GrammarState(matcher, self.vocab_size, frozenset(self.eos_ids))


def _ll_tokenizer(tokenizer, vocab_size: int, eos_ids: list[int]):
    """llguidance's tokenizer for a Hugging Face one: from its byte-level or sentencepiece
    definition, else from each token's decoded text (tokenizers whose decoder llguidance does not
    read, e.g. plain character vocabularies)."""
    _llguidance()
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
    except ValueError:
        pass
    special = set(getattr(tokenizer, "all_special_ids", ()))

    class ByText:
        eos_token_id = eos_ids[0]
        bos_token_id = getattr(tokenizer, "bos_token_id", None)
        special_token_ids = sorted(special)
        tokens = [  # special tokens marked as llguidance marks them: 0xFF, then the name
            b"\xff" + tokenizer.convert_ids_to_tokens(i).encode("utf-8")
            if i in special
            else tokenizer.decode([i]).encode("utf-8")
            for i in range(vocab_size)
        ]

        def __call__(self, text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False).input_ids)

    wrapped = llguidance.TokenizerWrapper(ByText())
    return llguidance.LLTokenizer(wrapped, n_vocab=vocab_size, eos_token=eos_ids)


@dataclass
class GrammarCounts:
    """What the grammar did for one request."""

    pruned: int = 0  # drafted nodes cut because the grammar forbids them
    forced: int = 0  # nodes added because the grammar forces their tokens
    seconds: float = 0.0  # in the matcher: masks, walks, consuming

    def to_dict(self) -> dict:
        return {"pruned": self.pruned, "forced": self.forced, "seconds": round(self.seconds, 4)}


class GrammarState:
    """A matcher at the committed tokens of one sequence."""

    def __init__(self, matcher, vocab_size: int, eos_ids: frozenset[int] = frozenset()):
        self.matcher = matcher  # at the committed tokens; trees are walked on copies
        self.eos_ids = eos_ids
        self.vocab_size, self.words = vocab_size, (vocab_size + 31) // 32
        self.counts = GrammarCounts()
        self.dead: set[int] = set()  # this step's nodes after which nothing may follow
        self.forced_paths: set[tuple[int, ...]] = set()  # this step's forced nodes, as token paths

    # ------------------------------------------------------------------ trees
    def shape(self, draft: Draft) -> Draft:
        """``draft`` with the nodes the grammar forbids removed and the runs of tokens it forces
        added (after the root and after each leaf, score of the node they follow). Sampled drafts
        are left as drawn: cutting a child drawn without replacement would change the law the
        acceptance rule relies on (their forbidden children are rejected there, p = 0)."""
        self.forced_paths = set()
        if draft.draw is not Draw.DETERMINISTIC:
            return draft
        started = time.perf_counter()
        tree = draft.tree
        walk = TreeWalk(self.matcher, self.words, tree, self.eos_ids, want_forced=True)
        for node, run in walk.forced.items():
            path = tuple(tree.tokens[n] for n in tree.path_to(node)[1:])
            self.forced_paths.update(path + tuple(run[: k + 1]) for k in range(len(run)))
        kept = [node for node in range(len(tree)) if walk.legal[node]]
        self.counts.pruned += len(tree) - len(kept)
        if walk.forced or len(kept) < len(tree):
            forced = {kept.index(node): run for node, run in walk.forced.items()}
            shaped = _with_forced(tree.subset(kept), forced)
            self.counts.forced += len(shaped) - len(kept)
            draft = Draft(shaped)
        self.counts.seconds += time.perf_counter() - started
        return draft

    def forced_nodes(self, tree: TokenTree) -> frozenset[int]:
        """The nodes of ``tree`` (this step's shaped draft, or a cut of it) that the grammar forced
        into it: what the planner calibrates apart from the drafter's nodes."""
        if not self.forced_paths:
            return frozenset()
        paths: list[tuple[int, ...]] = [()]
        for node in range(1, len(tree)):
            paths.append(paths[tree.parents[node]] + (tree.tokens[node],))
        return frozenset(n for n in range(1, len(tree)) if paths[n] in self.forced_paths)

    def masks(self, tree: TokenTree) -> torch.Tensor:
        """[n, words] int32 bitmasks: row i allows the tokens legal after node i's path. Rows of
        nodes the grammar forbids (and below them) allow everything: no accepted path reaches them;
        a legal node after which nothing may follow is remembered as :attr:`dead`."""
        started = time.perf_counter()
        walk = TreeWalk(self.matcher, self.words, tree, self.eos_ids)
        if 0 in walk.dead:
            raise ConstraintError(STUCK)
        self.dead = walk.dead
        self.counts.seconds += time.perf_counter() - started
        return walk.rows

    def allowed_next(self) -> np.ndarray:
        """[vocab_size] bool: the tokens the grammar allows after the committed tokens (plain
        constrained decoding's mask)."""
        from llguidance.torch import fill_next_token_bitmask

        started = time.perf_counter()
        row = torch.zeros((1, self.words), dtype=torch.int32)
        fill_next_token_bitmask(self.matcher, row, 0)
        if self.matcher.is_error():
            raise ConstraintError(STUCK)
        allowed = allowed_tokens(row, self.vocab_size)[0].numpy()
        self.counts.seconds += time.perf_counter() - started
        return allowed

    def check_accepted(self, last: int) -> None:
        """ConstraintError when the accepted path ends at a node after which the grammar allows
        no token of this vocabulary (plain decoding would be stuck there too)."""
        if last in self.dead:
            raise ConstraintError(STUCK)

    # ------------------------------------------------------------------ committing
    def advance(self, tokens: list[int]) -> list[int]:
        """Consume the committed tokens (each legal: drawn from masked rows) up to the one that
        completes the grammar; the tokens consumed (what follows a completion is dropped, so a
        step that also drew the EOS after it ends as plain decoding does, with the completion)."""
        started = time.perf_counter()
        for index, token in enumerate(tokens):
            if not self.matcher.consume_token(int(token)):
                raise ConstraintError(
                    f"the grammar refused token {token}: {self.matcher.get_error()}"
                )
            if self.matcher.is_stopped():
                tokens = tokens[: index + 1]
                break
        self.counts.seconds += time.perf_counter() - started
        return tokens

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing more may follow."""
        return bool(self.matcher.is_stopped())


class TreeWalk:
    """One depth-first walk of a tree from the committed state (consume a child, recurse, roll
    back), on a copy of the matcher: ``legal`` nodes, their ``rows`` (int32 bitmasks; ALL for
    nodes never reached), ``dead`` nodes (legal, but no token may follow: llguidance's matcher
    errs there, and a fresh copy resumes the walk) and, with ``want_forced``, the ``forced`` runs
    after the root and after each leaf. EOS children are legal when their parent's row allows
    them and are not consumed (nothing follows them; a matcher that consumed an EOS stays stopped
    after a rollback)."""

    def __init__(
        self,
        matcher,
        words: int,
        tree: TokenTree,
        eos_ids: frozenset[int] = frozenset(),
        want_forced: bool = False,
    ):
        self.committed, self.words, self.tree, self.eos_ids = matcher, words, tree, eos_ids
        self.walker = matcher.deep_copy()
        self.legal = [False] * len(tree)
        self.legal[0] = True
        self.rows = torch.full((len(tree), words), ALL, dtype=torch.int32)
        self.dead: set[int] = set()
        self.forced: dict[int, list[int]] = {}
        self.want_forced = want_forced
        self._visit(0, [])

    def _visit(self, node: int, path: list[int]) -> None:
        from llguidance.torch import fill_next_token_bitmask

        row = torch.zeros((1, self.words), dtype=torch.int32)
        fill_next_token_bitmask(self.walker, row, 0)
        if self.walker.is_error():  # a dead end: resume from a fresh copy at the parent
            self.dead.add(node)
            self._restore(path[:-1])
            return
        self.rows[node] = row[0]
        children = self.tree.children[node]
        if self.want_forced and (node == 0 or not children):
            run = list(self.walker.compute_ff_tokens())[:MAX_FORCED]
            if run:
                self.forced[node] = run
        for child in children:
            token = self.tree.tokens[child]
            if not allows(row[0], token):
                continue
            if token in self.eos_ids:
                self.legal[child] = True
                continue
            if not self.walker.consume_token(token):  # the mask promised more than the parser
                self._restore(path)  # takes: the child is forbidden, the walk goes on
                continue
            self.legal[child] = True
            self._visit(child, path + [token])
            if child not in self.dead:
                self.walker.rollback(1)

    def _restore(self, path: list[int]) -> None:
        """A fresh copy of the committed matcher, at ``path`` (tokens below the root)."""
        self.walker = self.committed.deep_copy()
        if path:
            self.walker.consume_tokens(path)


def allows(row: torch.Tensor, token: int) -> bool:
    """Whether bitmask ``row`` allows ``token``."""
    return bool((int(row[token >> 5]) >> (token & 31)) & 1)


def allowed_tokens(masks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, words] int32 bitmasks -> [n, vocab_size] bool (bit j of word w is token 32 w + j)."""
    bits = np.unpackbits(masks.numpy().view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab_size].astype(bool))


def masked(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``logits`` [n, V] with the tokens each row's bitmask forbids set to -inf, in place."""
    allowed = allowed_tokens(masks, logits.shape[1]).to(logits.device)
    with torch.inference_mode():  # the backends' logits may be inference tensors
        return logits.masked_fill_(~allowed, float("-inf"))


def _with_forced(tree: TokenTree, forced: dict[int, list[int]]) -> TokenTree:
    """``tree`` with each run in ``forced`` appended below its node (scores: the node's)."""
    scores = tree.scores or (1.0,) * len(tree)
    paths, path_scores = [], []
    for leaf in tree.leaves:
        path = tree.path_to(leaf)[1:]
        paths.append([tree.tokens[n] for n in path])
        path_scores.append([scores[n] for n in path])
    for node, run in forced.items():
        path = tree.path_to(node)[1:]
        paths.append([tree.tokens[n] for n in path] + run)
        path_scores.append([scores[n] for n in path] + [scores[node]] * len(run))
    return TokenTree.from_paths(tree.tokens[0], paths, path_scores)
