"""Static tree templates of rank paths, cut per step by learned conditional acceptance rates.

A template lists rank paths: "01" is the second-ranked child of the best child of the root. Each
template node keeps a running average of how often it was accepted when its parent was (prior:
rank 0 likely, higher ranks less), so the cut to a budget follows the workload.
"""

from __future__ import annotations

import numpy as np

from ..sampling import Acceptance
from ..tree import TokenTree

TEMPLATES = {
    # Token Recycling's 80-node imbalanced tree (8 / 21 / 25 / 15 / 8 / 3 nodes at depths 1..6)
    "paper": """
        0 1 2 3 4 5 6 7
        00 01 02 03 04 05 06 07 10 11 12 13 20 21 22 30 31 40 50 60 70
        000 001 002 003 004 005 006 007 010 011 012 020 021 030 040 050 060 070 100 101 110 200 300 400 500
        0000 0001 0002 0003 0004 0010 0011 0020 0030 0040 0100 0200 1000 2000 3000
        00000 00001 00002 00010 00020 00100 01000 10000
        000000 000001 000100
    """,  # noqa: E501  (one tree level per line)
    # a CPU-sized tree: deep along rank 0, a little width near the root (20 nodes)
    "small": """
        0 1 2 3
        00 01 02 10 11 20
        000 001 010 100
        0000 0001 0010
        00000 00001
        000000
    """,
}
RANK_PRIOR = (
    0.55,
    0.2,
    0.1,
    0.06,
    0.04,
    0.03,
    0.02,
    0.02,
)  # conditional acceptance by rank, before data


def parse_template(text: str) -> list[tuple[int, ...]]:
    """Rank paths in template order.

    Raises ValueError unless every path comes after its parent and after its next-better sibling
    (so any prefix of the template is a tree whose siblings are ranks 0..m-1).
    """
    paths = [tuple(int(c) for c in word) for word in text.split()]
    seen = {()}
    for path in paths:
        if path[:-1] not in seen or path in seen:
            raise ValueError(f"template path {path} repeats or comes before its parent")
        if path[-1] and path[:-1] + (path[-1] - 1,) not in seen:
            raise ValueError(
                f"template path {path} comes before its sibling of rank {path[-1] - 1}"
            )
        seen.add(path)
    return paths


class TemplateShape:
    """A template with learned rates. Template node 0 is the root; node i > 0 is ``paths[i -
    1]``."""

    def __init__(self, name: str):
        if name not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got '{name}'")
        self.name = name
        self.paths = parse_template(TEMPLATES[name])
        index = {path: i + 1 for i, path in enumerate(self.paths)}
        self.parent = [0] + [index.get(p[:-1], 0) for p in self.paths]
        self.previous_sibling = [None] + [
            index[p[:-1] + (p[-1] - 1,)] if p[-1] else None for p in self.paths
        ]
        self.rate = np.array(
            [1.0] + [RANK_PRIOR[min(p[-1], len(RANK_PRIOR) - 1)] for p in self.paths]
        )

    @property
    def max_rank(self) -> int:
        return max(max(p) for p in self.paths)

    def rank(self, node: int) -> int:
        return self.paths[node - 1][-1]

    def ranked(self) -> list[int]:
        """Template nodes, most likely accepted first (path product of rates; parents precede
        children)."""
        path_rate = self.rate.copy()
        for node in range(1, len(path_rate)):
            path_rate[node] *= path_rate[self.parent[node]]
        return sorted(range(1, len(path_rate)), key=lambda n: (-path_rate[n], n))

    def learn(
        self, tree: TokenTree, proposed: list[int], acceptance: Acceptance, learning_rate: float
    ) -> None:
        """Running average of each template node's acceptance, given its parent was accepted.

        proposed: the template node of each tree node (len(tree) entries, 0 for the root).
        """
        accepted = set(acceptance.nodes)
        for node in range(1, len(tree)):
            if tree.parents[node] in accepted:
                template_node = proposed[node]
                hit = 1.0 if node in accepted else 0.0
                self.rate[template_node] += learning_rate * (hit - self.rate[template_node])

    def load_rates(self, rates: list[float]) -> None:
        rate = np.asarray(rates, dtype=float)
        if rate.shape != self.rate.shape or not ((rate >= 0) & (rate <= 1)).all():
            raise ValueError("template rates have the wrong size or range")
        self.rate = rate
