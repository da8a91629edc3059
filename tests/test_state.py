"""Drafter state: learning carries over between requests and processes; bad files are clear
errors."""

import gzip
import json

import pytest
from conftest import tiny_model, tiny_tokenizer

from tokentree.api import Generator
from tokentree.drafters import make_drafter
from tokentree.errors import TokentreeError
from tokentree.models import LoadedModel

PROMPT = "the cat sat on the mat"


def generator(drafter, model=None):
    """A fixed tree size: the planner's own learning is not part of the saved drafter state."""
    return Generator(
        LoadedModel(model or tiny_model("qwen2", seed=4), tiny_tokenizer(), "tiny"),
        make_drafter(drafter),
        budget=16,
    )


@pytest.mark.parametrize("drafter", ["lookahead", "recycling", "stand", "suffix"])
def test_learning_helps_the_next_request_and_survives_save_load(drafter, tmp_path):
    gen = generator(drafter)
    first = gen.generate(PROMPT, max_new_tokens=40, chat=False)
    second = gen.generate(PROMPT, max_new_tokens=40, chat=False)
    assert second.token_ids == first.token_ids
    assert second.stats.steps < first.stats.steps  # hot start: fewer verify passes
    path = tmp_path / "state.gz"
    gen.save_drafter_state(path)
    fresh = generator(drafter, gen.target.model)
    fresh.load_drafter_state(path)
    again = fresh.generate(PROMPT, max_new_tokens=40, chat=False)
    assert again.token_ids == first.token_ids and again.stats.steps == second.stats.steps


def saved_state(tmp_path, drafter="lookahead"):
    gen = generator(drafter)
    gen.generate(PROMPT, max_new_tokens=10, chat=False)
    path = tmp_path / "state.gz"
    gen.save_drafter_state(path)
    return gen, path


def rewrite(path, change):
    document = json.loads(gzip.decompress(path.read_bytes()))
    change(document)
    path.write_bytes(gzip.compress(json.dumps(document).encode()))


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
            "corrupt or truncated",
        ),
        (lambda p: p.write_bytes(b"not gzip at all"), "corrupt or truncated"),
        (lambda p: rewrite(p, lambda d: d.update(vocab="0" * 16)), "another vocabulary"),
        (lambda p: rewrite(p, lambda d: d.update(version=99)), "version"),
        (lambda p: rewrite(p, lambda d: d.update(drafter="recycling")), "not 'lookahead'"),
        (lambda p: rewrite(p, lambda d: d["state"].update(trie=[[10_000, 1, []]])), "malformed"),
        (lambda p: rewrite(p, lambda d: d["state"].update(window=5)), "malformed"),
    ],
)
def test_bad_state_files_are_clear_errors(tmp_path, damage, match):
    gen, path = saved_state(tmp_path)
    damage(path)
    with pytest.raises(TokentreeError, match=match):
        gen.load_drafter_state(path)


def test_recycling_matrix_is_validated(tmp_path):
    gen, path = saved_state(tmp_path, "recycling")
    rewrite(path, lambda d: d["state"]["matrix"].update(rows=7))
    with pytest.raises(TokentreeError, match="malformed"):
        gen.load_drafter_state(path)


def test_stateless_drafter_and_missing_file(tmp_path):
    with pytest.raises(TokentreeError, match="keeps no state"):
        generator("pld").save_drafter_state(tmp_path / "x")
    with pytest.raises(TokentreeError, match="not found"):
        generator("lookahead").load_drafter_state(tmp_path / "missing.gz")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    gen, path = saved_state(tmp_path)
    gen.save_drafter_state(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.gz"]


def test_cli_drafter_state_round_trip(saved_tiny_model, tmp_path, capsys):
    from tokentree.cli import main

    state = tmp_path / "la.gz"
    base = [
        "generate",
        "abc abc",
        "--target",
        str(saved_tiny_model),
        "--dtype",
        "float32",
        "--no-chat",
        "--max-new-tokens",
        "12",
        "--json",
        "--drafter-state",
        str(state),
    ]
    args = base + ["--drafter", "lookahead"]
    assert main(args) == 0 and state.exists()
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (
        second["token_ids"] == first["token_ids"]
        and second["stats"]["steps"] <= first["stats"]["steps"]
    )
    assert main(base + ["--drafter", "pld"]) == 2
    assert "keeps no state" in capsys.readouterr().err
