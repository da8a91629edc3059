"""The per-request guarantee (tokentree.ledger), the planner's hysteresis, its request evidence."""

from __future__ import annotations

import pytest

from tokentree.ledger import ALLOWANCE, RESUME_STEPS, SLACK_STEPS, RequestLedger
from tokentree.planner import (
    GUARD_PROBE_EVERY,
    HYSTERESIS,
    PROBE_COST,
    CostProfile,
    Planner,
)
from tokentree.sampling import Acceptance
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

STEEP = CostProfile((1, 2, 4, 8, 16), (1.0, 1.1, 1.4, 2.2, 4.0), 256)
CHAIN = TokenTree.chain(0, list(range(1, 9)))


def test_the_ledger_counts_loss_and_guards_with_hysteresis():
    ledger = RequestLedger()
    assert ledger.speedup == 1.0 and not ledger.guarded
    ledger.record(3, 1.5, 1.0)  # 3 tokens in 1.5 s where plain decoding takes 3 s
    assert ledger.loss_s == pytest.approx(-1.5) and ledger.speedup == pytest.approx(2.0)
    for _ in range(3):  # trees that emit one token for two steps' time
        ledger.record(1, 2.0, 1.0)
    # lost 1.5 s net; the limit is 2% of 6 s + one step
    assert ledger.loss_s == pytest.approx(1.5)
    assert ledger.limit_s == pytest.approx(ALLOWANCE * 6 + SLACK_STEPS * 1.0)
    assert ledger.guarded
    ledger.record(1, 1.0, 1.0)  # plain steps alone do not lift the guard ...
    assert ledger.guarded
    ledger.record(4, 1.2, 1.0)  # ... a probe that pays does, once a step within the limit
    assert ledger.limit_s - ledger.loss_s >= RESUME_STEPS * 1.0 and not ledger.guarded


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


def test_a_guarded_request_probes_rarely_and_only_after_a_shadow_hit():
    dear = CostProfile((1, 2, 4, 8), (1.0, 2.5, 4.0, 8.0), 256)  # even a right node does not pay
    planner = misled_planner(dear)
    simulate(planner, 40, bonus=99)
    planner.ledger.record(1, 10.0, 1.0)  # a step that lost 9 steps' time: guarded for long
    chosen = simulate(planner, 100, bonus=99)  # shadows never hit: a guarded request never probes
    assert chosen == [0] * 100 and planner.ledger.guarded
    chosen = simulate(planner, 4 * GUARD_PROBE_EVERY, bonus=1)  # depth one right: probes, rarely
    probes = [i for i, n in enumerate(chosen) if n]
    assert planner.ledger.guarded and 3 <= len(probes) <= 4
    assert all(b - a >= GUARD_PROBE_EVERY for a, b in zip(probes, probes[1:]))


def test_hysteresis_keeps_the_current_mode_inside_the_band():
    planner = Planner(CostProfile((1, 2), (1.0, 1.5), 256))
    planner.begin_request()
    planner._fresh = False
    rate = planner.rate  # one token per second: a node is worth verifying above 0.5
    estimate = 0.5 + HYSTERESIS / 2  # inside the band: better than plain, by less than the lead
    planner.estimates = lambda tree: [1.0] + [estimate] * (len(tree) - 1)
    single = TokenTree.chain(0, [1])
    assert rate == pytest.approx(1.0)
    planner._chosen = 1
    assert planner.choose(single) == 1  # drafting goes on
    planner._chosen = 0
    planner.probe.waited = -1000  # no probe now
    assert planner.choose(single) == 0  # plain decoding goes on
    planner.estimates = lambda tree: [1.0] + [0.5 + 2 * HYSTERESIS] * (len(tree) - 1)
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
