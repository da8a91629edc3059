"""A request's account of speculation against plain decoding: the per-request guarantee and the
speedup ``--stats`` shows.

Every timed step adds what it cost (drafting, the verify, accepting and learning: the step's wall
time) and what plain decoding would have cost for the tokens it emitted (one one-token verify
each, at this run's learned t(1)). Their difference is what speculation has won or lost so far in
this request. When it has lost more than a small allowance the planner decodes plainly for the
rest of the request, but for rare probes (see :class:`tokentree.planner.Planner`); a probe that
pays earns the credit back and planning resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOWANCE = 0.02  # speculation may lose this fraction of the plain time ...
SLACK_STEPS = 1.0  # ... plus this many plain steps, before the request decodes plainly
RESUME_STEPS = 1.0  # a guarded request plans again once it is this many steps within the limit


@dataclass
class RequestLedger:
    """Seconds a request's timed steps took (``spent_s``) against the seconds plain decoding would
    have taken for the same tokens (``plain_s``); ``step_s`` is the latest plain step estimate,
    the unit of the slack."""

    spent_s: float = 0.0
    plain_s: float = 0.0
    step_s: float = 0.0
    guarded: bool = False  # lost more than the allowance: decode plainly but for probes

    def record(self, emitted: int, seconds: float, plain_step_s: float) -> None:
        """One timed step: it took ``seconds`` for ``emitted`` tokens; plain decoding takes
        ``plain_step_s`` a token. Updates :attr:`guarded` (with hysteresis: it is lifted only
        once the loss is RESUME_STEPS steps below the limit)."""
        self.spent_s += seconds
        self.plain_s += emitted * plain_step_s
        self.step_s = plain_step_s
        margin = self.limit_s - self.loss_s
        self.guarded = margin < RESUME_STEPS * self.step_s if self.guarded else margin < 0

    @property
    def loss_s(self) -> float:
        """Seconds speculation has lost so far (negative: won)."""
        return self.spent_s - self.plain_s

    @property
    def limit_s(self) -> float:
        """The loss allowed before the request decodes plainly."""
        return ALLOWANCE * self.plain_s + SLACK_STEPS * self.step_s

    @property
    def speedup(self) -> float:
        """Plain decoding's estimated time over the realised time (1.0 before any timed step)."""
        return self.plain_s / self.spent_s if self.spent_s > 0 else 1.0
