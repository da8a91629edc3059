"""A frequency trie of token windows, the store behind the Lookahead drafter."""

from __future__ import annotations

import heapq
from typing import Sequence


class TrieNode:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[int, TrieNode] = {}
        self.count = 0


class WindowTrie:
    """Every window ``tokens[p : p + window]`` of the inserted text, counted once per occurrence: a
    suffix trie cut at depth ``window`` (a node's count is how often its token path occurs).

    Text grows at the end: :meth:`extend` adds exactly the window prefixes that became visible, so
    each window's nodes are counted once however the text arrives, and :meth:`remove` takes a text
    out again. Node count is capped: past ``max_nodes`` all counts are halved and nodes that reach
    zero are pruned (a trie whose texts are removed later keeps its own cap instead).
    """

    def __init__(self, window: int, max_nodes: int):
        if window < 2 or max_nodes < 1:
            raise ValueError(f"need window >= 2 and max_nodes >= 1, got {window} and {max_nodes}")
        self.window = window
        self.max_nodes = max_nodes
        self.root = TrieNode()
        self.nodes = 0

    def extend(self, tokens: Sequence[int], old_len: int) -> None:
        """``tokens`` is the text so far; its first ``old_len`` tokens were inserted before."""
        new_len = len(tokens)
        for start in range(max(0, old_len - self.window + 1), new_len):
            seen = max(0, min(self.window, old_len - start))
            now = min(self.window, new_len - start)
            if now > seen:
                self._insert(tokens[start : start + now], seen)
        if self.nodes > self.max_nodes:
            self.halve()

    def _insert(self, window: Sequence[int], counted: int) -> None:
        """Walk/create the path of ``window``, adding 1 to the nodes deeper than ``counted``."""
        node = self.root
        for depth, token in enumerate(window):
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = TrieNode()
                self.nodes += 1
            if depth >= counted:
                child.count += 1
            node = child

    def remove(self, tokens: Sequence[int]) -> None:
        """Take out a text inserted earlier (all of it, as :meth:`extend` counted it)."""
        for start in range(len(tokens)):
            node, window = self.root, tokens[start : start + self.window]
            for depth, token in enumerate(window):
                child = node.children[token]
                child.count -= 1
                if (
                    child.count == 0
                ):  # only this occurrence went through it: its subtree is this window's rest
                    del node.children[token]
                    self.nodes -= len(window) - depth
                    break
                node = child

    def halve(self) -> None:
        """Halve every count and prune the nodes left at zero (with their subtrees)."""
        self.nodes = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for token, child in list(node.children.items()):
                child.count //= 2
                if child.count == 0:
                    del node.children[token]
                else:
                    self.nodes += 1
                    stack.append(child)

    def find(self, key: Sequence[int]) -> TrieNode | None:
        node = self.root
        for token in key:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def longest_suffix(self, context: Sequence[int]) -> int:
        """The largest m < ``window`` such that ``context[-m:]`` occurs followed by some token (0 if
        none): the context's own trailing occurrence, with nothing after it yet, does not count.

        Binary search: a suffix of a continued occurrence is continued too, so it is monotone in m.
        """
        low, high = 0, min(len(context), self.window - 1)
        while low < high:
            mid = (low + high + 1) // 2
            node = self.find(context[-mid:])
            if node is None or not node.children:
                high = mid - 1
            else:
                low = mid
        return low

    def continuations(self, key: Sequence[int], limit: int) -> list[tuple[list[int], float]]:
        """Up to ``limit`` continuation nodes after ``key``, most frequent first, as (path, share):
        share = count(node) / count(key node), an estimate of the chance the path follows."""
        start = self.find(key)
        if start is None or not start.children or limit <= 0:
            return []
        total = max(start.count, sum(c.count for c in start.children.values()))
        heap = [(-child.count, token, [token], child) for token, child in start.children.items()]
        heapq.heapify(heap)
        found = []
        while heap and len(found) < limit:
            neg, _, path, node = heapq.heappop(heap)
            found.append((path, -neg / total))
            for token, child in node.children.items():
                heapq.heappush(heap, (-child.count, token, path + [token], child))
        return found

    # ----------------------------------------------------------------- persistence
    def to_list(self) -> list:
        """Nested [token, count, [children...]] lists (JSON-friendly)."""

        def dump(node: TrieNode) -> list:
            return [[token, child.count, dump(child)] for token, child in node.children.items()]

        return dump(self.root)

    def load_list(self, data: list, vocab_size: int) -> None:
        """Replace the content with :meth:`to_list` output; raises ValueError on malformed data."""
        root, nodes = TrieNode(), 0
        stack = [(root, data)]
        while stack:
            node, items = stack.pop()
            if not isinstance(items, list):
                raise ValueError("trie children must be a list")
            for item in items:
                if (
                    not isinstance(item, list)
                    or len(item) != 3
                    or not isinstance(item[0], int)
                    or not isinstance(item[1], int)
                    or not 0 <= item[0] < vocab_size
                    or item[1] < 1
                ):
                    raise ValueError(f"bad trie entry {str(item)[:60]}")
                child = node.children[item[0]] = TrieNode()
                child.count = item[1]
                nodes += 1
                stack.append((child, item[2]))
        self.root, self.nodes = root, nodes
