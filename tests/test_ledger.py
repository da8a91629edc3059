"""The per-request guarantee (planner.ledger), the planner's hysteresis, its request evidence."""

from __future__ import annotations

import pytest

from tokentree.planner import (
    HYSTERESIS,
    PROBE_COST,
    CostProfile,
    Planner,
)
from tokentree.planner.ledger import ALLOWANCE, SLACK_STEPS, RequestLedger
from tokentree.sampling import Acceptance
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

STEEP = CostProfile((1, 2, 4, 8, 16), (1.0, 1.1, 1.4, 2.2, 4.0), 256)
CHAIN = TokenTree.chain(0, list(range(1, 9)))
# the most nodes a request over its budget may verify: a probe's extra half step on STEEP
PROBE_FLOOR = max(n for n in range(1, 9) if STEEP.seconds_at(n + 1, 0) - 1.0 <= PROBE_COST - 1)


def test_the_ledger_counts_loss_and_the_risk_budget():
    ledger = RequestLedger()
    assert ledger.speedup == 1.0 and ledger.budget_s == 0.0
    ledger.record(3, 1.5, 1.0)  # 3 tokens in 1.5 s where plain decoding takes 3 s
    assert ledger.loss_s == pytest.approx(-1.5) and ledger.speedup == pytest.approx(2.0)
    assert ledger.budget_s == pytest.approx(ALLOWANCE * 3 + SLACK_STEPS + 1.5)  # won: bet more
    for _ in range(3):  # trees that emit one token for two steps' time
        ledger.record(1, 2.0, 1.0)
    assert ledger.loss_s == pytest.approx(1.5)
    assert ledger.budget_s == pytest.approx(ALLOWANCE * 6 + SLACK_STEPS - 1.5)  # over: negative


def test_the_risk_cap_follows_the_ledger():
    planner = Planner(STEEP)
    planner.begin_request()
    assert planner.risk_cap() == planner.config.max_nodes  # nothing timed yet: no cap
    planner.account(1, 1.0, 1)  # one plain step: the budget is the allowance, about one step
    fresh = planner.risk_cap()
    assert STEEP.seconds_at(fresh + 1, 0) - 1.0 <= planner.ledger.budget_s
    planner.account(10, 1.0, 9)  # a tree that won 9 steps' time: bigger bets
    assert planner.risk_cap() > fresh
    planner.account(1, 30.0, 9)  # a huge loss: a probe's risk (half a step) at most
    assert planner.risk_cap() == PROBE_FLOOR


def simulate(planner: Planner, steps: int, bonus: int, tree: TokenTree = CHAIN) -> list[int]:
    """Greedy steps where the target's next token is always ``bonus`` (a drafted node matches it
    only at depth one, when its token is ``bonus``), each verify taking the profile's time."""
    profile = planner.profile
    chosen = []
    for _ in range(steps):
        n = planner.choose(tree)
        cut = planner.cut(tree, n)
        hit = cut.child_with_token(0, bonus)
        acceptance = Acceptance((0,) if hit is None else (0, hit), bonus)
        seconds = profile.seconds_at(len(cut), 0)
        planner.observe(cut, acceptance, draft_s=0.0, verify_s=seconds)
        planner.account(acceptance.accepted + 1, seconds, len(cut))
        chosen.append(n)
    return chosen


def misled_planner(profile: CostProfile = STEEP) -> Planner:
    """A planner whose shared calibration was shaped by requests where everything was accepted."""
    planner = Planner(profile)
    for _ in range(300):
        planner.calibrator.update(CHAIN, Acceptance(tuple(range(9)), 9))
    planner.begin_request()
    return planner


def test_a_request_that_loses_decodes_plainly_within_its_allowance():
    planner = misled_planner()
    chosen = simulate(planner, 300, bonus=99)  # nothing drafted is ever right
    ledger = planner.ledger
    assert ledger.loss_s <= ledger.limit_s + PROBE_COST * STEEP.seconds_at(1, 0)
    assert ledger.speedup >= 1 / (1 + ALLOWANCE) - 0.01
    assert sum(n > 0 for n in chosen[50:]) <= 4  # probes back off: 16, 32, 64, 128 steps


def test_a_losing_request_bets_small_and_wins_its_loss_back_when_trees_pay():
    planner = misled_planner()
    planner.account(1, 10.0, 1)  # a step that lost 9 steps' time
    caps, lost = [], planner.ledger.loss_s
    for _ in range(60):  # depth one right: small trees pay, and earn the loss back
        caps.append(planner.risk_cap())
        simulate(planner, 1, bonus=1)
    assert caps[0] == PROBE_FLOOR and planner.ledger.loss_s < lost - 5
    assert caps[-1] > caps[0]  # and bets grow with what they won


def test_a_losing_step_risks_at_most_a_probe():
    planner = misled_planner()
    planner.account(1, 10.0, 1)
    before = planner.ledger.loss_s
    chosen = simulate(planner, 60, bonus=99)  # nothing right
    drafted = sum(n > 0 for n in chosen)
    half_step = (PROBE_COST - 1) * STEEP.seconds_at(1, 0)
    assert max(chosen) <= PROBE_FLOOR
    assert planner.ledger.loss_s - before <= drafted * half_step + 1e-9
    assert drafted < len(chosen) / 4  # and the tilts soon stop it


def test_hysteresis_keeps_the_current_mode_inside_the_band():
    planner = Planner(CostProfile((1, 2), (1.0, 1.5), 256))
    planner.begin_request()
    planner._fresh = False
    rate = planner.rate  # one token per second: a node is worth verifying above 0.5
    estimate = 0.5 + HYSTERESIS / 2  # inside the band: better than plain, by less than the lead
    planner.estimates = lambda tree, forced=frozenset(): [1.0] + [estimate] * (len(tree) - 1)
    single = TokenTree.chain(0, [1])
    assert rate == pytest.approx(1.0)
    planner._chosen = 1
    assert planner.choose(single) == 1  # drafting goes on
    planner._chosen = 0
    planner.probe.waited = -1000  # no probe now
    assert planner.choose(single) == 0  # plain decoding goes on
    planner.estimates = lambda tree, forced=frozenset(): (
        [1.0] + [0.5 + 2 * HYSTERESIS] * (len(tree) - 1)
    )
    assert planner.choose(single) == 1  # a clear lead starts drafting


def test_first_level_evidence_lifts_deeper_estimates_of_this_request():
    planner = Planner(STEEP)
    for i in range(300):  # other requests: depth one right half the time, deeper never
        planner.calibrator.update(CHAIN, Acceptance((0, 1) if i % 2 else (0,), 9))
    planner.begin_request()
    before = planner.estimates(CHAIN)[3]
    for _ in range(6):  # this request: plain steps whose shadow hits every time
        planner._shadow = CHAIN.subset(CHAIN.children[0])
        planner.observe(TokenTree.root(0), Acceptance((0,), 1), 0.0, 1.0)
    assert planner.tilts[0].factor > 1.1
    assert planner.estimates(CHAIN)[3] > 1.1 * before


def test_stats_report_the_estimated_speedup_honestly():
    stats = GenerationStats()
    assert stats.speedup_note() == "" and stats.to_dict()["estimated_speedup"] is None
    stats.estimated_speedup = 0.987
    assert "nothing to draft here" in stats.speedup_note() and "0.99x" in stats.summary()
    stats.drafted_tokens, stats.estimated_speedup = 12, 1.5
    assert "~1.50x plain decoding (estimated" in stats.summary()
    assert stats.to_dict()["estimated_speedup"] == 1.5
