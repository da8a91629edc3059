"""Prompt logprobs (vLLM's ``prompt_logprobs``): each prompt token's log-probability, rank and
top K given the tokens before it, computed by the prefill itself (chained verifies whose rows are
all kept), equal to one plain forward's log-softmax; the generation after it is unchanged and its
prefill forwards nothing again."""

import pytest
import torch
from conftest import tiny_model
from test_constraints import generator
from test_logprobs import PROMPT, every_drafter

from tokentree.drafters import DRAFTERS
from tokentree.logprobs import MAX_TOP, prompt_logprobs
from tokentree.request import Request, RequestError


@torch.inference_mode()
def prompt_rows(model, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, V] log-softmax of one forward: row i predicts prompt[i + 1]."""
    return model(torch.tensor([prompt])).logits[0, :-1].float().log_softmax(-1)


def check_prompt(entries, want: torch.Tensor, prompt: list[int], top: int) -> None:
    assert entries[0] is None and len(entries) == len(prompt)
    for i, entry in enumerate(entries[1:]):
        token = prompt[i + 1]
        assert entry.token == token
        assert entry.logprob == pytest.approx(float(want[i, token]), abs=1e-5), i
        assert entry.rank == int((want[i] > want[i, token]).sum()) + 1
        assert [t for t, _ in entry.top] == want[i].topk(top).indices.tolist()
        assert [v for _, v in entry.top] == pytest.approx(want[i].topk(top).values.tolist(),
                                                          abs=1e-5)  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_prompt_logprobs_in_chunks_equal_one_forward(chunk):
    gen = generator("pld")
    prompt = PROMPT * 2
    entries = prompt_logprobs(gen.backend, prompt, 4, chunk=chunk)
    check_prompt(entries, prompt_rows(gen.target.model, prompt), prompt, 4)


@pytest.mark.parametrize("name", every_drafter())
def test_generations_with_prompt_logprobs_are_unchanged(name):
    draft = tiny_model("llama", seed=5) if DRAFTERS[name].needs_draft else None
    gen = generator(name, draft)
    plain = gen.generate(PROMPT, Request(max_new_tokens=16, budget=6))
    out = gen.generate(PROMPT, Request(max_new_tokens=16, budget=6, prompt_logprobs=2))
    assert out.token_ids == plain.token_ids and plain.prompt_logprobs is None
    check_prompt(out.prompt_logprobs, prompt_rows(gen.target.model, PROMPT), PROMPT, 2)


def test_the_prefill_after_it_forwards_nothing_again():
    gen = generator("none")
    backend = gen.backend
    prompt_logprobs(backend, PROMPT, 0)
    assert backend.tokens == PROMPT[:-1]  # what the generation's prefill wants cached


def test_batches_and_n_carry_prompt_logprobs():
    gen = generator("pld")
    prompts = [PROMPT, [9, 10, 11, 9, 10, 11, 9]]
    outs = gen.generate_batch(prompts, Request(max_new_tokens=8, prompt_logprobs=1))
    alone = [gen.generate(p, Request(max_new_tokens=8)).token_ids for p in prompts]
    for prompt, out, tokens in zip(prompts, outs, alone):
        check_prompt(out.prompt_logprobs, prompt_rows(gen.target.model, prompt), prompt, 1)
        assert out.token_ids == tokens


@pytest.mark.parametrize("value", [MAX_TOP + 1, -1, True])
def test_bad_prompt_logprobs_name_their_field(value):
    with pytest.raises(RequestError) as caught:
        Request(prompt_logprobs=value)
    assert caught.value.field == "prompt_logprobs"


def test_the_cli_reports_prompt_logprobs(saved_tiny_model, capsys):
    import json

    from tokentree.cli import main

    args = ["generate", "abc abc", "--target", str(saved_tiny_model), "--dtype", "float32",
            "--no-chat", "--max-new-tokens", "2", "--prompt-logprobs", "1"]  # fmt: skip
    assert main(args + ["--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    entries = body["prompt_logprobs"]
    assert entries[0] is None and len(entries) == body["stats"]["prompt_tokens"]
    assert all(e["rank"] >= 1 and len(e["top"]) == 1 and e["logprob"] <= 0 for e in entries[1:])
    assert main(args) == 0
    assert "perplexity" in capsys.readouterr().err
