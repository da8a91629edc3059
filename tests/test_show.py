"""Trees you can see: each step's trace (verified tree, who drafted each node, the planner's cut,
what was accepted), drawn in the terminal (``--show-trees``) and as the bench's PNG."""

import json

from conftest import tiny_model, tiny_tokenizer
from test_cli import run_cli
from test_greedy_equality import hf_greedy

from tokentree.api import Generator
from tokentree.bench.tree_plots import best_steps, layout, write_tree_pictures
from tokentree.drafters import make_drafter
from tokentree.models import LoadedModel
from tokentree.request import Request
from tokentree.show import ACCEPTED, REJECTED, render_step
from tokentree.trace import StepTrace
from tokentree.tree import TokenTree

WORDS = {10: "def", 11: " f", 12: "(", 13: " g", 14: "x", 15: ")"}


def decode(ids):
    return "".join(WORDS[i] for i in ids)


def crafted() -> StepTrace:
    #        10 -> 11 -> 12 -> 14      accepted: 0, 1, 2; the target then said 15
    #           \-> 13
    tree = TokenTree((10, 11, 13, 12, 14), (-1, 0, 0, 1, 3))
    return StepTrace(4, tree, ("", "stand", "pld", "stand+pld", "pld"), (0, 1, 3), 15, 9)


def test_a_crafted_step_is_drawn_with_its_path_sources_and_cut():
    lines = render_step(crafted(), decode).splitlines()
    assert lines[0] == (
        "step 4: 4 of 9 candidate nodes verified (planner), 2 accepted + 1 from the target"
    )
    assert lines[1] == '"def"  (root)'
    assert lines[2] == f'├─{ACCEPTED} " f"  [stand]'
    assert lines[3] == f'│  └─{ACCEPTED} "("  [stand+pld]'
    assert lines[4] == f'│     └─{REJECTED} "x"  [pld]'
    assert lines[5] == f'└─{REJECTED} " g"  [pld]'
    assert lines[6] == '=> target: ")" after the accepted path'


def test_a_trace_round_trips_through_json():
    trace = crafted()
    assert StepTrace.from_dict(json.loads(json.dumps(trace.to_dict()))) == trace


def test_traces_account_for_every_emitted_token_and_name_each_nodes_drafter():
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), "tiny")
    gen = Generator(target, make_drafter("hybrid"))  # stand + pld merged
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    traces = []
    out = gen.generate(prompt, Request(max_new_tokens=24, budget=6), on_step=traces.append)
    assert out.token_ids == hf_greedy(target.model, prompt, 24)
    emitted = []
    for index, trace in enumerate(traces):
        assert trace.step == index and trace.candidate is None  # a fixed budget: no cut
        assert len(trace.sources) == len(trace.tree) and trace.sources[0] == ""
        assert all(set(s.split("+")) <= {"stand", "pld"} for s in trace.sources[1:])
        assert trace.accepted[0] == 0 and trace.tree.tokens[0] == (prompt + emitted)[-1]
        emitted += [trace.tree.tokens[n] for n in trace.accepted[1:]] + [trace.bonus]
    assert emitted[: len(out.token_ids)] == out.token_ids
    assert any(len(t.accepted) > 1 for t in traces)  # some drafted tokens were accepted


def test_planned_steps_say_what_the_planner_cut(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_CACHE", str(tmp_path))  # the cost profile is cached here
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), "tiny")
    gen = Generator(target, make_drafter("stand"))
    traces = []
    gen.generate([5, 6, 7, 5, 6, 7, 5, 6], max_new_tokens=16, budget="auto", on_step=traces.append)
    assert traces and all(t.candidate is not None and t.drafted <= t.candidate for t in traces)


def test_show_trees_draws_each_step_and_leaves_the_text_alone(saved_tiny_model, capsys):
    args = ["generate", "abc abc abc", "--target", str(saved_tiny_model), "--dtype", "float32"]
    args += ["--no-chat", "--max-new-tokens", "10", "--drafter", "pld", "--budget", "4"]
    code, plain_out, _ = run_cli(args, capsys)
    code_trees, out, err = run_cli(args + ["--show-trees"], capsys)
    assert code == code_trees == 0 and out == plain_out
    steps = [line for line in err.splitlines() if line.startswith("step ")]
    assert steps and steps[0].startswith("step 0: ")
    assert all("(fixed budget)" in line or "plain step" in line for line in steps)
    assert any("(fixed budget)" in line for line in steps)
    assert err.count("=> target:") == len(steps)


def test_the_bench_draws_the_best_step_of_each_category(tmp_path):
    step = crafted().to_dict() | {"texts": [WORDS[t] for t in crafted().tree.tokens]}
    step |= {"bonus_text": ")"}
    small = step | {"accepted": [0, 1]}
    records = [
        {"method": "tt:auto", "category": "code", "turns": [{"best_step": small}]},
        {"method": "tt:pld", "category": "code", "turns": [{"best_step": step}]},
        {"method": "tt:auto", "category": "chat", "turns": [{"best_step": small}]},
        {"method": "llama-decode", "category": "chat", "turns": [{"best_step": None}]},
    ]
    chosen = best_steps(records)
    assert list(chosen) == ["chat", "code"] and chosen["code"]["method"] == "tt:pld"
    assert layout(step["parents"]) == [(0, 0.5), (1, 0.0), (1, 1.0), (2, 0.0), (3, 0.0)]
    assert write_tree_pictures(records, tmp_path / "trees.png")
    assert (tmp_path / "trees.png").read_bytes()[:4] == b"\x89PNG"
    assert not write_tree_pictures(records[3:], tmp_path / "none.png")
