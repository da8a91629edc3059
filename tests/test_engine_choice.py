"""``--backend auto`` between CPU engines: the expected time per token, the timed choice, its
cache."""

import pytest
from conftest import tiny_model, tiny_tokenizer

from tokentree.engine_choice import EngineChoice, EngineTiming, choose_engine, seconds_per_token
from tokentree.models import LoadedModel


def test_seconds_per_token_prefers_plain_decoding_when_trees_cost_too_much():
    # AMD EPYC AVX2, llama.cpp: t(4) = 2.5 t(1) buys 2.18 tokens: plain decoding is better
    assert seconds_per_token((1, 2, 4), (0.050, 0.081, 0.126)) == (0.050, 1)


def test_seconds_per_token_takes_the_best_tree_when_trees_are_cheap():
    # Intel Xeon AVX-512, OpenVINO int4: t(16) = 2.3 t(1)
    per_token, n = seconds_per_token((1, 4, 16), (0.076, 0.155, 0.176))
    assert n == 16 and per_token == pytest.approx(0.176 / sum(0.6**k for k in range(16)))


def test_the_choice_round_trips_and_says_why():
    timings = (
        EngineTiming("llamacpp", (1, 4), (0.05, 0.12)),
        EngineTiming("openvino", (1, 4), (0.09, 0.2)),
    )
    choice = EngineChoice("llamacpp", timings, 0.0)
    assert EngineChoice.from_json(choice.to_json()) == choice
    assert "llamacpp 50 ms a token" in choice.reason and "openvino 90 ms" in choice.reason


def test_engines_are_timed_once_then_the_cached_winner_alone_is_loaded():
    loads = {"slow": 0, "fast": 0}
    big = tiny_model("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=6)

    def loader(name, model):
        def load():
            loads[name] += 1
            return LoadedModel(model, tiny_tokenizer(), name)

        return load

    loaders = {"slow": loader("slow", big), "fast": loader("fast", tiny_model("llama"))}
    model, choice = choose_engine("key-1", loaders)
    assert choice.engine == "fast" and model.source == "fast"
    assert loads == {"slow": 1, "fast": 1}
    model, again = choose_engine("key-1", loaders)
    assert again == choice and loads == {"slow": 1, "fast": 2}
