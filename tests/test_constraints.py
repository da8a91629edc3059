"""Constrained decoding: constraints checked when made; trees shaped by the grammar (forbidden
drafted nodes cut, forced tokens added); every row masked by its own path's state; greedy output
equal to masked plain decoding for every drafter; JSON outputs valid under their schemas."""

import json
import re
import string

import jsonschema
import pytest
import torch
from conftest import CHAT_TEMPLATE, VOCAB, tiny_model, tiny_tokenizer
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tokentree.api import Generator
from tokentree.constraints import Constraint, ConstraintError, allowed_tokens, masked
from tokentree.drafters import DRAFTERS, make_drafter
from tokentree.models import LoadedModel
from tokentree.request import Request, RequestError
from tokentree.sampling import Draft
from tokentree.tree import TokenTree

SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 4}, "n": {"type": "integer"}},
        "required": ["name", "n"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    {"type": "string", "pattern": "^[0-9]{2}-[a-z]{2}$"},
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "integer", "maximum": 9}}},
        "required": ["tags"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: Constraint.json_schema("{not json"), "not valid JSON"),
        (lambda: Constraint.json_schema({"type": "objectx"}), "invalid json schema"),
        (lambda: Constraint.regex("[a-"), "invalid regex"),
        (lambda: Constraint.lark('start: "a" | b'), "invalid lark"),
        (lambda: Constraint.gbnf('root ::= "a" missing'), "invalid gbnf"),
        (lambda: Constraint("xml", "<a/>"), "unknown constraint kind"),
        (lambda: Constraint.regex(""), "empty"),
    ],
)
def test_bad_constraints_are_refused_when_made(make, needle):
    with pytest.raises(ConstraintError, match=needle):
        make()


def test_a_request_carries_a_constraint_and_nothing_else_there():
    request = Request(constraint=Constraint.regex("[0-9]+"))
    assert request.constraint.kind == "regex" and Request(constraint=None).constraint is None
    with pytest.raises(RequestError, match="tokentree.Constraint") as caught:
        Request(constraint="[0-9]+")
    assert caught.value.field == "constraint"


def json_tokenizer():
    """The tiny character tokenizer with every punctuation mark (JSON needs "}"): 96 ids."""
    chars = string.ascii_lowercase + string.ascii_uppercase[:23] + string.digits + " \n"
    chars += string.punctuation
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def generator(drafter="pld", draft=None, tokenizer=None):
    tokenizer = tokenizer or json_tokenizer()
    target = LoadedModel(tiny_model("llama", seed=5), tokenizer, "tiny")
    draft_model = None if draft is None else LoadedModel(draft, tokenizer, "draft")
    return Generator(target, make_drafter(drafter, draft), draft_model)


@torch.inference_mode()
def masked_greedy(gen: Generator, prompt: list[int], constraint: Constraint, n: int) -> list[int]:
    """Plain decoding, one forward per token, each row masked by llguidance directly."""
    import llguidance
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    matcher = llguidance.LLMatcher(gen.grammar.tokenizer, constraint.grammar())
    ids, out = list(prompt), []
    model = gen.target.model
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1:].float()
        bits = allocate_token_bitmask(1, logits.shape[1])
        fill_next_token_bitmask(matcher, bits, 0)
        token = int(masked(logits, bits).argmax())
        out.append(token)
        ids.append(token)
        assert matcher.consume_token(token)
        if token in gen.target.eos_ids or matcher.is_stopped():
            break
    return out


def every_drafter():
    return [name for name, spec in DRAFTERS.items() if not spec.reads_target]


@pytest.mark.parametrize("name", every_drafter())
def test_greedy_equals_masked_plain_decoding_for_every_drafter(name):
    draft = tiny_model("llama", seed=5) if DRAFTERS[name].needs_draft else None  # accepts a lot
    gen = generator(name, draft)
    prompt = json_tokenizer()('{"name": "ab", "n": 12} {"name": "ab", "n": 1').input_ids
    for schema in SCHEMAS[:2]:
        constraint = Constraint.json_schema(schema)
        expected = masked_greedy(gen, prompt, constraint, 40)
        for budget in (3, 12, "auto"):  # auto: the planner sizes each (forced, pruned) tree
            out = gen.generate(
                prompt, Request(max_new_tokens=40, budget=budget, constraint=constraint)
            )
            assert out.token_ids == expected, (name, budget)


def test_a_planned_request_drafts_the_forced_tokens_even_on_plain_steps():
    """With the planner and no drafter at all, every step still drafts what the grammar forces
    (keys, quotes, braces) and the planner verifies it: fewer steps than tokens, output equal."""
    gen = generator("none")
    prompt = json_tokenizer()("x").input_ids
    text = {"type": "string", "minLength": 8, "maxLength": 8}  # long stretches of plain steps
    keys = ("first", "second", "third")
    schema = {"type": "object", "properties": dict.fromkeys(keys, text), "required": list(keys)}
    constraint = Constraint.json_schema(schema)
    expected = masked_greedy(gen, prompt, constraint, 60)
    out = gen.generate(prompt, Request(max_new_tokens=60, budget="auto", constraint=constraint))
    assert out.token_ids == expected
    forced = len(expected) - 3 * 8  # all but the strings' characters
    assert out.stats.grammar["forced"] >= forced - 3 and out.stats.steps <= 3 * 8 + 4


def test_forced_tokens_are_drafted_and_forbidden_nodes_cut():
    gen = generator("none")
    state = gen.grammar.start(Constraint.json_schema(SCHEMAS[0]))
    tok = json_tokenizer()
    root = tok("x").input_ids[0]
    # '{' is forced first: the empty draft gets it (and what follows it: '"')
    shaped = state.shape(Draft(TokenTree.root(root)))
    assert len(shaped.tree) > 1 and shaped.tree.tokens[1] == tok("{").input_ids[0]
    assert state.counts.forced == len(shaped.tree) - 1
    # a drafted child the grammar forbids ('x' before '{') is cut, the legal one kept
    x, brace = tok("x").input_ids[0], tok("{").input_ids[0]
    tree = TokenTree((root, x, brace), (-1, 0, 0))
    kept = state.shape(Draft(tree)).tree
    assert x not in kept.tokens[1:] and kept.tokens[1] == brace and state.counts.pruned == 1


def test_every_row_is_masked_by_its_own_paths_state():
    gen = generator("none")
    state = gen.grammar.start(Constraint.regex("(ab|ba)c"))
    tok = json_tokenizer()
    a, b, c = (tok(ch).input_ids[0] for ch in "abc")
    tree = TokenTree((5, a, b, b, a), (-1, 0, 0, 1, 2))  # root -> a -> b, root -> b -> a
    rows = allowed_tokens(state.masks(tree), gen.backend.vocab_size)
    assert set(rows[0].nonzero().flatten().tolist()) == {a, b}
    assert rows[1].nonzero().flatten().tolist() == [b]  # after "a": only "b"
    assert rows[2].nonzero().flatten().tolist() == [a]  # after "b": only "a"
    assert rows[3].nonzero().flatten().tolist() == [c] == rows[4].nonzero().flatten().tolist()


def test_a_forbidden_nodes_row_and_below_stay_unconstrained():
    gen = generator("none")
    state = gen.grammar.start(Constraint.regex("ab"))
    tok = json_tokenizer()
    a, b, z = (tok(ch).input_ids[0] for ch in "abz")
    tree = TokenTree((5, z, a, b), (-1, 0, 0, 1))  # z is forbidden, so is everything below it
    rows = allowed_tokens(state.masks(tree), gen.backend.vocab_size)
    assert rows[1].all() and rows[3].all() and rows[2].nonzero().flatten().tolist() == [b]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:30])
def test_json_outputs_validate_under_their_schemas(schema):
    gen = generator("auto")
    for temperature, seed in ((0.0, None), (1.0, 1), (1.0, 2)):
        out = gen.generate(
            "give json",
            max_new_tokens=60,
            temperature=temperature,
            seed=seed,
            constraint=Constraint.json_schema(schema),
        )
        if out.stats.complete:
            jsonschema.validate(json.loads(out.text), schema)
        else:  # the 60 tokens ran out: what there is is a prefix of valid JSON
            assert out.stats.new_tokens == 60


def test_a_finished_grammar_ends_the_request_with_stop():
    gen = generator("pld")
    stream = gen.stream([5, 6, 7], max_new_tokens=30, constraint=Constraint.regex("[0-9]{3}"))
    text = "".join(stream)
    assert len(text) == 3 and text.isdigit() and stream.finish_reason == "stop"
    assert stream.stats.complete and stream.stats.grammar["seconds"] > 0


def test_batches_and_n_samples_follow_their_own_constraints():
    gen = generator("stand")
    prompts = [[5, 6, 7, 5, 6, 7], [9, 9, 9]]
    constraint = Constraint.json_schema(SCHEMAS[0])
    request = Request(max_new_tokens=30, constraint=constraint)
    batch = gen.generate_batch(prompts, request)
    alone = [gen.generate(p, request).token_ids for p in prompts]
    assert [o.token_ids for o in batch] == alone
    mixed = gen.generate_batch(prompts, Request(max_new_tokens=12), n=1)
    assert [o.token_ids for o in mixed] == [
        gen.generate(p, max_new_tokens=12).token_ids for p in prompts
    ]


def test_a_grammar_this_vocabulary_cannot_continue_ends_with_a_clear_error():
    gen = generator("pld", tokenizer=tiny_tokenizer())  # no "}" in this vocabulary
    with pytest.raises(ConstraintError, match="allows no next token"):
        gen.generate([5, 6, 7], max_new_tokens=10, constraint=Constraint.regex(r"ab\}"))
    assert len(gen.generate([5, 6, 7], max_new_tokens=4).token_ids) == 4  # still serving


def test_a_drafted_dead_end_does_not_spoil_the_rest_of_the_walk():
    gen = generator("none", tokenizer=tiny_tokenizer())  # no "}": after "ab" nothing may follow
    state = gen.grammar.start(Constraint.regex(r"ab\}"))
    tok = tiny_tokenizer()
    a, b, c = (tok(ch).input_ids[0] for ch in "abc")
    tree = TokenTree((5, a, b, c), (-1, 0, 1, 1))  # a -> b is a dead end, a -> c is forbidden
    rows = allowed_tokens(state.masks(tree), gen.backend.vocab_size)
    assert state.dead == {2}
    assert rows[0].nonzero().flatten().tolist() == [a]
    assert rows[1].nonzero().flatten().tolist() == [b]
    assert rows[2].all() and rows[3].all()  # never used: no accepted path continues from them
    with pytest.raises(ConstraintError, match="allows no next token"):
        state.check_accepted(2)
    state.check_accepted(1)
    assert state.advance([a]) == [a] and not state.matcher.is_error()  # the walk used a copy


def test_the_cli_takes_one_constraint_and_refuses_bad_ones(saved_tiny_model, capsys, tmp_path):
    from test_cli import run_cli

    base = ["generate", "id:", "--target", str(saved_tiny_model), "--dtype", "float32", "--no-chat"]
    code, out, err = run_cli(base + ["--regex", "[0-9]{3}-[a-z]{2}", "--stats"], capsys)
    assert code == 0, err
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}\n", out) and "; grammar: " in err
    code, _, err = run_cli(base + ["--regex", "[a-"], capsys)
    assert code == 2 and err.startswith("tokentree: error: invalid regex")
    code, _, err = run_cli(base + ["--regex", "a", "--json-object"], capsys)
    assert code == 2 and "give one constraint" in err
    code, _, err = run_cli(base + ["--json-schema", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "cannot read" in err
    (tmp_path / "yes.gbnf").write_text('root ::= "yes" | "no"')
    code, out, err = run_cli(base + ["--grammar", str(tmp_path / "yes.gbnf")], capsys)
    assert code == 0 and out in ("yes\n", "no\n"), err
