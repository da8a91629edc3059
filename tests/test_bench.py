"""The benchmark harness on a tiny model: end to end, arithmetic, resume, bad input."""

import dataclasses
import json
import re

import pytest

from tokentree.bench.methods import needs_draft, parse_method
from tokentree.bench.report import first_divergence, lossless_table, pass_table, speedup_table
from tokentree.bench.runner import BenchConfig, run_bench
from tokentree.bench.suites import load_suite, round_robin, select
from tokentree.cli import main
from tokentree.errors import TokentreeError

METHODS = ["hf", "hf-pld", "hf-assisted", "tt:none", "tt:pld"]
OUTPUTS = [
    "records.jsonl",
    "summary.json",
    "results.md",
    "speedup.png",
    "tau_hist.png",
    "tokens_per_s.png",
]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"question_id": 1, "category": "code", "turns": ["abc abc abc", "and again abc"]},
        {"question_id": 2, "category": "chat", "turns": ["hello hello"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_for(model_dir, prompt_file, out, **kw):
    return BenchConfig(
        prompts=str(prompt_file),
        max_new_tokens=12,
        methods=METHODS,
        target=str(model_dir),
        draft=str(model_dir),
        dtype="float32",
        out=str(out),
        **kw,
    )


def test_two_prompt_suite_end_to_end(saved_tiny_model, prompt_file, tmp_path):
    summary = run_bench(config_for(saved_tiny_model, prompt_file, tmp_path / "out"))
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    records = [
        json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2 * len(METHODS)
    assert all(len(r["turns"]) == (2 if r["prompt_id"] == "1" else 1) for r in records)
    assert all(
        summary["lossless"][m]["share"] == 1.0 for m in METHODS
    )  # greedy: every method equals hf
    assert summary["speedup"]["hf"]["overall"] == pytest.approx(1.0)
    assert summary["methods"]["tt:none"]["tau"] == pytest.approx(1.0)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| tt:pld |" in table and "transformers" in table
    for r in records:  # every method timed its first token, prefill included, before the end
        assert all(0 < t["first_token_s"] < t["wall_s"] for t in r["turns"]), r["method"]
        assert r["decode_tokens_per_s"] > r["tokens_per_s"]  # the rate after the first token
    assert summary["decode_speedup"]["hf"]["overall"] == pytest.approx(1.0)
    assert set(summary["decode_speedup"]) == set(METHODS) and "After the first token" in table


def test_a_static_cache_run_is_lossless_and_recorded(saved_tiny_model, prompt_file, tmp_path):
    methods = ["hf", "tt:pld", "tt:chain"]
    config = config_for(saved_tiny_model, prompt_file, tmp_path / "out", static_cache=256)
    summary = run_bench(dataclasses.replace(config, methods=methods))
    assert all(summary["lossless"][m]["share"] == 1.0 for m in methods)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["static_cache"] == 256


def test_resume_skips_finished_runs(saved_tiny_model, prompt_file, tmp_path):
    out = tmp_path / "out"
    config = config_for(saved_tiny_model, prompt_file, out)
    run_bench(config)
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text(
        "\n".join(lines[:3]) + "\n" + lines[3][:20]
    )  # interrupted mid-write
    run_bench(config)
    resumed = (out / "records.jsonl").read_text().splitlines()
    assert resumed[:3] == lines[:3]
    keys = [
        (r["prompt_id"], r["method"])
        for r in map(json.loads, [ln for ln in resumed if ln.endswith("}")])
    ]
    assert len(keys) == len(set(keys)) == 2 * len(METHODS)
    with pytest.raises(TokentreeError, match="other settings"):
        run_bench(config_for(saved_tiny_model, prompt_file, out, seed=7))
    (out / "summary.json").unlink()
    (out / "records.jsonl").write_text("\n".join(resumed[:7]) + "\n")  # as if stopped early
    summary = run_bench(config_for(saved_tiny_model, prompt_file, out, report_only=True))
    assert (
        out / "summary.json"
    ).exists() and "partial run: 1 of 2 prompt runs have every method" in summary["notes"]


def test_speedup_and_lossless_arithmetic():
    def rec(method, pid, cat, rate, ids=(1, 2, 3)):
        return {
            "method": method,
            "prompt_id": pid,
            "category": cat,
            "repeat": 0,
            "tokens_per_s": rate,
            "new_tokens": 3,
            "turns": [{"token_ids": list(ids)}],
        }

    records = [
        rec("hf", "a", "x", 10),
        rec("hf", "b", "y", 20),
        rec("tt:pld", "a", "x", 30),
        rec("tt:pld", "b", "y", 20, ids=(1, 9, 3)),
    ]
    speed = speedup_table(records)
    assert speed["tt:pld"] == {"x": 3.0, "y": 1.0, "overall": 2.0}  # mean of per-prompt ratios
    loss = lossless_table(records)["tt:pld"]
    assert loss["share"] == 0.5 and loss["divergences"] == [
        {"prompt_id": "b", "turn": 0, "position": 1}
    ]
    assert first_divergence([1, 2], [1, 2, 3]) == 2 and first_divergence([1], [1]) is None


def test_pass_table_compares_each_pass_with_the_baselines_same_pass():
    def rec(method, repeat, rate, steps=None):
        return {
            "method": method,
            "prompt_id": "a",
            "category": "x",
            "repeat": repeat,
            "tokens_per_s": rate,
            "new_tokens": 8,
            "turns": [{"token_ids": [1], "new_tokens": 8, "steps": steps}],
        }

    records = [
        rec("hf", 0, 10),
        rec("hf", 1, 5),
        rec("tt:stand", 0, 20, steps=4),
        rec("tt:stand", 1, 20, steps=2),
    ]
    passes = pass_table(records)
    assert passes["tt:stand"] == {0: {"speedup": 2.0, "tau": 2.0}, 1: {"speedup": 4.0, "tau": 4.0}}
    assert passes["hf"][1] == {"speedup": 1.0, "tau": None}


def test_shipped_suites_and_selection():
    spec = load_suite("spec-bench")
    assert len(spec) == 480 and len({p.category for p in spec}) == 13
    assert len(select(spec, None, 5)) == 65
    assert len(load_suite("humaneval")) == 164 and len(load_suite("mt-bench")) == 80
    assert load_suite("humaneval")[0].turns[0].startswith("Complete the following Python function:")
    agent = load_suite("agent")
    assert len(agent) == 164 and agent[0].category == "agent" and len(agent[0].turns) == 4
    assert (
        agent[0].turns[0] == load_suite("humaneval")[0].turns[0]
        and "write_file" in agent[0].turns[-1]
    )
    with pytest.raises(TokentreeError, match="unknown categories"):
        select(spec, ["poetry"], None)
    mixed = round_robin(select(spec, None, 2))
    assert len(mixed) == 26 and len({p.category for p in mixed[:13]}) == 13


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json\n", "not valid JSON"),
        ('{"question_id": 1}\n', "turns"),
        ('{"question_id": 1, "turns": []}\n', "turns"),
        ("[1, 2]\n", "JSON object"),
        ("\n", "no prompts"),
    ],
)
def test_bad_prompt_file_gives_clear_error(tmp_path, capsys, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["bench", "--prompts", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tokentree: error:" in err and match in err and "Traceback" not in err


def test_missing_prompt_file(tmp_path, capsys):
    assert main(["bench", "--prompts", str(tmp_path / "nope.jsonl")]) == 2
    assert "prompt file not found" in capsys.readouterr().err


def test_unknown_method_fails_before_loading_anything(capsys):
    assert main(["bench", "--methods", "hf,tt:magic", "--target", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'tt:magic'" in err


def test_a_hybrid_of_named_sources_is_a_method():
    assert parse_method("tt:stand+pld+suffix") == ("stand+pld+suffix", None)
    assert parse_method("tt:stand+chain@auto") == ("stand+chain", "auto") and needs_draft(
        "tt:stand+chain"
    )
    for bad, match in (
        ("tt:stand+stand", "distinct"),
        ("tt:auto+pld", "not hybrid"),
        ("tt:stand+magic", "unknown"),
    ):
        with pytest.raises(TokentreeError, match=match):
            parse_method(bad)


@pytest.mark.parametrize("method", ["tt:pld@0", "tt:pld@x", "tt:pld@-3", "tt:magic@4", "hf@4"])
def test_bad_budget_suffix_is_a_clear_error(capsys, method):
    assert main(["bench", "--methods", method, "--target", "/no/such/model"]) == 2
    assert "tokentree: error:" in capsys.readouterr().err


def test_budget_suffix_caps_the_tree(saved_tiny_model, prompt_file, tmp_path):
    methods = ["hf", "tt:pld@2", "tt:pld"]
    summary = run_bench(
        BenchConfig(
            prompts=str(prompt_file),
            max_new_tokens=24,
            methods=methods,
            target=str(saved_tiny_model),
            dtype="float32",
            out=str(tmp_path / "o"),
        )
    )
    records = [
        json.loads(line) for line in (tmp_path / "o" / "records.jsonl").read_text().splitlines()
    ]
    longest = {
        m: max(
            int(k)
            for r in records
            if r["method"] == m
            for t in r["turns"]
            for k in t["accepted_hist"]
        )
        for m in methods[1:]
    }
    assert (
        longest["tt:pld@2"] <= 3 < longest["tt:pld"]
    )  # two drafted tokens + the bonus token per step
    assert summary["lossless"]["tt:pld@2"]["share"] == 1.0


def test_sampled_run_compares_speed_and_skips_the_identity_check(
    saved_tiny_model, prompt_file, tmp_path
):
    summary = run_bench(
        config_for(saved_tiny_model, prompt_file, tmp_path / "out", temperature=0.8, top_p=0.9)
    )
    assert summary["speedup"]["tt:pld"]["overall"] > 0
    assert "n/a (sampled)" in (tmp_path / "out" / "results.md").read_text()


def test_the_long_suite_hides_each_task_among_other_documents_within_its_size():
    from tokentree.bench.long import BENCH_POOL, CHARS_PER_TOKEN, LONG_SIZES, PROMPTS_PER_SIZE

    prompts = load_suite("long")
    spec = load_suite("spec-bench")
    rag = [p for p in spec if p.category == "rag"]
    news = [p for p in spec if p.category == "summarization"]
    categories = {p.category for p in prompts}
    assert categories == {f"{kind}-{size}k" for kind in ("rag", "summary") for size in LONG_SIZES}
    assert len(prompts) == 2 * len(LONG_SIZES) * PROMPTS_PER_SIZE
    pool = {p.turns[0].rpartition("\n")[0].strip() for p in rag[:BENCH_POOL]}
    pool |= {p.turns[0].removeprefix("Summarize:").strip() for p in news[:BENCH_POOL]}
    for prompt in prompts:
        (text,) = prompt.turns
        size = int(prompt.category.split("-")[1].removesuffix("k"))
        bodies = re.findall(
            r"Document \d+:\n(.*?)\n\n(?=Document \d+:\n|Answer the question|Summarize document)",
            text,
            re.DOTALL,
        )
        assert 2 <= len(bodies) and len(text) <= size * 1000 * CHARS_PER_TOKEN + 2000
        assert text.startswith("Document 1:\n") and text.count("\nDocument ") == len(bodies) - 1
        assert set(bodies) <= pool  # only the reserved records, which head training never reads
        source = next(p for p in rag + news if p.id == prompt.id.rsplit("/", 1)[1])
        if prompt.category.startswith("rag"):
            passages, _, question = source.turns[0].rpartition("\n")
            assert passages.strip() in bodies and text.endswith(question.strip())
        else:
            slot = int(text.rsplit("Summarize document ", 1)[1].split()[0])
            assert bodies[slot - 1] == source.turns[0].removeprefix("Summarize:").strip()
    sixteen = [p for p in prompts if p.category == "rag-16k"]
    assert min(len(p.turns[0]) for p in sixteen) > 12_000 * CHARS_PER_TOKEN  # long indeed
    assert load_suite("long") == prompts  # deterministic


def test_the_json_suite_carries_each_prompts_output_rule():
    from tokentree.bench.structured import structured_for

    prompts = load_suite("json")
    by_category = {c: [p for p in prompts if p.category == c] for c in ("extraction", "arguments")}
    assert len(prompts) == 40 and len(by_category["extraction"]) == 12
    assert len(by_category["arguments"]) == 8
    tools = [p for p in prompts if p.category == "tool-call"]
    assert len(tools) == 20 and all(len(p.tools) == 3 and p.schema is None for p in tools)
    assert all(p.schema and not p.tools for cat in by_category.values() for p in cat)
    from conftest import tiny_tokenizer

    rule = structured_for(prompts[0], tiny_tokenizer())
    assert rule.constraint.kind == "json_schema" and not rule.tools
    free = structured_for(load_suite("humaneval")[0], tiny_tokenizer())
    assert free is None


def test_a_structured_reply_is_checked_against_its_schema():
    from conftest import tiny_tokenizer

    from tokentree.bench.prompt import BenchPrompt
    from tokentree.bench.structured import structured_for

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rule = structured_for(BenchPrompt("a", "x", ("t",), schema=schema), tiny_tokenizer())
    assert rule.valid('{"n": 3}') and not rule.valid('{"n": "3"}') and not rule.valid('{"n": 3')
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    calls = structured_for(BenchPrompt("b", "x", ("t",), tools=(tool,)), tiny_tokenizer())
    assert calls.tools and calls.constraint.kind == "lark"
    assert calls.valid('<tool_call>\n{"name": "f", "arguments": {"n": 1}}\n</tool_call>')
    assert not calls.valid('<tool_call>\n{"name": "g", "arguments": {"n": 1}}\n</tool_call>')
    assert not calls.valid('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    assert not calls.valid('{"n": 1}')  # no call at all


def test_the_json_suite_on_transformers_takes_tokentrees_plain_loop_as_baseline(
    saved_tiny_model,
):
    from tokentree.bench.methods import HFMethod
    from tokentree.bench.structured import Structured
    from tokentree.constraints import Constraint
    from tokentree.sampling import SamplingParams

    config = BenchConfig(suite="json", target=str(saved_tiny_model), backend="hf")
    assert config.baseline == "tt:none" and config.methods == ["tt:none", "tt:pld", "tt:auto"]
    method = HFMethod.__new__(HFMethod)
    method.name = "hf"
    rule = Structured(Constraint.json_object(), {"type": "object"})
    with pytest.raises(TokentreeError, match="no grammar"):
        method.run([1, 2], 4, SamplingParams(), 0, structured=rule)
