"""EOS, max tokens and stop strings, through the engine and the Python API."""

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_greedy_equality import hf_greedy, run_engine

from tokentree.api import Generator
from tokentree.drafters import make_drafter
from tokentree.errors import TokentreeError
from tokentree.models import LoadedModel
from tokentree.text import TextStream


@pytest.mark.parametrize("drafter", ["none", "pld", "pld-tree"])
def test_eos_stops_like_hf_generate(drafter):
    model = tiny_model("qwen2", seed=11)
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    free = hf_greedy(model, prompt, 30)
    eos = free[7]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=30,
            eos_token_id=eos,
            pad_token_id=0,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    expected = out[0, len(prompt) :].tolist()
    got, stats = run_engine(model, make_drafter(drafter), prompt, 30, eos_ids={eos})
    assert got == expected and got[-1] == eos and len(got) <= 8
    assert stats.new_tokens == len(got)


class FakeTokenizer:
    """Decodes id i to the i-th character of an alphabet; id 0 decodes to nothing (special)."""

    alphabet = "_abcdefghijklmnopqrstuvwxyz "

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.alphabet[i] for i in ids if i)


def test_text_stream_stops_inside_a_step_and_trims_tokens():
    stream = TextStream(FakeTokenizer(), stop=["cd"])
    pieces = [stream.push([1, 2]), stream.push([3, 4, 5, 6])]
    assert "".join(pieces) == "ab" and stream.stopped
    assert stream.token_ids == [1, 2, 3, 4]  # cut after the token that completed "cd"
    assert stream.push([7]) == ""


def test_text_stream_holds_back_possible_stop_prefix():
    stream = TextStream(FakeTokenizer(), stop=["xyz"])
    assert stream.push([1, 24]) == "a"  # "x" might start "xyz"
    assert stream.push([2]) == "xb"
    assert stream.finish() == ""
    stream = TextStream(FakeTokenizer(), stop=["xyz"])
    assert stream.push([1, 24, 25]) == "a"
    assert stream.finish() == "xy" and stream.text == "axy"


def tiny_generator(drafter="pld"):
    return Generator(
        LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), "tiny"), make_drafter(drafter)
    )


def test_api_generate_stop_string_and_max_tokens():
    gen = tiny_generator()
    free = gen.generate("hello there", max_new_tokens=40, chat=False)
    assert free.stats.new_tokens == len(free.token_ids) == 40
    text = free.text
    first = next(
        i for i in range(3, len(text) - 2) if text.find(text[i : i + 2]) == i
    )  # a fresh 2-char string
    stopped = gen.generate(
        "hello there", max_new_tokens=40, chat=False, stop=["@@never", text[first : first + 2]]
    )
    assert stopped.text == text[:first]
    assert free.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert len(stopped.token_ids) < 40


def test_api_prompt_forms_and_drafter_switch():
    gen = tiny_generator()
    by_text = gen.generate("hi", max_new_tokens=12, chat=True)
    by_messages = gen.generate([{"role": "user", "content": "hi"}], max_new_tokens=12)
    by_ids = gen.generate(gen.encode("hi", chat=True), max_new_tokens=12, drafter="none")
    assert by_text.token_ids == by_messages.token_ids == by_ids.token_ids
    assert by_ids.stats.tokens_per_step == 1.0
    pieces = list(gen.stream("hi", max_new_tokens=12, chat=True))
    assert "".join(pieces) == by_text.text


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=0.7, min_p=1.0), "min_p"),
        (dict(top_p=0.0), "top_p"),
        (dict(budget=-1), "budget"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_api_rejects_bad_options(options, match):
    with pytest.raises(TokentreeError, match=match):
        tiny_generator().generate("hi", **options)


def test_api_rejects_bad_prompts():
    gen = tiny_generator()
    with pytest.raises(TokentreeError):
        gen.generate([])
    with pytest.raises(TokentreeError):
        gen.generate([1, 2, 10_000])
    with pytest.raises(TokentreeError, match="chat template"):
        Generator(
            LoadedModel(tiny_model(), tiny_tokenizer(chat=False), "t"), make_drafter("none")
        ).generate("hi", chat=True)
