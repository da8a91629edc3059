"""Per-generation statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .logprobs import TokenLogprob


@dataclass
class GenerationStats:
    """Counters of one generation.

    accepted_hist maps "drafted tokens accepted in a step" to the number of such steps.
    tokens_per_step (tau) counts every token a step emits, the bonus too: plain decoding has tau =
    1, and a step that accepted k drafted tokens emits k + 1 ("accepted" never counts the bonus).
    """

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of those, found in the cache (a shared prefix not forwarded)
    new_tokens: int = 0
    steps: int = 0
    drafted_tokens: int = 0
    accepted_hist: dict[int, int] = field(default_factory=dict)
    # the prompt but its last few tokens (those go with the first tree, in verify_s)
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    first_token_s: float = 0.0  # from the start (prefill included) to the first new token
    capped_steps: int = 0  # steps whose tree was cut to the backend's sequence limit
    # plain decoding's estimated time over this run's, from the verify profile and the times
    # the run observed (planned requests only; see tokentree.planner.ledger)
    estimated_speedup: float | None = None
    # constrained requests (see tokentree.constraints): what the grammar did
    grammar: dict | None = None  # {"pruned", "forced", "seconds"}
    complete: bool = False  # the constraint was satisfied and allowed nothing more
    # requests asking for logprobs: one per new token (not in to_dict: the output's, not a count)
    logprobs: list[TokenLogprob] | None = None
    # requests asking for prompt logprobs: one per prompt token (None for the first)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def record_step(
        self, drafted: int, accepted: int, emitted: int, draft_s: float, verify_s: float
    ) -> None:
        self.steps += 1
        self.drafted_tokens += drafted
        self.new_tokens += emitted
        self.accepted_hist[accepted] = self.accepted_hist.get(accepted, 0) + 1
        self.draft_s += draft_s
        self.verify_s += verify_s

    @property
    def tokens_per_step(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "new_tokens": self.new_tokens,
            "capped_steps": self.capped_steps,
            "steps": self.steps,
            "drafted_tokens": self.drafted_tokens,
            "tokens_per_step": round(self.tokens_per_step, 4),
            "accepted_hist": {str(k): v for k, v in sorted(self.accepted_hist.items())},
            "tokens_per_s": round(self.tokens_per_s, 3),
            "prefill_s": round(self.prefill_s, 4),
            "draft_s": round(self.draft_s, 4),
            "verify_s": round(self.verify_s, 4),
            "total_s": round(self.total_s, 4),
            "first_token_s": round(self.first_token_s, 4),
            "estimated_speedup": None
            if self.estimated_speedup is None
            else round(self.estimated_speedup, 3),
        } | ({"grammar": self.grammar} if self.grammar is not None else {})

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.steps} steps, tau {self.tokens_per_step:.2f}, "
            f"{self.tokens_per_s:.2f} tokens/s (prefill {self.prefill_s:.2f}s, "
            f"draft {self.draft_s:.2f}s, verify {self.verify_s:.2f}s){self.speedup_note()}"
            + self.grammar_note()
        )

    def grammar_note(self) -> str:
        """What the grammar did, for constrained requests ('' otherwise)."""
        if self.grammar is None:
            return ""
        g = self.grammar
        return (
            f"; grammar: {g['pruned']} drafted nodes cut, {g['forced']} forced tokens drafted, "
            f"{g['seconds']:.3f}s"
        )

    def speedup_note(self) -> str:
        """The estimated speedup against plain decoding, in words ('' when not estimated)."""
        if self.estimated_speedup is None:
            return ""
        why = "nothing to draft here" if not self.drafted_tokens else "estimated from the profile"
        return f"; ~{self.estimated_speedup:.2f}x plain decoding ({why})"
