"""A request's account of speculation against plain decoding: the per-request guarantee and the
speedup ``--stats`` shows.

Every timed step adds what it cost (drafting, the verify, accepting and learning: the step's wall
time) and what plain decoding would have cost for the tokens it emitted (one one-token verify
each, at this run's learned t(1)). Their difference is what speculation has won or lost so far in
this request. It sets the request's *risk budget*: a tree is verified only if, were nothing of it
accepted, the request would still be within its allowance (or the tree risks at most a probe's
extra half step; see :meth:`tokentree.planner.Planner.risk_cap`). A request starts with small
trees and bets more as its trees pay; one that loses is held to probes until trees pay again.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOWANCE = 0.02  # speculation may lose this fraction of the plain time ...
SLACK_STEPS = 1.0  # ... plus this many plain steps


@dataclass
class RequestLedger:
    """Seconds a request's timed steps took (``spent_s``) against the seconds plain decoding would
    have taken for the same tokens (``plain_s``); ``step_s`` is the latest plain step estimate
    (0 until a step is timed: then nothing is known and nothing is limited)."""

    spent_s: float = 0.0
    plain_s: float = 0.0
    step_s: float = 0.0

    def record(self, emitted: int, seconds: float, plain_step_s: float) -> None:
        """One timed step: it took ``seconds`` for ``emitted`` tokens; plain decoding takes
        ``plain_step_s`` a token."""
        self.spent_s += seconds
        self.plain_s += emitted * plain_step_s
        self.step_s = plain_step_s

    @property
    def loss_s(self) -> float:
        """Seconds speculation has lost so far (negative: won)."""
        return self.spent_s - self.plain_s

    @property
    def limit_s(self) -> float:
        """The loss allowed: ALLOWANCE of the plain time plus SLACK_STEPS plain steps."""
        return ALLOWANCE * self.plain_s + SLACK_STEPS * self.step_s

    @property
    def budget_s(self) -> float:
        """What the next step may lose and keep the request within its limit (negative: over)."""
        return self.limit_s - self.loss_s

    @property
    def speedup(self) -> float:
        """Plain decoding's estimated time over the realised time (1.0 before any timed step)."""
        return self.plain_s / self.spent_s if self.spent_s > 0 else 1.0
