"""The feature head (``--drafter eagle``, ``tokentree train-head``) on tiny random fp32 models:
the tap reads the right target feature, training learns, checkpoints load and resume, bad heads
are refused, and decoding with the head equals plain greedy decoding."""

import shutil

import pytest
import torch
from conftest import VOCAB, tiny_model, train_tiny_head
from test_greedy_equality import hf_greedy, run_engine

from tokentree.backends.hf import HFBackend
from tokentree.drafters import make_drafter
from tokentree.errors import TokentreeError
from tokentree.head import FeatureTap, default_head_dir, load_head
from tokentree.tools.train_head.train import (
    FeatureData,
    TrainHeadConfig,
    accept_estimate,
    split_documents,
    train,
    unroll_positions,
)
from tokentree.tree import TokenTree


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=5, initializer_range=0.05)


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    return train_tiny_head(model, tmp_path_factory.mktemp("head"))


@torch.inference_mode()
def plain_features(model, ids):
    """[len(ids), H]: the target's final-norm output at every position of one causal forward."""
    tap = FeatureTap(model)
    try:
        model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None])
        return tap.features[0].clone()
    finally:
        tap.close()


def test_the_tap_finds_the_feature_of_the_last_committed_token(model):
    prompt = [5, 9, 11, 7, 3, 20]
    backend = HFBackend(model)
    tap = FeatureTap(model)
    backend.prefill(prompt[:-1])
    expected = plain_features(model, prompt)
    assert torch.allclose(tap.feature_after(prompt[:-1]), expected[len(prompt) - 2], atol=1e-5)
    # a tree whose two branches hold token 8 at the same depth under different parents
    tree = TokenTree((20, 4, 6, 8, 8), (-1, 0, 0, 1, 2))
    backend.verify(tree)
    backend.commit([0, 2, 4])
    committed = prompt + [6, 8]
    truth = plain_features(model, committed)[-1]
    assert torch.allclose(tap.feature_after(committed), truth, atol=1e-5)
    assert tap.feature_after(prompt + [4, 9]) is None  # no such row in the latest forward
    tap.close()


def test_training_learns_and_the_estimate_is_consistent(model, trained, tmp_path):
    out, report, data = trained
    held = report["held_out"]
    assert report["draft_vocab_coverage"] == 1.0  # the draft vocabulary is the whole (tiny) one
    assert held["accepted_per_chain_estimate"] == pytest.approx(
        accept_estimate(held["top1_by_step"]), abs=2e-3
    )
    # an untrained head on the same data does worse on the held-out loss
    config = TrainHeadConfig(tokens=10_000, minutes=10, steps=1, draft_vocab=VOCAB)
    untrained = train(model, data, config, tmp_path, log=lambda line: None)
    assert held["loss"] < untrained["held_out"]["loss"]
    assert held["top1_by_step"][0] > 0.5  # chance is about 1/65


def test_a_saved_head_loads_identically_and_resumes(model, trained, tmp_path):
    out, _, _ = trained
    head = load_head(out).attach(model)
    again = load_head(out).attach(model)
    features, tokens = torch.randn(3, model.config.hidden_size), torch.tensor([4, 5, 6])
    assert torch.equal(head.step(features, tokens), again.step(features, tokens))
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] > 0 and "optimizer" in state


def test_bad_heads_are_clear_errors(model, trained, tmp_path):
    out, _, _ = trained
    with pytest.raises(TokentreeError, match="train-head"):
        make_drafter("eagle", target_model=model, head=str(tmp_path / "nothing"))
    other = tiny_model("llama", seed=6)
    with pytest.raises(TokentreeError, match="another target"):
        make_drafter("eagle", target_model=other, head=str(out))
    with pytest.raises(TokentreeError, match="target"):
        make_drafter("eagle", head=str(out))


def test_training_data_helpers():
    data = FeatureData(
        torch.arange(10), torch.arange(10), torch.zeros(10, 2), [0, 4, 10]
    )  # documents [0, 4) and [4, 10)
    train_docs, test_docs = split_documents(data, 0.5, 0)
    assert sorted(train_docs + test_docs) == [(0, 4), (4, 10)]
    assert unroll_positions([(0, 4), (4, 10)], 3).tolist() == [1, 5, 6, 7]
    assert accept_estimate([0.5, 0.5]) == 0.75


@pytest.mark.parametrize("budget", [4, 12])
def test_eagle_decodes_exactly_like_plain_greedy(model, trained, budget):
    out, _, _ = trained
    drafter = make_drafter("eagle", target_model=model, head=str(out))
    generator = torch.Generator().manual_seed(1)
    accepted, drafted_steps = 0, 0
    for _ in range(4):
        start = torch.randint(3, VOCAB, (1, 4), generator=generator)
        with torch.inference_mode():
            prompt = model.generate(
                start,
                attention_mask=torch.ones_like(start),
                do_sample=False,
                max_new_tokens=6,
                pad_token_id=0,
                eos_token_id=None,
            )[0].tolist()
        expected = hf_greedy(model, prompt, 40)
        got, stats = run_engine(model, drafter, prompt, 40, budget=budget)
        assert got == expected
        accepted += sum(k * v for k, v in stats.accepted_hist.items())
        drafted_steps += stats.steps
    assert accepted > drafted_steps * 0.5  # the head's trees are often accepted ...
    assert accepted < drafted_steps * budget  # ... but not always all of them


def test_auto_with_the_head_as_a_source_decodes_like_plain_greedy(model, trained):
    out, _, _ = trained
    # where train-head puts it by default
    shutil.copytree(out, default_head_dir(model), dirs_exist_ok=True)
    drafter = make_drafter(
        "hybrid", None, target_model=model, sources="pld,eagle"
    )  # auto's mechanism with the head as a source
    prompt = [7, 8, 9, 7, 8, 9, 7, 8]
    assert run_engine(model, drafter, prompt, 30)[0] == hf_greedy(model, prompt, 30)


def test_training_prompts_are_disjoint_from_every_benchmark_selection():
    from tokentree.bench.suites import SUITES, load_suite, select
    from tokentree.tools.train_head.data import BENCH_RESERVED, training_prompts

    train = {p.turns[0] for p in training_prompts()}
    assert len(train) > 300
    for suite in SUITES:
        benchmark = select(load_suite(suite), None, BENCH_RESERVED)
        assert not train & {turn for p in benchmark for turn in p.turns}


def test_auto_joins_the_default_head_when_asked_and_one_exists(model, trained):
    shutil.rmtree(default_head_dir(model), ignore_errors=True)
    auto = make_drafter("auto", None, target_model=model, head=True)
    assert "eagle" not in auto.config.names  # no head in the default place yet
    out, _, _ = trained
    shutil.copytree(out, default_head_dir(model), dirs_exist_ok=True)
    assert "eagle" in make_drafter("auto", None, target_model=model, head=True).config.names
    assert "eagle" not in make_drafter("auto", None, target_model=model).config.names
    prompt = [7, 8, 9, 7, 8, 9, 7, 8]
    drafter = make_drafter("auto", None, target_model=model, head=True)
    assert run_engine(model, drafter, prompt, 30)[0] == hf_greedy(model, prompt, 30)
