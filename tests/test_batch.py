"""Many sequences per forward on llama.cpp (SmolLM2 GGUF): every sequence of a batch equals its own
plain greedy decoding, with sequences joining and leaving between steps, partial acceptance and
planned tree sizes; the joint tree-size rule; drafter forks share what they learn.

The equality runs stay below 256 cache cells and 64 rows per batch: there llama.cpp's CPU kernels
round a sequence's logits as they do when it decodes alone (see ``LlamaCppBackend``), so any
difference is a bookkeeping error of ours (a cell seen by the wrong sequence, a lost one)."""

import random

import pytest
import torch
from test_llamacpp import generator, gguf  # noqa: F401 - the SmolLM2 fixtures

from tokentree.backends.llamacpp import LlamaCppBackend, LlamaCppConfig, LlamaCppModel, verify_many
from tokentree.backends.llamacpp_batch import LlamaCppBatch, slot_ids
from tokentree.batch import BatchEngine
from tokentree.drafters import make_drafter
from tokentree.drafters.base import fork
from tokentree.engine import DecodeRequest
from tokentree.errors import TokentreeError
from tokentree.planner import choose_batch
from tokentree.sampling import Acceptance
from tokentree.stats import GenerationStats
from tokentree.tree import TokenTree

PROMPTS = [
    "def fibonacci(n):",
    "The three primary colors are",
    "List the days of the week: Monday,",
    "import numpy as np\n\ndef mean(xs):",
    "Once upon a time, in a small village,",
]


def test_choose_batch_takes_the_best_nodes_of_all_sequences_while_they_pay():
    ranked = [[0.9, 0.8, 0.1], [0.95, 0.2], [0.5]]
    linear = lambda rows: 0.1 * rows  # noqa: E731 - each row costs 0.1 s
    assert choose_batch(ranked, linear, rate=0.0) == [3, 2, 1]  # free rows: everything
    assert choose_batch(ranked, linear, rate=100.0) == [0, 0, 0]  # dear rows: plain decoding
    # at 4 tokens/s a row costs 0.4 tokens: only estimates above 0.4 are worth it
    assert choose_batch(ranked, linear, rate=4.0) == [2, 1, 1]
    # a step curve (CPU batches): rows up to 5 cost the same, so even unlikely nodes ride along ...
    flat = lambda rows: 1.0 if rows <= 5 else 9.0  # noqa: E731
    assert choose_batch([[0.5, 0.05], [0.04]], flat, rate=1.0) == [2, 1]
    assert choose_batch([[0.5, 0.05], [0.04]], linear, rate=1.0) == [
        1,
        0,
    ]  # ... which a linear cost refuses


def test_slots_own_disjoint_blocks_of_sequence_ids():
    blocks = [slot_ids(i, 5, 64) for i in range(5)]
    assert [len(b) for b in blocks] == [12] * 5
    assert len({seq for b in blocks for seq in b}) == 60


def test_stand_forks_share_the_table_but_not_the_request():
    stand = make_drafter("stand")
    a, b = fork(stand), fork(stand)
    a.propose([1, 2, 3, 4], 4)
    b.propose([7, 8, 9], 4)
    assert a._context == [1, 2, 3, 4] and b._context == [7, 8, 9]
    logits = torch.full((1, 50), -10.0)
    logits[0, 5] = 10.0
    a.observe(TokenTree.root(4), logits, Acceptance((0,), 5))
    assert (
        stand.lookup([3, 4]) == stand.table[(3, 4)]
        and max(stand.table[(3, 4)], key=stand.table[(3, 4)].get) == 5
    )
    assert b.table is stand.table and fork(make_drafter("auto")).sources[0].table is not stand.table


def test_drafters_that_hold_one_sequence_say_so():
    class OneSequence:
        name, default_budget, runs_draft_model = "one", 4, True

    with pytest.raises(TokentreeError, match="cannot decode several sequences at once"):
        fork(OneSequence())


class NearAnswers:
    """Random trees around each prompt's known answer (partial acceptance, several leaves); forks
    share the answers and draw their own noise."""

    name, default_budget, runs_draft_model = "near-answers", 10, False

    def __init__(self, answers: dict[tuple[int, ...], list[int]], seed: int = 0, vocab: int = 5000):
        self.answers, self.rng, self.vocab = answers, random.Random(seed), vocab

    def fork(self):
        return NearAnswers(self.answers, self.rng.randrange(1 << 30), self.vocab)

    def propose(self, context, budget):
        prompt = next(p for p in self.answers if tuple(context[: len(p)]) == p)
        done = len(context) - len(prompt)
        truth = self.answers[prompt][done : done + 4]
        paths = [
            truth[: self.rng.randint(0, len(truth))] + [self.rng.randrange(50, self.vocab)]
            for _ in range(3)
        ]
        return TokenTree.from_paths(context[-1], [p for p in paths if p]).best(budget)

    def observe(self, tree, logits, acceptance):
        pass

    def reset(self):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["none", "pld", "stand", "auto"])
def test_every_sequence_of_a_batch_equals_its_own_greedy_decoding(generator, drafter):  # noqa: F811
    ids = [generator.encode(p, chat=False) for p in PROMPTS]
    want = [generator.generate(i, max_new_tokens=32, drafter="none").token_ids for i in ids]
    outs = generator.generate_batch(
        ids, max_new_tokens=32, drafter=drafter, max_batch=3
    )  # two join later
    assert [o.token_ids for o in outs] == want
    assert all(o.stats.new_tokens == len(o.token_ids) for o in outs)
    after = generator.generate(
        ids[0], max_new_tokens=32, drafter="none"
    )  # the generator's own cache is sound
    assert after.token_ids == want[0]


def drive(batch: BatchEngine, ids, lengths, stats) -> list[list[int]]:
    """Decode prompt ``ids[k]`` for ``lengths[k]`` tokens each, joining in order as slots free
    up."""
    got, owner, waiting = [[] for _ in ids], {}, list(range(len(ids)))
    while waiting or batch.runs:
        while waiting and batch.free_slots:
            k = waiting.pop(0)
            owner[batch.add(ids[k], DecodeRequest(max_new_tokens=lengths[k]), stats[k])] = k
        for slot, tokens in batch.step().items():
            got[owner[slot]] += tokens
    return got


@pytest.mark.slow
def test_partial_acceptance_and_leaving_sequences_in_a_batch(generator, gguf):  # noqa: F811
    ids = [generator.encode(p, chat=False) for p in PROMPTS]
    want = [generator.generate(i, max_new_tokens=40, drafter="none").token_ids for i in ids]
    model = LlamaCppModel(gguf, LlamaCppConfig(threads=2, n_ctx=2048, max_sequences=16))
    batch = BatchEngine(
        LlamaCppBatch(model, 3),
        NearAnswers({tuple(i): w for i, w in zip(ids, want)}),
        generator.target.eos_ids,
    )
    stats = [GenerationStats() for _ in ids]
    lengths = [24, 5, 24, 11, 16]  # some leave early, then a waiting prompt takes the slot
    assert drive(batch, ids, lengths, stats) == [w[:n] for w, n in zip(want, lengths)]
    assert (
        model.decoded_rows < 256
    )  # the regime where llama.cpp rounds as for one sequence (see above)
    assert all(s.tokens_per_step > 1.0 for s in stats)  # drafted tokens were accepted ...
    assert sum(s.drafted_tokens for s in stats) > sum(
        s.new_tokens for s in stats
    )  # ... and many rejected


@pytest.mark.slow
def test_a_lane_reset_leaves_the_other_lanes_cache_alone(gguf):  # noqa: F811
    model = LlamaCppModel(gguf, LlamaCppConfig(threads=2, n_ctx=1024, max_sequences=8))
    a, b = (LlamaCppBackend(model, sequences=slot_ids(i, 2, 8)) for i in range(2))
    a.prefill(list(range(100, 140)))
    b.prefill(list(range(200, 230)))
    before = verify_many([a], [TokenTree.root(140)])[0]
    a.commit((0,))
    a.prefill(list(range(100, 140)))
    b.reset()
    b.prefill(list(range(300, 320)))
    after, _ = verify_many([a, b], [TokenTree.root(140), TokenTree.root(320)])
    assert torch.equal(before, after)


@pytest.mark.slow
def test_n_samples_equal_their_seeded_single_runs(generator):  # noqa: F811
    ids = generator.encode(PROMPTS[1], chat=False)
    outs = generator.generate_batch(
        [ids], n=3, seed=11, max_new_tokens=12, temperature=0.9, drafter="stand"
    )
    want = [
        generator.generate(
            ids, max_new_tokens=12, temperature=0.9, seed=11 + i, drafter="none"
        ).token_ids
        for i in range(3)
    ]
    assert [
        o.token_ids for o in outs
    ] == want  # seeded sampling: the text is the seed's, whatever drafts
    assert len({tuple(w) for w in want}) > 1  # and the samples differ


@pytest.mark.slow
def test_samples_of_one_prompt_decode_its_prefix_once(generator):  # noqa: F811
    ids = generator.encode(" ".join(PROMPTS) * 2, chat=False)
    assert len(ids) > 80
    model = generator.target.model
    before = model.decoded_rows
    outs = generator.generate_batch([ids], n=3, max_new_tokens=16, drafter="none")
    # Backend.prompt_tail: each sequence forwards its prompt's last tokens with its first tree
    tail = 64
    assert model.decoded_rows - before == (len(ids) - 1 - tail) + 3 * (tail + 1) + 3 * 15
    assert (
        outs[0].token_ids
        == outs[1].token_ids
        == outs[2].token_ids
        == generator.generate(ids, max_new_tokens=16, drafter="none").token_ids
    )
