"""Block verification of chain drafts: the paper's example, the output law, a lossy control."""

import random
from collections import Counter
from itertools import product

import pytest
import torch
from chisquare import fits

from tokentree.sampling import Acceptance, Draft, Draw, accept_block, accept_sampled, accept_tree
from tokentree.tree import TokenTree

VOCAB, LENGTH, CHAIN = 3, 3, 3


def table(seed: int):
    """A context-dependent distribution over VOCAB tokens: prefix -> [V] probabilities."""
    cache = {}

    def dist(prefix: tuple) -> torch.Tensor:
        if prefix not in cache:
            rng = random.Random(hash((seed, prefix)))
            weights = torch.tensor([rng.random() ** 2 + 0.02 for _ in range(VOCAB)])
            cache[prefix] = weights / weights.sum()
        return cache[prefix]

    return dist


TARGET, DRAFT = table(1), table(2)


def draft_chain(prefix: tuple, deterministic: bool, generator: torch.Generator) -> Draft:
    """A chain of CHAIN tokens from the draft: sampled from q, or its argmax (q one-hot)."""
    tokens, rows, context = [prefix[-1]], [], prefix
    for _ in range(CHAIN):
        q = DRAFT(context)
        token = (
            int(q.argmax()) if deterministic else int(torch.multinomial(q, 1, generator=generator))
        )
        tokens.append(token)
        rows.append(q)
        context = context + (token,)
    rows.append(DRAFT(context))
    tree = TokenTree.chain(tokens[0], tokens[1:])
    return Draft(tree) if deterministic else Draft(tree, Draw.IID, torch.stack(rows))


def draft_tree(prefix: tuple, deterministic: bool, generator: torch.Generator) -> Draft:
    """Two children of the root (i.i.d. from q, or q's two most likely tokens), each followed by a
    chain of two: the token rule at the root, block verification below."""
    q = DRAFT(prefix)
    drawn = torch.multinomial(q, 2, replacement=True, generator=generator)
    firsts = (q.topk(2).indices if deterministic else drawn).tolist()
    tokens, parents, rows = [prefix[-1]], [-1], [q]
    for first in firsts:
        chain = draft_chain(prefix + (first,), deterministic, generator)
        base = len(tokens)
        for i in range(CHAIN):
            tokens.append(chain.tree.tokens[i])
            parents.append(0 if i == 0 else base + i - 1)
            rows.append(DRAFT(prefix + chain.tree.tokens[: i + 1]))
    tree = TokenTree(tuple(tokens), tuple(parents))
    return Draft(tree) if deterministic else Draft(tree, Draw.IID, torch.stack(rows))


def target_rows(prefix: tuple, tree: TokenTree) -> torch.Tensor:
    return torch.stack(
        [
            TARGET(prefix + tuple(tree.tokens[j] for j in tree.path_to(i)[1:]))
            for i in range(len(tree))
        ]
    )


def sequences(
    rule, deterministic: bool, n: int, seed: int = 0, drafts=None
) -> tuple[Counter, float]:
    """The first LENGTH tokens of n decodings from the prefix (0,), and the mean accepted per
    step."""
    generator = torch.Generator().manual_seed(seed)
    counts, accepted, steps = Counter(), 0, 0
    for _ in range(n):
        prefix = (0,)
        while len(prefix) <= LENGTH:
            draft = (drafts or draft_chain)(prefix, deterministic, generator)
            acceptance = rule(draft, target_rows(prefix, draft.tree), generator)
            prefix = prefix + tuple(acceptance.new_tokens(draft.tree))
            accepted, steps = accepted + acceptance.accepted, steps + 1
        counts[prefix[1 : LENGTH + 1]] += 1
    return counts, accepted / steps


def exact_law() -> dict:
    law = {}
    for tokens in product(range(VOCAB), repeat=LENGTH):
        chance, prefix = 1.0, (0,)
        for token in tokens:
            chance *= float(TARGET(prefix)[token])
            prefix = prefix + (token,)
        law[tokens] = chance
    return law


def stop_at_first_miss_bonus_from_p(draft, p, generator):
    """A lossy rule: token-by-token acceptance, but the bonus drawn from p instead of the
    residual."""
    good = accept_sampled(draft, p, generator)
    bonus = int(torch.multinomial(p[good.nodes[-1]], 1, generator=generator))
    return Acceptance(good.nodes, bonus)


def assert_gain(block_rate: float, token_rate: float, deterministic: bool) -> None:
    """Sampled chains: block verification accepts more. One-hot (deterministic) chains: the same in
    expectation (with q = 1 every weight is a product of p's, and the stopping chances add up to
    the token rule's: no slack to carry), so only noise separates the two."""
    if deterministic:
        assert block_rate == pytest.approx(token_rate, abs=0.05)
    else:
        assert block_rate > token_rate + 0.02


def test_the_papers_example_accepts_eleven_ninths_where_token_by_token_accepts_ten():
    p, q = (
        torch.tensor([1 / 3, 2 / 3]),
        torch.tensor([2 / 3, 1 / 3]),
    )  # context-free target and draft
    generator = torch.Generator().manual_seed(0)
    totals = {"block": 0, "token": 0}
    n = 30_000
    for _ in range(n):
        chain = torch.multinomial(q, 2, replacement=True, generator=generator).tolist()
        draft = Draft(TokenTree.chain(0, chain), Draw.IID, q.expand(3, 2).clone())
        totals["block"] += accept_block(draft, p.expand(3, 2), generator).accepted
        totals["token"] += accept_sampled(draft, p.expand(3, 2), generator).accepted
    assert totals["block"] / n == pytest.approx(11 / 9, abs=0.02)
    assert totals["token"] / n == pytest.approx(10 / 9, abs=0.02)


def test_a_whole_chain_the_target_agrees_with_is_kept_and_a_sure_miss_stops_at_the_root():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    draft = Draft(TokenTree.chain(2, [0, 1]), Draw.IID, q)
    same = accept_block(draft, q, torch.Generator().manual_seed(3))  # p == q: everything accepted
    assert same.nodes == (0, 1, 2)
    never = torch.tensor([[0.0, 0.0, 1.0]] * 3)  # the target never says 0 or 1
    miss = accept_block(draft, never, torch.Generator().manual_seed(3))
    assert miss.nodes == (0,) and miss.bonus == 2
    with pytest.raises(ValueError, match="chain"):
        accept_block(Draft(TokenTree.from_paths(2, [[0], [1]])), never, torch.Generator())


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "deterministic"])
def test_block_verification_follows_the_target_law_and_accepts_more(deterministic):
    n = 6000
    law = exact_law()
    counts, block_rate = sequences(accept_block, deterministic, n)
    assert fits(counts, law, n), sorted(counts.items())
    _, token_rate = sequences(accept_sampled, deterministic, n)
    assert_gain(block_rate, token_rate, deterministic)


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "deterministic"])
def test_trees_take_the_token_rule_at_branches_and_block_verification_below(deterministic):
    n = 6000
    counts, tree_rate = sequences(accept_tree, deterministic, n, drafts=draft_tree)
    assert fits(counts, exact_law(), n), sorted(counts.items())
    _, token_rate = sequences(accept_sampled, deterministic, n, drafts=draft_tree)
    assert_gain(tree_rate, token_rate, deterministic)


def test_negative_control_a_lossy_rule_fails_the_same_law_test():
    n = 6000
    counts, _ = sequences(stop_at_first_miss_bonus_from_p, False, n)
    assert not fits(counts, exact_law(), n)
