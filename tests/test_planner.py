"""The planner: cost profiles, calibrated acceptance, the optimal per-step cut, and budget="auto"
end to end."""

import itertools
import json
import math
import random
import time

import pytest
from conftest import tiny_model
from test_greedy_equality import hf_greedy

from tokentree.backends.hf import HFBackend
from tokentree.drafters import make_drafter
from tokentree.engine import DecodeRequest, Engine
from tokentree.errors import TokentreeError
from tokentree.planner import (
    LONG_PROFILE_SIZES,
    AcceptanceCalibrator,
    CostProfile,
    Planner,
    VerifyCost,
    load_profile,
    measure_profile,
    profile_path,
    save_profile,
)
from tokentree.sampling import Acceptance
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

STEEP = CostProfile((1, 2, 4, 8, 16), (1.0, 1.1, 1.4, 2.2, 4.0), 256)


def random_tree(rng, n):
    parents = [-1] + [rng.randrange(i) for i in range(1, n)]
    return TokenTree(
        tuple(rng.sample(range(50), n)),
        tuple(parents),  # distinct: siblings never share a token
        (1.0,) + tuple(rng.random() for _ in range(n - 1)),
    )


def trained_planner(profile, seed=0):
    """A planner whose calibrator has seen a mixed stream (different rates per depth and score)."""
    planner, rng = Planner(profile), random.Random(seed)
    for _ in range(200):
        tree = random_tree(rng, 9)
        path = [0]
        while True:
            kids = [c for c in tree.children[path[-1]] if rng.random() < tree.scores[c]]
            if not kids:
                break
            path.append(kids[0])
        planner.calibrator.update(tree, Acceptance(tuple(path), 0))
    return planner


def test_profile_interpolates_and_extrapolates():
    profile = CostProfile((1, 2, 4), (1.0, 1.0, 2.0), 128)
    assert profile.ratio(1) == 1.0 and profile.ratio(3) == pytest.approx(1.5)
    assert profile.ratio(8) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        CostProfile((2, 4), (1.0, 2.0), 128)


def test_verify_cost_starts_at_the_profile_and_learns_the_observed_shape():
    cost = VerifyCost(STEEP)
    assert [cost.seconds(n) for n in (1, 3, 16)] == pytest.approx([1.0, 1.25, 4.0])
    truth = {4: 2 * 1.4, 16: 3 * 4.0}  # this run: everything slower, and large trees more so
    rng = random.Random(0)
    for _ in range(600):
        n = rng.choice((4, 16))
        cost.observe(n, truth[n] * rng.uniform(0.95, 1.05))
    assert cost.seconds(16) / cost.seconds(4) == pytest.approx(
        truth[16] / truth[4], rel=0.05
    )  # the shape
    assert cost.seconds(4) == pytest.approx(
        truth[4], rel=0.15
    )  # the level moves with every observation
    assert cost.seconds(3) / cost.seconds(4) == pytest.approx(
        1.25 / 1.4
    )  # same bucket, the profile's shape


def test_verify_cost_with_one_size_observed_rescales_the_whole_curve():
    cost = VerifyCost(STEEP)
    for _ in range(300):
        cost.observe(16, 8.0)  # twice the profile
    assert cost.seconds(16) == pytest.approx(8.0, rel=0.03)
    assert cost.seconds(1) == pytest.approx(2.0, rel=0.1)  # the unobserved sizes scale with it


def test_verify_cost_never_prices_a_tree_below_one_token():
    cost = VerifyCost(CostProfile((1, 2, 4), (1.0, 1.3, 1.6), 256))
    rng = random.Random(0)
    for _ in range(300):  # one-token steps measured slower than two-node trees (load, a noisy size)
        n = rng.choice((1, 2))
        cost.observe(n, 1.5 if n == 1 else 1.2)
    assert cost.seconds(1) == pytest.approx(1.5, rel=0.05)
    assert cost.seconds(2) >= cost.seconds(1) and cost.seconds(4) >= cost.seconds(
        1
    )  # the raw curve says 1.25


@pytest.mark.parametrize("seed", range(6))
def test_cut_is_optimal_against_brute_force(seed):
    planner = trained_planner(STEEP, seed)
    planner.recent_tokens, planner.recent_seconds = (
        3.0,
        2.0 + seed / 3,
    )  # a loop making ~1.5 tokens per t(1)
    tree = random_tree(random.Random(100 + seed), 9)
    estimates = planner.calibrator.estimate(tree)
    best = -math.inf
    for size in range(len(tree)):
        for subset in itertools.combinations(range(1, len(tree)), size):
            if all(
                tree.parents[v] == 0 or tree.parents[v] in subset for v in subset
            ):  # ancestor-closed
                value = 1 + sum(estimates[v] for v in subset) - planner.rate * STEEP.ratio(size + 1)
                best = max(best, value)
    n = planner.choose(tree)
    assert planner.step_value(sorted(estimates[1:], reverse=True), n) == pytest.approx(best)


def test_a_confident_step_gets_a_larger_tree_than_the_best_ratio_of_that_step():
    """Dinkelbach's rule: nodes are worth verifying at the loop's average rate, not the step's
    own."""
    profile = CostProfile((1, 2, 4, 8), (1.0, 1.2, 1.6, 2.4), 256)
    planner = Planner(profile)
    for _ in range(100):
        planner.observe(
            TokenTree.root(0), Acceptance((0,), 1), 0.0, 1.0
        )  # plain steps: 1 token per second
    assert planner.rate == pytest.approx(1.0, rel=0.02)
    tree = TokenTree.chain(0, list(range(1, 8)))
    estimates = [
        1.0,
        0.99,
        0.98,
        0.97,
        0.4,
        0.35,
        0.3,
        0.25,
    ]  # confident, then doubtful nodes (each costs 0.2)
    planner.estimates = lambda tree, forced=frozenset(): estimates
    own_best_ratio = max(
        range(8), key=lambda n: (1 + sum(estimates[1 : n + 1])) / profile.ratio(n + 1)
    )
    assert own_best_ratio == 3 and planner.choose(tree) == 7


def test_best_estimates_are_ancestor_closed_and_sibling_ordered():
    rng = random.Random(7)
    planner = trained_planner(STEEP)
    for _ in range(50):
        tree = random_tree(rng, 12)
        est = planner.calibrator.estimate(tree)
        assert all(est[v] <= est[tree.parents[v]] for v in range(1, len(tree)))
        assert all(est[b] <= est[a] for kids in tree.children for a, b in zip(kids, kids[1:]))


def test_calibration_converges_on_a_synthetic_stream():
    calibrator, rng = AcceptanceCalibrator(), random.Random(1)
    chain = TokenTree.chain(0, [1, 2, 3, 4, 5])
    for _ in range(4000):
        depth = 0
        while depth < 5 and rng.random() < 0.8:
            depth += 1
        calibrator.update(chain, Acceptance(tuple(range(depth + 1)), 9))
    estimates = calibrator.estimate(chain)
    assert all(abs(estimates[d] - 0.8**d) < 0.06 for d in range(1, 6)), estimates


def test_calibration_learns_conditional_rates_for_siblings_and_children():
    calibrator, rng = AcceptanceCalibrator(), random.Random(2)
    tree = TokenTree((0, 1, 2, 3), (-1, 0, 1, 0))  # root -> a -> b, and c a sibling of a
    for _ in range(4000):
        if rng.random() < 0.7:  # the target takes a, then b half the time
            path = (0, 1, 2) if rng.random() < 0.5 else (0, 1)
        else:  # or c half the time when it refuses a
            path = (0, 3) if rng.random() < 0.5 else (0,)
        calibrator.update(tree, Acceptance(path, 9))
    a, b, c = calibrator.estimate(tree)[1:]
    assert a == pytest.approx(0.7, abs=0.05) and b == pytest.approx(0.35, abs=0.05)
    assert c == pytest.approx(0.15, abs=0.04)


def test_forced_nodes_are_calibrated_apart_from_the_drafters():
    """Nodes a grammar forced learn their own rate and no tilt: a request whose drafts all miss
    still verifies the forced run, and forced hits do not make its drafts look better."""
    tree = TokenTree((0, 1, 2, 3), (-1, 0, 1, 0))  # root -> f -> g forced; d the drafter's
    forced = frozenset({1, 2})
    planner = Planner(CostProfile((1, 4), (1.0, 1.3), 256))
    planner.begin_request()
    for _ in range(200):  # the forced run always taken, the drafter's node never
        planner.observe(tree, Acceptance((0, 1, 2), 9), 0.0, None, forced)
    f, g, d = planner.estimates(tree, forced)[1:]
    assert f > 0.95 and g > 0.9 and d < 0.1
    assert planner.tilts[0].factor < 1  # the drafter's miss, not the forced hits, moved the tilt
    alone = AcceptanceCalibrator()
    alone.update(tree, Acceptance((0, 1, 2), 9))  # without forced: the same nodes as drafts
    assert alone.estimate(tree)[1] > planner.calibrator.estimate(tree)[1]  # (drafter bins moved)
    cut = planner.cut(tree, 2, forced)
    assert cut.tokens == (0, 1, 2)  # the forced run first, the missing draft left out
    assert planner.choose(tree, forced) == 2


def test_no_drafting_when_nothing_is_accepted_and_full_trees_when_everything_is():
    chain = TokenTree.chain(0, list(range(1, 16)))
    cold = Planner(STEEP)
    for _ in range(300):
        cold.calibrator.update(chain, Acceptance((0,), 1))
    assert cold.choose(chain) == 0
    flat = Planner(CostProfile((1, 16), (1.0, 1.05), 256))
    for _ in range(300):
        flat.calibrator.update(chain, Acceptance(tuple(range(16)), 1))
    assert flat.choose(chain) == 15


def test_planner_cut_keeps_the_n_best_estimates_ancestor_closed():
    rng = random.Random(11)
    planner = trained_planner(STEEP)
    for _ in range(30):
        tree = random_tree(rng, 14)
        est = planner.calibrator.estimate(tree)
        for n in (0, 1, 5, 13):
            cut = planner.cut(tree, n)
            assert len(cut) == n + 1
            kept = tree.locate(cut)
            assert kept is not None and kept[0] == 0
            assert sorted(est[v] for v in kept[1:]) == sorted(est[1:], reverse=True)[:n][::-1]


@pytest.mark.parametrize("name", ["pld", "stand", "lookahead", "recycling", "sequoia"])
def test_budget_auto_is_lossless_end_to_end(name):
    model = tiny_model("llama", seed=2)
    backend = HFBackend(model)
    profile = CostProfile(
        (1, 2, 4, 8), (0.010, 0.0101, 0.0102, 0.0104), 16
    )  # trees nearly free: drafting pays
    drafter = (
        make_drafter(name, model) if name == "sequoia" else make_drafter(name)
    )  # the target as its draft
    engine = Engine(
        backend, drafter, planner=Planner(profile, replayable=True)
    )  # measured times ignored:
    # the choices, and so the drafted count, do not depend on how busy the machine is
    rng = random.Random(3)
    drafted = 0
    for _ in range(3):
        base = [rng.randrange(3, 90) for _ in range(6)]
        prompt = base * 3
        stats = GenerationStats()
        tokens = [
            t
            for step in engine.run(prompt, DecodeRequest(max_new_tokens=30, budget="auto"), stats)
            for t in step
        ]
        assert tokens == hf_greedy(model, prompt, 30)
        drafted += stats.drafted_tokens
    assert drafted > 0  # the planner did let the drafter draft


def test_budget_auto_needs_a_planner_and_rejects_other_words():
    engine = Engine(HFBackend(tiny_model("llama")), make_drafter("pld"))
    with pytest.raises(TokentreeError, match="planner"):
        list(
            engine.run([5, 6, 7], DecodeRequest(max_new_tokens=3, budget="auto"), GenerationStats())
        )
    with pytest.raises(TokentreeError, match="auto"):
        DecodeRequest(budget="big")


def test_profiles_are_cached_and_bad_files_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))
    profile = CostProfile((1, 2), (0.2, 0.25), 64, key="abc", measured_at=1e12)
    save_profile(profile)
    assert load_profile("abc") == profile
    stale = CostProfile((1, 2), (0.2, 0.25), 64, key="old", measured_at=1.0)
    save_profile(stale)
    assert load_profile("old") is None
    profile_path("bad").write_text("{not json")
    assert load_profile("bad") is None
    profile_path("v0").write_text(
        json.dumps({"version": 0, "sizes": [1], "seconds": [1], "context_len": 1})
    )
    assert load_profile("v0") is None


class CountingBackend(HFBackend):
    """Records (tree size, cached tokens) of every verify."""

    def __init__(self, model):
        super().__init__(model)
        self.verified: list[tuple[int, int]] = []

    def verify(self, tree):
        self.verified.append((len(tree), len(self.tokens)))
        return super().verify(tree)


def test_measured_profile_on_a_tiny_model():
    backend = CountingBackend(tiny_model("llama"))
    ticks = []
    profile = measure_profile(
        backend,
        sizes=(1, 4, 16),
        context_len=32,
        repeats=2,
        key="k",
        progress=lambda n, context, s: ticks.append((n, context)),
        longer=(48,),
    )
    assert profile.sizes == (1, 4, 16) and profile.context_len == 32 and profile.key == "k"
    assert all(s > 0 for s in profile.seconds) and list(profile.seconds) == sorted(profile.seconds)
    assert profile.ratio(1) == 1.0 and profile.seconds_at(4, 32) == pytest.approx(
        profile.seconds[1]
    )
    assert ticks[:3] == [(1, 32), (4, 32), (16, 32)]  # one tick per size, then the longer curve
    assert ticks[3:] == [(n, 48) for n in LONG_PROFILE_SIZES]
    assert profile.longer[0].context_len == 48 and profile.longer[0].sizes == LONG_PROFILE_SIZES
    # each size timed after the whole prefix, one warm-up and the repeats
    first = backend.verified[:9]
    assert first == [(1, 32)] * 3 + [(4, 32)] * 3 + [(16, 32)] * 3
    assert backend.tokens == []  # the backend is left empty
    assert CostProfile.from_dict(profile.to_dict()) == profile


def test_probe_schedule_backs_off_while_probes_fail_and_resets_on_success():
    from tokentree.planner import ProbeSchedule

    probe = ProbeSchedule(shortest=2, longest=8, interval=2)
    due = []
    for _ in range(16):
        due.append(probe.due())
        probe.observe(4 if probe.probing else 0, False)  # every probe: 4 drafted, none paid
    assert [i for i, d in enumerate(due) if d] == [1, 5, 13]  # after 2, then 4, then 8 steps
    probe.interval, probe.waited = 8, 7
    assert probe.due()
    probe.observe(4, True)
    assert probe.interval == 1 and probe.due()  # a probe that paid: probe again at once
    probe.observe(4, False)
    assert probe.interval == 2  # and back off from the shortest interval when it fails


def test_planner_probes_when_plain_decoding_looks_best():
    from tokentree.planner import PROBE_NODES, CostProfile, Planner

    chain = TokenTree.chain(0, list(range(1, 9)))
    flat = CostProfile(
        (1, 2, 4, 8), (1.0, 1.01, 1.03, 1.1), 256
    )  # a GPU-like curve: a probe costs little
    steep = CostProfile(
        (1, 2, 4, 8), (1.0, 1.9, 3.2, 7.4), 256
    )  # llama.cpp-like: every token costs
    for profile, size in ((flat, PROBE_NODES), (steep, 1)):
        planner = Planner(profile)
        planner.calibrator.prior_rate = (
            0.0 if profile is flat else 0.6
        )  # nothing pays on the flat curve
        choices = [planner.choose(chain) for _ in range(16)]
        assert choices[:15] == [0] * 15 and choices[15] == size


def test_a_replayable_planner_ignores_measured_times():
    """Seeded sampled requests get one: its choices depend on acceptances only, so the seed
    replays."""
    chain = TokenTree.chain(0, list(range(1, 9)))
    choices = []
    for verify_s in (0.001, 5.0):
        planner = Planner(STEEP, replayable=True)
        for _ in range(30):
            planner.observe(chain, Acceptance((0, 1, 2), 7), draft_s=verify_s, verify_s=verify_s)
        choices.append((planner.choose(chain), planner.rate, planner.cost.seconds(4)))
    assert choices[0] == choices[1]


LONG = CostProfile(
    (1, 2, 4, 8, 16),
    (1.0, 1.1, 1.4, 2.2, 4.0),
    256,
    longer=(
        CostProfile((1, 4, 16), (2.0, 3.0, 8.0), 4096),
        CostProfile((1, 4, 16), (3.0, 6.0, 15.0), 8192),
    ),
)


def test_profile_follows_the_context_between_and_beyond_its_curves():
    assert LONG.seconds_at(4, 0) == LONG.seconds_at(4, 256) == pytest.approx(1.4)
    assert LONG.seconds_at(4, 4096) == pytest.approx(3.0)
    assert LONG.seconds_at(16, 6144) == pytest.approx(11.5)  # halfway between 8 and 15
    assert LONG.seconds_at(1, 12288) == pytest.approx(4.0)  # on along the last two's slope
    assert LONG.seconds_at(1, 2176) == pytest.approx(1.5)  # between 256's 1.0 and 4096's 2.0
    falling = CostProfile((1,), (2.0,), 256, longer=(CostProfile((1,), (1.5,), 1024),))
    assert falling.seconds_at(1, 4096) == pytest.approx(1.5)  # noise never extrapolates down
    assert STEEP.seconds_at(8, 10**6) == pytest.approx(2.2)  # one curve: the context is ignored
    with pytest.raises(ValueError, match="longer"):
        CostProfile((1,), (1.0,), 4096, longer=(CostProfile((1,), (1.0,), 256),))


def test_profiles_with_longer_curves_survive_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))
    profile = CostProfile(
        LONG.sizes, LONG.seconds, 256, key="long", measured_at=1e12, longer=LONG.longer
    )
    save_profile(profile)
    assert load_profile("long") == profile


def test_verify_cost_prices_trees_at_the_planned_context_and_learns_the_load():
    cost = VerifyCost(LONG)
    assert cost.seconds(16, 8192) == pytest.approx(15.0) and cost.seconds(16, 256) == 4.0
    for _ in range(300):  # a machine twice as slow as profiled, seen at long contexts only
        cost.observe(4, 2 * 6.0, 8192)
    assert cost.seconds(4, 256) == pytest.approx(2 * 1.4, rel=0.05)  # the load applies everywhere


def test_the_planner_drafts_less_where_the_context_makes_trees_dear():
    planner = trained_planner(LONG, 0)
    tree = TokenTree.chain(0, list(range(1, 17)))
    chosen = {}
    for context in (256, 8192):
        planner.at(context)
        chosen[context] = planner.choose(tree)
    assert chosen[8192] < chosen[256], chosen


def test_measured_profile_with_longer_contexts_on_a_tiny_model():
    seen = []
    profile = measure_profile(
        HFBackend(tiny_model("llama")),
        sizes=(1, 4),
        context_len=16,
        repeats=1,
        longer=(64, 128),
        progress=lambda n, context, s: seen.append((n, context)),
    )
    assert [p.context_len for p in profile.longer] == [64, 128]
    assert all(p.sizes == LONG_PROFILE_SIZES for p in profile.longer)
    assert seen[:3] == [(1, 16), (4, 16), (1, 64)] and len(seen) == 2 + 2 * len(LONG_PROFILE_SIZES)


def test_profile_timings_disturbed_by_load_are_found_and_pooled():
    from tokentree.planner import disturbed, isotonic

    noisy = [1.0, 1.6, 2.2, 19.0, 5.0, 38.0, 10.6, 12.0, 12.2]  # sizes timed under load
    assert disturbed(noisy) == [3, 5]
    smooth = isotonic(noisy)
    assert all(a <= b for a, b in zip(smooth, smooth[1:]))
    assert sum(smooth) == pytest.approx(sum(noisy)) and smooth[:3] == noisy[:3]
    assert disturbed([1.0, 1.1, 1.05, 2.0]) == []  # within noise
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]


def test_a_cached_profile_measured_under_load_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))
    sizes = (1, 2, 4, 8)
    save_profile(CostProfile(sizes, (1.0, 5.0, 1.4, 2.2), 256, "disordered", time.time()))
    save_profile(CostProfile(sizes, (1.0, 1.1, 1.4, 2.2), 256, "ordered", time.time()))
    assert load_profile("disordered") is None and load_profile("ordered") is not None
