"""The one request: validated once (each error names its field), built at every door the same
way, its budget decided once knowing the backend; the CLI's flags come from its fields."""

import dataclasses

import pytest
from conftest import tiny_model, tiny_tokenizer
from test_greedy_equality import hf_greedy

from tokentree.api import Generator
from tokentree.cli import build_parser
from tokentree.cli.flags import request_from_args
from tokentree.cli.generate import REQUEST_FLAGS
from tokentree.drafters import make_drafter
from tokentree.errors import TokentreeError
from tokentree.models import LoadedModel
from tokentree.request import MAX_BUDGET, Request, RequestError, decide_budget


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"budget": "big"}, "budget"),
        ({"budget": MAX_BUDGET + 1}, "budget"),
        ({"budget": -1}, "budget"),
        ({"drafter": "magic"}, "drafter"),
        ({"stop": [""]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_every_bad_field_is_refused_and_named(changes, field):
    with pytest.raises(RequestError) as caught:
        Request.build(**changes)
    assert caught.value.field == field and field in str(caught.value)


def test_a_request_is_frozen_normalised_and_rebuilt_by_replace():
    request = Request(max_new_tokens=8, stop="\n\n", seed=3, temperature=0.7, top_k=5)
    assert request.stop == ("\n\n",) and request.sampling.top_k == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 4
    again = request.replace(seed=4)
    assert again.seed == 4 and request.seed == 3 and again.stop == request.stop
    assert Request.build(request) is request and Request.build(None, budget=0).budget == 0
    assert Request(8, budget="auto") == Request(max_new_tokens=8, budget="auto")


class Spec:
    def __init__(self, runs_draft_model, default_budget):
        self.runs_draft_model, self.default_budget = runs_draft_model, default_budget


@pytest.mark.parametrize(
    "requested,drafter,plans,expected",
    [
        (5, Spec(False, 16), False, 5),  # given: kept
        ("auto", Spec(True, 16), False, "auto"),
        (None, Spec(False, 16), False, "auto"),  # learning drafters: planned
        (None, Spec(True, 16), False, 16),  # draft-model trees on transformers: their default
        (None, Spec(False, 0), False, 0),  # none: plain
        (None, Spec(True, 16), True, "auto"),  # CPU engines plan every tree
        (None, Spec(False, 0), True, "auto"),
    ],
)
def test_the_budget_is_decided_once(requested, drafter, plans, expected):
    assert decide_budget(requested, drafter, plans) == expected


def tiny_generator(draft=False, budget=None):
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), "tiny")
    draft_model = LoadedModel(tiny_model("llama", seed=6), tiny_tokenizer(), "d") if draft else None
    return Generator(target, make_drafter("pld"), draft_model, budget)


def test_the_generator_decides_with_its_backend_and_default(monkeypatch):
    gen = tiny_generator(draft=True)
    drafter, request, planner = gen.prepare(Request(drafter="chain"))
    assert drafter.name == "chain" and request.budget == 16 and planner is None
    monkeypatch.setattr(gen.backend, "plans_every_tree", True)
    _, request, planner = gen.prepare(Request(drafter="chain"))
    assert request.budget == "auto" and planner is not None
    fixed = tiny_generator(budget=6)
    assert fixed.prepare(Request())[1].budget == 6  # the generator's default ...
    assert fixed.prepare(Request(budget=2))[1].budget == 2  # ... a request's own wins
    with pytest.raises(RequestError, match="needs a draft model") as caught:
        tiny_generator().prepare(Request(drafter="chain"))
    assert caught.value.field == "drafter"


def test_a_request_object_and_keyword_changes_give_the_same_text():
    gen = tiny_generator()
    prompt = [5, 6, 7, 5, 6, 7, 5]
    request = Request(max_new_tokens=12, drafter="stand", budget=4)
    by_object = gen.generate(prompt, request).token_ids
    by_keywords = gen.generate(prompt, max_new_tokens=12, drafter="stand", budget=4).token_ids
    assert by_object == by_keywords == hf_greedy(gen.target.model, prompt, 12)
    sampled = Request(max_new_tokens=6, temperature=1.0, seed=11)
    batch = gen.generate_batch([prompt], sampled, n=2)
    assert batch[0].token_ids == gen.generate(prompt, sampled).token_ids  # sample 0: seed
    assert batch[1].token_ids == gen.generate(prompt, sampled.replace(seed=12)).token_ids


def test_the_cli_flags_are_the_requests_fields():
    parser = build_parser()
    args = parser.parse_args(["generate", "hi"])
    fields = {f.name: f for f in dataclasses.fields(Request)}
    for name, field in fields.items():
        if name in ("drafter", "constraint"):  # --drafter (with its options' flags); constraints:
            continue  # --json-schema, --json-object, --regex, --grammar (one of)
        default = [] if name == "stop" else field.default
        assert getattr(args, name) == default, name
    given = ["generate", "hi", "--stop", "a", "--stop", "b", "--budget", "auto", "--seed", "3"]
    given += ["--temperature", "0.5", "--max-new-tokens", "9"]
    request = request_from_args(parser.parse_args(given), REQUEST_FLAGS)
    assert request == Request(9, 0.5, seed=3, budget="auto", stop=("a", "b"))
    assert all(hasattr(args, n) for n in ("json_schema", "json_object", "regex", "grammar"))
    with pytest.raises(RequestError, match="top_p"):
        request_from_args(parser.parse_args(["generate", "hi", "--top-p", "0"]), REQUEST_FLAGS)


def test_a_positional_option_gets_a_clear_error():
    with pytest.raises(TokentreeError, match="by keyword"):
        tiny_generator().generate([5, 6, 7], 64)
