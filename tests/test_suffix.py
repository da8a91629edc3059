"""Suffix decoding: longest matches, depth adaptive to the match, pruning, eviction, forks."""

import random

import pytest

from tokentree.drafters import make_drafter
from tokentree.drafters.suffix import ResponseStore, _match_lengths
from tokentree.drafters.trie import WindowTrie
from tokentree.errors import TokentreeError
from tokentree.sampling import Acceptance
from tokentree.tree import TokenTree


def canonical(items):
    """A trie's :meth:`to_list` with children in token order (the order of insertion may differ)."""
    return sorted([token, count, canonical(children)] for token, count, children in items)


def emit(drafter, context, tokens):
    """Tell ``drafter`` the target emitted ``tokens`` one per step (nothing drafted)."""
    for token in tokens:
        drafter.propose(context, 0)
        drafter.observe(TokenTree.root(context[-1]), None, Acceptance((0,), token))
        context = context + [token]
    return context


def test_the_longest_continued_suffix_is_found_and_its_trailing_occurrence_ignored():
    trie = WindowTrie(window=8, max_nodes=10_000)
    text = [1, 2, 3, 4, 9, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4]
    trie.extend(text, 0)
    assert (
        trie.longest_suffix(text) == 4
    )  # 1 2 3 4 continues once (with 9); the trailing copy does not count
    assert trie.longest_suffix([8, 8]) == 0
    assert trie.longest_suffix(text + [9]) == 5  # 1 2 3 4 9 is followed by 2


def test_removing_a_text_leaves_the_trie_of_the_others():
    rng = random.Random(0)
    texts = [[rng.randrange(6) for _ in range(rng.randrange(1, 30))] for _ in range(6)]
    trie, rest = WindowTrie(window=5, max_nodes=1 << 62), WindowTrie(window=5, max_nodes=1 << 62)
    for text in texts:
        trie.extend(text, 0)
    for text in texts[2:]:
        rest.extend(text, 0)
    trie.remove(texts[0])
    trie.remove(texts[1])
    assert canonical(trie.to_list()) == canonical(rest.to_list()) and trie.nodes == rest.nodes


def test_a_long_match_speculates_a_long_chain_and_a_short_one_a_short_chain():
    drafter = make_drafter("suffix", depth=24)
    body = list(range(100, 120))
    prompt = [7] + body + [8, 9]
    tree = drafter.propose(prompt + body[:10], budget=32)  # a 10-token match: up to 10 more tokens
    assert tree.tokens[1:] == tuple(body[10:20]) and max(tree.depths) == 10
    drafter.reset()
    tree = drafter.propose(prompt + [55] + body[:2], budget=32)  # a 2-token match: 2 tokens
    assert tree.tokens[1:] == tuple(body[2:4])


def test_continuations_are_ranked_by_count_and_pruned_below_min_prob():
    prompt = [1, 2, 3] * 6 + [1, 2, 4] * 3 + [1, 2, 5] + [9, 1, 2]
    tree = make_drafter("suffix", min_prob=0.1).propose(prompt, budget=3)
    first = [tree.tokens[c] for c in tree.children[0]]
    assert (
        first[0] == 3 and 4 in first and 5 not in first
    )  # 5 follows "1 2" in 1 of 10 cases: below 0.1
    assert tree.scores[tree.children[0][0]] == pytest.approx(0.6)


def test_the_global_trie_carries_responses_to_later_requests():
    drafter = make_drafter("suffix")
    emit(drafter, [40, 41], [30, 31, 32, 33, 34, 35])
    drafter.reset()
    tree = drafter.propose([50, 30, 31, 32], budget=8)  # matched in the earlier response only
    assert tree.tokens[1:4] == (33, 34, 35)


def test_eviction_bounds_the_global_trie_oldest_response_first():
    store = ResponseStore(depth=6, max_nodes=1000, max_responses=3)
    rng = random.Random(1)
    for _ in range(10):
        store.extend(store.begin([]), [rng.randrange(50_000) for _ in range(20)])
        assert len(store.responses) <= 3
    survivors = WindowTrie(window=6, max_nodes=1 << 62)
    for response in store.responses:
        survivors.extend(response.tokens, 0)
    assert store.trie.nodes == survivors.nodes <= 1000
    capped = ResponseStore(depth=6, max_nodes=1000, max_responses=10_000)
    for _ in range(50):
        capped.extend(
            capped.begin([]), [rng.randrange(50_000) for _ in range(40)]
        )  # 40 * 6 nodes each
        assert capped.trie.nodes <= 1000


def test_forks_share_the_global_trie_but_not_the_request():
    drafter = make_drafter("suffix")
    one, two = drafter.fork(), drafter.fork()
    emit(one, [1, 2], [60, 61, 62, 63])
    assert two.propose([5, 60, 61], budget=4).tokens[1:3] == (62, 63)  # learned by its sibling
    assert two.request_trie.find([1, 2]) is None


def test_state_round_trip_and_validation():
    drafter = make_drafter("suffix")
    emit(drafter, [1, 2], [60, 61, 62, 63])
    fresh = make_drafter("suffix")
    fresh.load_state_dict(drafter.state_dict(), vocab_size=100)
    assert canonical(fresh.store.trie.to_list()) == canonical(drafter.store.trie.to_list())
    with pytest.raises(ValueError, match="depth"):
        make_drafter("suffix", depth=8).load_state_dict(drafter.state_dict(), vocab_size=100)
    with pytest.raises(ValueError, match="token ids"):
        fresh.load_state_dict({"depth": 24, "responses": [[1, 500]]}, vocab_size=100)


def test_match_lengths_and_bad_options():
    assert (
        _match_lengths(12) == [12, 9, 6, 3, 2, 1]
        and _match_lengths(1) == [1]
        and _match_lengths(0) == []
    )
    for options, word in (
        ({"depth": 1}, "depth"),
        ({"alpha": 0}, "alpha"),
        ({"min_prob": 1.0}, "min_prob"),
    ):
        with pytest.raises(TokentreeError, match=word):
            make_drafter("suffix", **options)
