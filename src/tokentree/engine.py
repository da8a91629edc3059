"""The speculative loop: propose -> verify -> accept -> compact -> observe -> emit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .backends.base import Backend, shared_prefix
from .constraints import GrammarState, TokenGrammar, masked
from .drafters.base import Drafter, StochasticDrafter
from .errors import TokentreeError
from .logprobs import MODES, prompt_logprobs, token_logprobs
from .planner import Planner
from .request import Request
from .sampling import (
    Acceptance,
    Draft,
    Draw,
    PositionNoise,
    SamplingParams,
    accept,
    accept_coupled,
)
from .stats import GenerationStats
from .trace import StepTrace, node_sources, trace_step
from .tree import TokenTree

GREEDY = SamplingParams()


DecodeRequest = Request  # the name before the one request (tokentree.request) existed


@dataclass
class Engine:
    """Runs the loop over a backend (the target) and a drafter.

    ``rule`` is the acceptance rule (default: the lossless one for each draft); tests swap in a
    deliberately biased rule to show the distribution tests can tell. ``planner`` sizes each step's
    tree when a request asks for ``budget="auto"``. With ``couple_seeded`` a seeded sampled request
    draws every position with noise keyed by its seed (:func:`accept_coupled`): its text depends on
    the seed alone, whatever the drafter learned; without it, seeded requests use ``rule`` like the
    others and repeat only with the same drafter state.
    """

    backend: Backend
    drafter: Drafter
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    rule: Callable[[Draft, torch.Tensor, SamplingParams, torch.Generator], Acceptance] = accept
    planner: Planner | None = None
    couple_seeded: bool = True
    # called with each step's StepTrace (tokentree generate --show-trees); None: no trace is made
    on_step: Callable[[StepTrace], None] | None = None
    # the target's tokenizer as the grammar engine sees it: constrained requests start from it
    grammar: TokenGrammar | None = None

    def run(
        self, prompt_ids: Sequence[int], request: Request, stats: GenerationStats
    ) -> Iterator[list[int]]:
        """Yield the new tokens of each step; ``stats`` is updated as steps complete.

        Stops after an EOS token (which is emitted) or ``request.max_new_tokens`` tokens.
        """
        run = self.start(prompt_ids, request, stats, self.backend, self.drafter, self.planner)
        while not run.done:
            draft = run.draft()
            started = time.perf_counter()
            logits = self.backend.verify(draft.tree)
            yield run.settle(logits, time.perf_counter() - started)

    def start(
        self,
        prompt_ids: Sequence[int],
        request: Request,
        stats: GenerationStats,
        backend: Backend,
        drafter: Drafter,
        planner: Planner | None,
    ) -> SequenceRun:
        """Prefill ``prompt_ids`` on ``backend`` and return the run that decodes it step by step."""
        if not prompt_ids:
            raise TokentreeError("the prompt is empty: give at least one token")
        start = time.perf_counter()
        context = [int(t) for t in prompt_ids]
        drafter.reset()
        stats.cached_prompt_tokens = shared_prefix(backend.tokens, context[:-1])
        if request.prompt_logprobs is not None:  # a prefill that keeps every row
            stats.prompt_logprobs = prompt_logprobs(backend, context, request.prompt_logprobs)
        backend.prefill(context[:-1], defer=backend.prompt_tail)
        stats.prompt_tokens = len(context)
        stats.prefill_s = time.perf_counter() - start
        budget, planner, coupled = self._plan(request, drafter, planner)
        return SequenceRun(
            self,
            backend,
            drafter,
            request,
            stats,
            context,
            budget,
            planner,
            _generator(request.seed),
            PositionNoise(request.seed) if coupled else None,
            start,
            grammar=self._grammar_state(request),
        )

    def _plan(
        self, request: Request, drafter: Drafter, planner: Planner | None
    ) -> tuple[int | str, Planner | None, bool]:
        """The run's budget, its planner (when the budget is "auto") and whether its sampling is
        coupled to its seed."""
        # the doors decide the budget (request.decide_budget); a hand-built request without one
        # gets the drafter's own default
        budget = drafter.default_budget if request.budget is None else request.budget
        if budget == "auto" and planner is None:
            raise TokentreeError("budget 'auto' needs a planner (tokentree.load(...) provides one)")
        params = request.sampling
        coupled = self.couple_seeded and request.seed is not None and not params.greedy
        if planner is not None and request.seed is not None and not params.greedy and not coupled:
            planner = Planner(planner.profile, planner.config, replayable=True)  # same seed, text
        if planner is not None and budget == "auto":
            planner.begin_request()
        return budget, planner if budget == "auto" else None, coupled

    def _grammar_state(self, request: Request) -> GrammarState | None:
        if request.constraint is None:
            return None
        if self.grammar is None:
            raise TokentreeError("this engine has no grammar (tokentree.load(...) provides one)")
        return self.grammar.start(request.constraint)


@dataclass
class SequenceRun:
    """One sequence being decoded: its context, drafter, planner and statistics between steps.

    A step is :meth:`draft`, then a verify of ``draft.tree`` by the caller (alone, or in one
    forward with other sequences' trees), then :meth:`settle` with the tree's logits.
    """

    engine: Engine
    backend: Backend
    drafter: Drafter
    request: Request
    stats: GenerationStats
    context: list[int]
    budget: int | str
    planner: Planner | None  # set when the budget is "auto"
    generator: torch.Generator
    noise: PositionNoise | None  # coupled sampling of a seeded request (see Engine)
    started: float
    own_forward: bool = True  # False: its verify shares a forward with other sequences (a batch)
    done: bool = False
    _draft: Draft | None = None
    _draft_s: float = 0.0
    _step_started: float = 0.0  # when this step's drafting began (the ledger's wall time)
    _candidate: int = 0  # drafted nodes the planner was offered this step
    grammar: GrammarState | None = None  # a constrained request's place in its grammar
    _masks: torch.Tensor | None = None  # [n, words] the grammar's rows for this step's tree

    @property
    def remaining(self) -> int:
        return self.request.max_new_tokens - self.stats.new_tokens

    def draft(self) -> Draft:
        """This step's draft (planned when the budget is "auto"), capped to the backend's leaves."""
        t0 = self._step_started = time.perf_counter()
        if self.planner is None:
            draft = self._drafted(min(self.budget, self.remaining - 1))
        else:
            self.planner.at(len(self.context))
            candidate = self._drafted(min(self.planner.candidate_size(), self.remaining - 1))
            self._candidate = len(candidate.tree) - 1
            n = self.planner.choose(candidate.tree, self.forced(candidate.tree))
            draft = self._sized(candidate, n)
        return self._take(draft, time.perf_counter() - t0)

    def candidate(self) -> Draft:
        """The candidate draft of this step (its planner's candidate size), sized together with
        other sequences' by the caller and then cut by :meth:`take`; needs a planner."""
        t0 = self._step_started = time.perf_counter()
        self.planner.at(len(self.context))
        draft = self._drafted(min(self.planner.candidate_size(), self.remaining - 1))
        self._draft_s = time.perf_counter() - t0
        self._candidate = len(draft.tree) - 1
        return draft

    def take(self, candidate: Draft, n: int) -> Draft:
        """This step's draft: ``candidate`` cut to the ``n`` drafted nodes a joint choice gave it,
        as its planner's request rules settle them (see :meth:`Planner.settle_choice`,
        :meth:`_sized`)."""
        t0 = time.perf_counter()
        n = self.planner.settle_choice(candidate.tree, n)
        return self._take(self._sized(candidate, n), self._draft_s + time.perf_counter() - t0)

    def plain(self) -> Draft:
        """This step as a plain one (the root only), in place of the draft taken."""
        return self._take(Draft(TokenTree.root(self.context[-1])), self._draft_s)

    def _take(self, draft: Draft, draft_s: float) -> Draft:
        capped = draft.capped(self.backend.max_leaves)
        self.stats.capped_steps += capped is not draft
        if self.grammar is not None:
            self._masks = self.grammar.masks(capped.tree)
        self._draft, self._draft_s = capped, draft_s
        return capped

    def settle(self, logits: torch.Tensor, verify_s: float) -> list[int]:
        """Accept from the verified tree's [n, V] logits, commit, learn; returns the new tokens."""
        draft, params = self._draft, self.request.sampling
        tree = draft.tree
        forward_s = verify_s  # the forward alone: what a plain step of plain decoding costs
        t1 = time.perf_counter()
        raw = self._raw_rows(logits)
        if self.grammar is not None:
            logits = masked(logits, self._masks)  # in place: the step's own logits
        if self.noise is None:
            acceptance = self.engine.rule(draft, logits, params, self.generator)
        else:
            acceptance = accept_coupled(tree, logits, params, self.noise, self.stats.new_tokens)
        self.backend.commit(acceptance.nodes)
        verify_s += time.perf_counter() - t1
        if self.engine.on_step is not None:
            self._trace(tree, acceptance)
        self.drafter.observe(tree, logits, acceptance)
        # the first verify also forwarded the prompt's tail; a batch's forward times all its
        # sequences' trees
        timed = self.planner is not None and self.own_forward and self.stats.steps > 0
        if self.planner is not None:
            seconds = verify_s if timed else None
            self.planner.observe(tree, acceptance, self._draft_s, seconds, self.forced(tree))
        new = _until_eos(acceptance.new_tokens(tree)[: self.remaining], self.engine.eos_ids)
        if self.grammar is not None:
            self.grammar.check_accepted(acceptance.nodes[-1])
            new = self.grammar.advance(new)
            self.stats.grammar = self.grammar.counts.to_dict()
            self.stats.complete = self.grammar.finished
        if self.request.logprobs is not None:
            self._record_logprobs(logits if raw is None else raw, acceptance, new)
        if timed:
            wall = time.perf_counter() - self._step_started
            self.planner.account(len(new), wall, len(tree), forward_s)
            self.stats.estimated_speedup = self.planner.ledger.speedup
        self.context.extend(new)
        self.stats.record_step(
            len(tree) - 1, acceptance.accepted, len(new), self._draft_s, verify_s
        )
        self.stats.total_s = time.perf_counter() - self.started
        if not self.stats.first_token_s and new:
            self.stats.first_token_s = self.stats.total_s
        self.done = self.remaining <= 0 or new[-1] in self.engine.eos_ids
        self.done |= self.stats.complete
        return new

    def _raw_rows(self, logits: torch.Tensor) -> torch.Tensor | None:
        """A copy of the step's logits before the grammar masks them, when raw logprobs of a
        constrained request need them (None otherwise: the logits themselves serve)."""
        wanted = self.request.logprobs is not None and self.grammar is not None
        return logits.clone() if wanted and self.request.logprobs_mode == MODES[0] else None

    def _record_logprobs(self, rows: torch.Tensor, acceptance: Acceptance, new: list[int]) -> None:
        """Append the log-probabilities of ``new`` (token k drawn from the row of accepted node
        k) to the stats."""
        picked = rows[list(acceptance.nodes[: len(new)])]
        processed = self.request.logprobs_mode != MODES[0]
        found = token_logprobs(picked, new, self.request.logprobs, self.request.sampling, processed)
        if self.stats.logprobs is None:
            self.stats.logprobs = []
        self.stats.logprobs.extend(found)

    def forced(self, tree: TokenTree) -> frozenset[int]:
        """Nodes of this step's ``tree`` that the grammar forced (none without a constraint)."""
        return frozenset() if self.grammar is None else self.grammar.forced_nodes(tree)

    def _trace(self, tree: TokenTree, acceptance: Acceptance) -> None:
        sources = node_sources(self.drafter, tree)
        candidate = self._candidate if self.planner is not None else None
        self.engine.on_step(trace_step(self.stats.steps, tree, acceptance, sources, candidate))

    def _drafted(self, budget: int) -> Draft:
        """A sampled draft from drafters that can draw one (when sampling), else a deterministic
        one; a planned step asking for no candidate drafts nothing (the drafter is not called),
        but the tokens a grammar forces are drafted on every step (they cost no drafting)."""
        if budget <= 0 and self.planner is not None:
            draft = Draft(TokenTree.root(self.context[-1]))
            return draft if self.grammar is None else self.grammar.shape(draft)
        params = (
            GREEDY if self.noise is not None else self.request.sampling
        )  # coupled: deterministic drafts
        if not params.greedy and isinstance(self.drafter, StochasticDrafter):
            draft = self.drafter.propose_sampled(self.context, budget, params, self.generator)
        else:
            draft = Draft(self.drafter.propose(self.context, budget))
        return draft if self.grammar is None else self.grammar.shape(draft)

    def _sized(self, candidate: Draft, n: int) -> Draft:
        """``candidate`` with (at most) ``n`` drafted nodes.

        Deterministic candidates (every greedy draft, V-det drafts) are simply cut to their best n
        nodes: which nodes stay depends on no random draw. A sampled draft cut by its scores would
        keep a sibling because of its identity, which the acceptance rules do not allow, so it is
        drawn afresh at the chosen size instead.
        """
        if n >= len(candidate.tree) - 1:
            return candidate
        if candidate.draw is Draw.DETERMINISTIC:
            return Draft(self.planner.cut(candidate.tree, n, self.forced(candidate.tree)))
        return self._drafted(n)


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _until_eos(tokens: list[int], eos_ids: Iterable[int]) -> list[int]:
    """``tokens`` cut after the first EOS (kept)."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
