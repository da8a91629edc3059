"""Exact logprobs: each emitted token's log-probability (and the top K at its position) from the
verify's own rows, equal to the log-softmax of plain decoding's logits at every position, for
every drafter, through partial acceptance, sampled and constrained requests, batches, the CLI and
the OpenAI surface."""

import json
import math

import pytest
import torch
from conftest import VOCAB, tiny_model
from test_constraints import generator, json_tokenizer

from tokentree.constraints import Constraint
from tokentree.drafters import DRAFTERS
from tokentree.logprobs import MAX_TOP, token_logprobs
from tokentree.request import Request, RequestError
from tokentree.sampling import SamplingParams, warp

PROMPT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]


@torch.inference_mode()
def reference_rows(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(tokens), V] plain decoding's logits: row i predicts tokens[i] (one forward)."""
    ids = torch.tensor([prompt + tokens])
    return model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()


def check_against(rows: torch.Tensor, out, top: int, params=SamplingParams(), processed=False):
    """``out.logprobs`` equal to ``rows``' log-probabilities (raw or the sampling law's)."""
    want = warp(rows, params).log() if processed and not params.greedy else rows.log_softmax(-1)
    assert len(out.logprobs) == len(out.token_ids)
    for i, (entry, token) in enumerate(zip(out.logprobs, out.token_ids)):
        assert entry.token == token
        assert entry.logprob == pytest.approx(float(want[i, token]), abs=1e-5), i
        best = want[i].topk(top)
        assert [t for t, _ in entry.top] == best.indices.tolist()[: len(entry.top)]
        finite = int(torch.isfinite(best.values).sum())
        assert len(entry.top) == finite
        assert [v for _, v in entry.top] == pytest.approx(best.values.tolist()[:finite], abs=1e-5)


def test_crafted_rows_give_their_log_softmax_and_top():
    rows = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    got = token_logprobs(rows, [1, 2], 2, SamplingParams())
    assert got[0].logprob == pytest.approx(float(rows[0].log_softmax(-1)[1]))
    assert [t for t, _ in got[0].top] == [0, 1] and [t for t, _ in got[1].top][0] == 2
    assert token_logprobs(rows, [1], 0, SamplingParams())[0].top == ()
    sampled = SamplingParams(temperature=0.5, top_k=2)
    warped = token_logprobs(rows, [0, 2], 3, sampled, processed=True)
    law = warp(rows, sampled)
    assert warped[0].logprob == pytest.approx(math.log(float(law[0, 0])))
    assert len(warped[0].top) == 2  # top-k left two tokens; -inf ones are not listed
    raw = token_logprobs(rows, [0, 2], 3, sampled, processed=False)
    assert raw[0].logprob != pytest.approx(warped[0].logprob)  # the negative control


@pytest.mark.parametrize("value,field", [(MAX_TOP + 1, "logprobs"), (-1, "logprobs")])
def test_bad_logprobs_options_name_their_field(value, field):
    with pytest.raises(RequestError) as caught:
        Request(logprobs=value)
    assert caught.value.field == field
    with pytest.raises(RequestError, match="raw_logprobs") as caught:
        Request(logprobs=1, logprobs_mode="logits")
    assert caught.value.field == "logprobs_mode"


def every_drafter():
    return [name for name, spec in DRAFTERS.items() if not spec.reads_target]


@pytest.mark.parametrize("name", every_drafter())
def test_greedy_logprobs_equal_plain_decodings_for_every_drafter(name):
    draft = tiny_model("llama", seed=5) if DRAFTERS[name].needs_draft else None  # accepts a lot
    gen = generator(name, draft)
    for budget in (3, 12):
        out = gen.generate(PROMPT, Request(max_new_tokens=24, budget=budget, logprobs=5))
        rows = reference_rows(gen.target.model, PROMPT, out.token_ids)
        assert out.token_ids == rows.argmax(-1).tolist()  # greedy: plain decoding's tokens
        check_against(rows, out, 5)
        assert out.stats.steps < len(out.token_ids) or name == "none"  # partial acceptance seen


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_sampled_logprobs_are_the_models_or_the_sampling_laws(mode):
    gen = generator("stand")
    request = Request(
        max_new_tokens=20, temperature=0.7, top_k=20, seed=4, logprobs=3, logprobs_mode=mode
    )
    out = gen.generate(PROMPT, request)
    rows = reference_rows(gen.target.model, PROMPT, out.token_ids)
    check_against(rows, out, 3, request.sampling, processed=mode == "processed_logprobs")


def test_constrained_logprobs_raw_ignore_the_mask_and_processed_apply_it():
    gen = generator("pld")
    rule = Constraint.regex("[a-e]{3,9}x")
    prompt = json_tokenizer()("abcab abcab abc").input_ids
    raw = gen.generate(prompt, Request(max_new_tokens=12, constraint=rule, logprobs=2))
    rows = reference_rows(gen.target.model, prompt, raw.token_ids)
    check_against(rows, raw, 2)
    request = Request(
        max_new_tokens=12, constraint=rule, logprobs=2, logprobs_mode="processed_logprobs"
    )
    masked = gen.generate(prompt, request)
    assert masked.token_ids == raw.token_ids
    legal = [entry for entry in masked.logprobs[:-1]]  # before the final 'x'
    letters = set(json_tokenizer()("abcdex").input_ids)
    assert all({t for t, _ in entry.top} <= letters for entry in legal)
    assert sum(math.exp(lp) for _, lp in masked.logprobs[0].top) <= 1 + 1e-6
    assert masked.logprobs[0].logprob >= raw.logprobs[0].logprob  # renormalised over fewer


def test_batches_and_n_give_each_sequence_its_own_logprobs():
    gen = generator("pld")
    prompts = [PROMPT, [9, 10, 11, 9, 10, 11, 9]]
    outs = gen.generate_batch(prompts, Request(max_new_tokens=16, logprobs=1))
    for prompt, out in zip(prompts, outs):
        check_against(reference_rows(gen.target.model, prompt, out.token_ids), out, 1)
    sampled = gen.generate_batch(
        [PROMPT], Request(max_new_tokens=10, temperature=1.0, seed=1, logprobs=0), n=3
    )
    for out in sampled:
        check_against(reference_rows(gen.target.model, PROMPT, out.token_ids), out, 0)


def test_no_logprobs_unless_asked():
    gen = generator("pld")
    assert gen.generate(PROMPT, Request(max_new_tokens=4)).logprobs is None
    out = gen.generate(PROMPT, Request(max_new_tokens=6, logprobs=0, stop=("x",)))
    assert len(out.logprobs) == len(out.token_ids)


def test_the_cli_prints_logprobs(saved_tiny_model, capsys):
    from tokentree.cli import main

    args = ["generate", "abc abc", "--target", str(saved_tiny_model), "--dtype", "float32"]
    assert main(args + ["--no-chat", "--max-new-tokens", "5", "--logprobs", "2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["logprobs"]) == len(body["token_ids"]) == 5
    first = body["logprobs"][0]
    assert first["token"] == body["token_ids"][0] and len(first["top"]) == 2
    assert first["logprob"] <= 0 and first["top"][0]["logprob"] >= first["top"][1]["logprob"]
    assert main(args + ["--logprobs", "21"]) == 2
    assert "logprobs" in capsys.readouterr().err


def test_vocab_sized_rows():
    rows = torch.randn(3, VOCAB)
    got = token_logprobs(rows, [1, 2, 3], MAX_TOP, SamplingParams())
    assert all(len(entry.top) == MAX_TOP for entry in got)
