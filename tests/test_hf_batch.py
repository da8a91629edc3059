"""Many sequences per transformers forward (one packed cache row, a forest under a block mask), on
tiny random fp32 models: every lane's logits equal its own forward alone, through commits with
partial acceptance, lanes leaving and joining, held-back prompt tails and shared prompt cells; every
sequence of a batch equals its own greedy decoding, for every model-free drafter and planned
sizes."""

import random

import pytest
import torch
from conftest import VOCAB, tiny_model, tiny_tokenizer
from test_batch import NearAnswers, drive

from tokentree.api import Generator
from tokentree.backends.hf import HFBackend
from tokentree.backends.hf.batch import PackedBatch
from tokentree.batch import BatchEngine
from tokentree.drafters import make_drafter
from tokentree.models import LoadedModel
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

PROMPTS = [
    "def fibonacci(n):",
    "The three primary colors are",
    "List the days of the week: Monday,",
    "import numpy as np\n\ndef mean(xs):",
    "Once upon a time, in a small village,",
]


def random_tree(rng: random.Random, root: int, size: int) -> TokenTree:
    parents = (-1,) + tuple(rng.randrange(i) for i in range(1, size))
    return TokenTree((root,) + tuple(rng.randrange(3, VOCAB) for _ in range(1, size)), parents)


def random_path(rng: random.Random, tree: TokenTree) -> list[int]:
    return tree.path_to(rng.randrange(len(tree)))


def prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(length)]


@pytest.mark.parametrize(
    "family", ["llama", "qwen2", "gemma3"]
)  # gemma3: sliding window 6, contexts beyond it
def test_every_lane_scores_its_tree_as_it_would_alone(family):
    rng = random.Random(0)
    model = tiny_model(family)
    batch = PackedBatch(model, 3)
    assert batch.lane_attention == (
        family != "gemma3"
    )  # per-lane attention; gemma3's windows take the full mask
    alone = [HFBackend(model) for _ in range(3)]
    prompts = [prompt(rng, n) for n in (9, 14, 5)]
    for i, (lane, single, ids) in enumerate(zip(batch.lanes, alone, prompts)):
        lane.prefill(
            ids[:-1], defer=2 * i
        )  # lanes 1 and 2 forward their last prompt tokens with the first tree
        single.prefill(ids[:-1])
    roots = [ids[-1] for ids in prompts]
    for step in range(8):
        trees = [random_tree(rng, root, rng.randint(1, 7)) for root in roots]
        got = batch.verify_many([0, 1, 2], trees)
        rejected = 0
        for lane, single, tree, logits in zip(batch.lanes, alone, trees, got):
            torch.testing.assert_close(logits, single.verify(tree), atol=1e-5, rtol=1e-5)
            path = random_path(rng, tree)
            lane.commit(path)
            single.commit(path)
            rejected += len(tree) - len(path)
        assert [lane.tokens for lane in batch.lanes] == [s.tokens for s in alone]
        roots = [rng.randrange(3, VOCAB) for _ in roots]
        if step == 3:
            # lane 1 leaves mid-run (its cells become garbage between others'); a new prompt joins
            batch.release(1)
            fresh = prompt(rng, 11)
            batch.lanes[1].prefill(fresh[:-1], defer=3)
            alone[1].reset()
            alone[1].prefill(fresh[:-1])
            roots[1] = fresh[-1]
        if (
            step == 5
        ):  # lane 2 restarts from lane 0's first cells (a shared prompt): no forward of them
            batch.adopt(2, 0, 6)
            alone[2].reset()
            alone[2].prefill(batch.lanes[0].tokens[:6])
    held = {cell for lane in batch.lanes for cell in lane.cells}
    assert (
        len(batch.cell_positions) == len(held) + rejected
    )  # only the last step's rejected nodes are garbage


def test_a_verified_tree_must_be_committed_before_the_next_forward():
    batch = PackedBatch(tiny_model("llama"), 2)
    batch.lanes[0].prefill([5, 6, 7])
    batch.lanes[0].verify(TokenTree.root(8))
    with pytest.raises(RuntimeError, match="not committed"):
        batch.lanes[1].prefill([9, 10])


def tiny_generator(drafter: str = "pld") -> Generator:
    model = tiny_model("qwen2", seed=4)
    return Generator(
        LoadedModel(model, tiny_tokenizer(chat=False), "tiny-qwen2"), make_drafter(drafter)
    )


@pytest.mark.parametrize(
    "drafter", ["none", "pld", "stand", "lookahead", "recycling", "suffix", "auto"]
)
def test_every_sequence_of_a_batch_equals_its_own_greedy_decoding(drafter):
    gen = tiny_generator()
    ids = [
        gen.encode(p) * 2 for p in PROMPTS
    ]  # repeated: prompt lookup and the tables find continuations
    want = [gen.generate(i, max_new_tokens=40, drafter="none").token_ids for i in ids]
    outs = gen.generate_batch(
        ids, max_new_tokens=40, drafter=drafter, max_batch=3
    )  # two join later
    assert [o.token_ids for o in outs] == want
    assert all(o.stats.new_tokens == len(o.token_ids) for o in outs)
    if drafter != "none":
        assert sum(o.stats.drafted_tokens for o in outs) > 0
    assert (
        gen.generate(ids[0], max_new_tokens=40, drafter="none").token_ids == want[0]
    )  # its own cache is sound


def test_partial_acceptance_eos_and_leaving_sequences_in_a_batch():
    gen = tiny_generator()
    ids = [gen.encode(p) for p in PROMPTS]
    full = [gen.generate(i, max_new_tokens=30, drafter="none").token_ids for i in ids]
    eos = frozenset(
        {full[2][9], full[4][17]}
    )  # two sequences end early on an end token, at different steps
    cut = [next((j + 1 for j, t in enumerate(w) if t in eos), len(w)) for w in full]
    lengths = [
        24,
        5,
        30,
        11,
        30,
    ]  # and some leave at their length, while waiting prompts take their slots
    drafter = NearAnswers({tuple(i): w for i, w in zip(ids, full)}, vocab=VOCAB)
    batch = BatchEngine(PackedBatch(gen.target.model, 3), drafter, eos)
    stats = [GenerationStats() for _ in ids]
    assert drive(batch, ids, lengths, stats) == [
        w[: min(n, c)] for w, n, c in zip(full, lengths, cut)
    ]
    assert all(s.tokens_per_step > 1.0 for s in stats)  # drafted tokens were accepted ...
    assert sum(s.drafted_tokens for s in stats) > sum(
        s.new_tokens for s in stats
    )  # ... and many rejected


def test_samples_of_one_prompt_share_its_cells_and_equal_their_seeded_runs():
    gen = tiny_generator("stand")
    ids = gen.encode(" ".join(PROMPTS))
    outs = gen.generate_batch([ids], n=3, seed=11, max_new_tokens=12, temperature=0.9)
    want = [
        gen.generate(ids, max_new_tokens=12, temperature=0.9, seed=11 + i, drafter="none").token_ids
        for i in range(3)
    ]
    assert [o.token_ids for o in outs] == want
    assert len({tuple(w) for w in want}) > 1
    session = gen.batch_session(3)
    for i in range(3):
        session.add(ids, max_new_tokens=4, drafter="none")
    lanes = session.engine.target.lanes
    # Backend.prompt_tail: each sample forwards its prompt's last tokens with its first tree
    tail = 64
    shared = len(ids) - 1 - tail
    assert lanes[1].cells[:shared] == lanes[2].cells[:shared] == lanes[0].cells[:shared]
    assert len(session.engine.target.cell_positions) == shared  # the prefix was forwarded once


def test_serve_max_batch_on_transformers_answers_each_request_as_alone():
    from concurrent.futures import ThreadPoolExecutor

    from test_server import client, running_server

    gen = tiny_generator()
    want = [gen.generate(p, max_new_tokens=16, drafter="none").text for p in PROMPTS]
    seeded = [
        gen.generate(PROMPTS[0], max_new_tokens=8, temperature=0.8, seed=3 + i, drafter="none").text
        for i in range(2)
    ]
    with running_server(gen, max_batch=3, served_model_name="m") as (url, server):

        def complete(p):
            return client(url).completions.create(
                model="m",
                prompt=p,
                max_tokens=16,
                temperature=0,
                extra_body={"tokentree": {"drafter": "pld"}},
            )

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            replies = list(pool.map(complete, PROMPTS))
        assert [r.choices[0].text for r in replies] == want
        assert 2 <= server.config.app.state.worker.peak_batch <= 3
        reply = client(url).completions.create(
            model="m", prompt=PROMPTS[0], max_tokens=8, temperature=0.8, seed=3, n=2
        )
        assert [c.text for c in reply.choices] == seeded


def test_a_finished_slot_is_not_reused_before_it_is_released():
    """A sequence that finished in a step keeps its slot until released: one added meanwhile
    (a rollout's fork while a sibling just ended) gets another slot, and releasing the finished
    one leaves the new one decoding (it once took the finished slot and lost its text)."""
    from test_constraints import generator

    session = generator("pld").batch_session(3)
    short = session.add([5, 6, 7, 8], max_new_tokens=1)
    long = session.add([5, 6, 7, 9], max_new_tokens=6)
    session.step()
    assert session.finished(short) and not session.finished(long)
    late = session.add([5, 6, 7, 8, 9], max_new_tokens=3)
    assert late not in (short, long)
    assert len(session.release(short).token_ids) == 1
    while session.busy:
        session.step()
    assert len(session.release(late).token_ids) == 3 and len(session.release(long).token_ids) == 6
