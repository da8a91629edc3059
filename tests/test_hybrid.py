"""The hybrid drafter: merging, calibrated ranking, skipping the expensive source, routing
feedback."""

import math
import random

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_greedy_equality import hf_greedy

from tokentree.api import Generator
from tokentree.drafters import make_drafter
from tokentree.drafters.hybrid import HybridConfig, HybridDrafter, PayoffGate
from tokentree.errors import TokentreeError
from tokentree.models import LoadedModel
from tokentree.planner import ProbeSchedule, ledger
from tokentree.sampling import Acceptance
from tokentree.tree import TokenTree


class FixedDrafter:
    """Proposes the same paths every step and records what it is told."""

    default_budget = 16
    runs_draft_model = False

    def __init__(self, name, paths):
        self.name, self.paths, self.calls, self.seen = name, paths, 0, []

    def propose(self, context, budget):
        self.calls += 1
        return TokenTree.from_paths(context[-1], self.paths)

    def observe(self, tree, logits, acceptance):
        self.seen.append((tree, logits.shape[0], acceptance))

    def reset(self):
        pass


class ExpensiveDrafter(FixedDrafter):
    runs_draft_model = True  # gated like a draft model


def hybrid(sources, skip_above=2.0):
    by_name = {s.name: s for s in sources}
    config = HybridConfig(sources=",".join(by_name), skip_above=skip_above)
    return HybridDrafter(config, lambda name: by_name[name])


def test_merge_keeps_every_source_path_once():
    a = FixedDrafter("a", [[1, 2, 3], [1, 4]])
    b = FixedDrafter("b", [[1, 2, 5], [6]])
    tree = hybrid([a, b]).propose([9, 0], budget=20)
    paths = {tuple(tree.tokens[v] for v in p[1:]) for p in tree.paths}
    assert paths == {(1, 2, 3), (1, 4), (1, 2, 5), (6,)}
    assert len(tree) == 1 + 6  # 1, 2, 3, 4, 5, 6: the shared prefix 1-2 appears once


def test_budget_keeps_the_best_calibrated_nodes():
    a = FixedDrafter("a", [[1, 2, 3, 4, 5, 6]])
    tree = hybrid([a]).propose([0], budget=3)
    assert tree.tokens == (0, 1, 2, 3)  # shallower nodes are likelier (prior 0.6 ** depth)


def test_expensive_source_is_skipped_when_cheap_ones_suffice():
    cheap = FixedDrafter("cheap", [[1, 2, 3, 4, 5]])
    costly = ExpensiveDrafter("costly", [[7, 8]])
    drafter = hybrid([cheap, costly], skip_above=1.0)  # prior estimates of the chain sum to ~1.4
    drafter.propose([0], budget=16)
    assert costly.calls == 0
    drafter = hybrid([cheap, costly], skip_above=5.0)
    tree = drafter.propose([0], budget=16)
    assert costly.calls == 1 and 7 in tree.tokens


def test_each_source_learns_from_its_verified_part():
    a = FixedDrafter("a", [[1, 2, 3]])
    b = FixedDrafter("b", [[1, 9], [4]])
    drafter = hybrid([a, b])
    tree = drafter.propose([0], budget=10)
    logits = torch.zeros(len(tree), 10)
    accepted = (
        0,
        tree.child_with_token(0, 1),
        tree.child_with_token(tree.child_with_token(0, 1), 2),
    )
    drafter.observe(tree, logits, Acceptance(accepted, 7))
    sub_a, rows_a, acc_a = a.seen[0]
    assert sub_a.tokens == (0, 1, 2, 3) and rows_a == 4
    assert [sub_a.tokens[v] for v in acc_a.nodes] == [0, 1, 2] and acc_a.bonus == 7
    sub_b, rows_b, acc_b = b.seen[0]
    assert [sub_b.tokens[v] for v in acc_b.nodes] == [
        0,
        1,
    ] and acc_b.bonus == 2  # after 1 the target took 2


def test_auto_is_lossless_with_the_planner_and_a_draft_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))  # the cost profile is cached here
    # the per-request guarantee judges wall times, which on a tiny model are mostly Python and
    # noise: off here, so that the planner's drafting (and tau) does not depend on them
    monkeypatch.setattr(ledger, "ALLOWANCE", math.inf)
    target = tiny_model("llama", seed=4)
    draft = tiny_model("llama", seed=4)  # a perfect draft: the draft-model source has plenty to add
    generator = Generator(
        LoadedModel(target, tiny_tokenizer(), "tiny"), make_drafter("auto", draft)
    )
    rng = random.Random(0)
    for _ in range(3):
        prompt = [rng.randrange(3, 90) for _ in range(5)] * 2
        out = generator.generate(prompt, max_new_tokens=24)
        assert out.token_ids == hf_greedy(target, prompt, 24)
    assert out.stats.tokens_per_step > 1.0


def test_payoff_gate_skips_a_source_that_does_not_pay_and_probes_it_less_and_less():
    gate = PayoffGate(probes=ProbeSchedule(shortest=4, longest=16, interval=4))
    assert gate.should_call(0.2)  # nothing measured yet: call it
    gate.record(gain=0.0, cost_s=0.05)  # added nothing, cost 50 ms
    calls = [gate.should_call(0.2) for _ in range(4)]
    assert calls == [False, False, False, True]  # skipped, but probed on the 4th step
    gate.record(gain=0.0, cost_s=0.05)  # the probe did not pay: wait twice as long
    calls = [gate.should_call(0.2) for _ in range(8)]
    assert calls == [False] * 7 + [True]
    gate.record(gain=10.0, cost_s=0.05)  # a probe found 10 extra tokens: 0.2*10 = 2 tokens ~ 400 ms
    assert (
        gate.should_call(0.2) and gate.probes.interval == 1
    )  # it pays again: probed at once when it stops


def test_hybrid_stops_calling_a_draft_source_that_adds_nothing():
    cheap = FixedDrafter("cheap", [[1, 2, 3]])
    costly = ExpensiveDrafter("costly", [[7, 8]])
    drafter = hybrid([cheap, costly], skip_above=100.0)  # the confidence rule never skips
    for _ in range(12):
        tree = drafter.propose([0], budget=16)
        path = tree.follow([0, 1, 2, 3])  # the target always takes the cheap source's path
        drafter.observe(tree, torch.zeros(len(tree), 10), Acceptance(tuple(path), 5))
    assert drafter.gates[1].gain == 0.0
    assert 1 < costly.calls < 12  # called until measured, then only as a probe


def test_the_step_clock_times_neither_idle_time_nor_a_requests_first_step():
    import time

    from tokentree.drafters.hybrid import StepClock

    clock = StepClock()
    assert (
        clock.tick() is None and clock.tick() is None
    )  # before step 1; step 1 carried the prompt's tail
    time.sleep(0.02)
    assert 0.02 <= clock.tick() < 5  # the time since the previous tick
    clock.pause()  # a new request
    time.sleep(0.02)
    assert clock.tick() is None and clock.tick() is None
    time.sleep(0.02)
    assert 0.02 <= clock.tick() < 5


def test_auto_sources_are_chosen_and_validated():
    auto = make_drafter("auto", None, sources="stand,pld,suffix")
    assert [source.name for source in auto.sources] == ["stand", "pld", "suffix"]
    for bad in ("stand,chain", "stand,stand", ""):
        with pytest.raises(TokentreeError, match="sources"):
            make_drafter("auto", None, sources=bad)
