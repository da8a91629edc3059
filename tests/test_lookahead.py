import random

import pytest

from tokentree.drafters import make_drafter
from tokentree.drafters.trie import WindowTrie
from tokentree.errors import TokentreeError
from tokentree.sampling import Acceptance


def counts(trie, key):
    node = trie.find(key)
    return None if node is None else node.count


def test_windows_are_counted_once_however_text_arrives():
    text = [1, 2, 3, 1, 2, 4, 1, 2, 3]
    whole = WindowTrie(window=3, max_nodes=10_000)
    whole.extend(text, 0)
    pieces = WindowTrie(window=3, max_nodes=10_000)
    for end in (2, 3, 7, 9):
        pieces.extend(text[:end], {2: 0, 3: 2, 7: 3, 9: 7}[end])
    assert whole.to_list() == pieces.to_list()
    assert (
        counts(whole, [1, 2]) == 3
        and counts(whole, [1, 2, 3]) == 2
        and counts(whole, [1, 2, 4]) == 1
    )
    assert counts(whole, [3]) == 2 and counts(whole, [2, 3, 1]) == 1


def test_continuations_rank_by_frequency():
    trie = WindowTrie(window=4, max_nodes=10_000)
    trie.extend([7, 1, 2, 7, 1, 2, 7, 1, 3], 0)
    found = trie.continuations([7, 1], 3)
    assert found[0] == ([2], pytest.approx(2 / 3))
    assert sorted(p for p, _ in found[1:]) == [[2, 7], [3]]


def test_halving_bounds_memory_under_an_adversarial_stream():
    trie = WindowTrie(window=12, max_nodes=5_000)
    rng = random.Random(0)
    text = [rng.randrange(50_000) for _ in range(20_000)]  # never repeats: every window is new
    for end in range(100, len(text) + 1, 100):
        trie.extend(text[:end], end - 100)
        assert trie.nodes <= 5_000 + 12 * 100
    frequent = WindowTrie(window=3, max_nodes=1_000_000)
    frequent.extend([5, 6] * 50, 0)
    frequent.halve()
    assert counts(frequent, [5, 6]) == 25 and frequent.nodes == 6


def test_lookahead_tree_from_prompt_and_output():
    drafter = make_drafter("lookahead", window=4)
    prompt = [9, 1, 2, 3, 9, 1, 2, 4, 9, 1, 2, 3, 8, 1, 2]
    tree = drafter.propose(prompt, budget=3)
    # key (1, 2) continues with 3 (twice) or 4 (once); 3 is followed by 9 or 8
    assert tree.tokens[0] == 2 and tree.tokens[1] == 3 and len(tree) == 4
    assert set(tree.tokens[1:]) <= {3, 4, 9, 8}
    assert drafter.propose([5, 6], budget=3).tokens == (6,)


def test_lookahead_global_trie_carries_outputs_to_the_next_request():
    drafter = make_drafter("lookahead", window=4)
    drafter.propose([1, 2], budget=4)
    tree = make_drafter("none").propose([1, 2], 0)
    drafter.observe(tree, None, Acceptance((0,), 30))  # the target said 30 after 2
    drafter.observe(tree, None, Acceptance((0,), 31))
    drafter.reset()
    assert drafter.propose([5, 2], budget=4).tokens[:3] == (2, 30, 31)


def test_lookahead_bad_options():
    with pytest.raises(TokentreeError, match="key"):
        make_drafter("lookahead", key=12, window=12)
