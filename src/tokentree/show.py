"""Trees drawn in the terminal: each step's verified tree with its tokens as text, the accepted
path marked, each node's drafter and the planner's cut (``tokentree generate --show-trees``)."""

from __future__ import annotations

import json
from typing import Callable

from .trace import StepTrace

ACCEPTED, REJECTED = "✔", "·"


def token_text(decode: Callable[[list[int]], str], token: int) -> str:
    """A token as a JSON string literal: spaces and newlines stay visible."""
    return json.dumps(decode([token]), ensure_ascii=False)


def headline(trace: StepTrace) -> str:
    """``step 7: 5 of 23 candidate nodes verified (planner), 3 accepted + 1 from the target``."""
    if trace.drafted == 0:
        how = "plain step (nothing drafted" + (
            f", the planner cut all {trace.candidate} candidates)" if trace.candidate else ")"
        )
    elif trace.candidate is None:
        how = f"{trace.drafted} drafted nodes verified (fixed budget)"
    else:
        how = f"{trace.drafted} of {trace.candidate} candidate nodes verified (planner)"
    return f"step {trace.step}: {how}, {len(trace.accepted) - 1} accepted + 1 from the target"


def render_step(trace: StepTrace, decode: Callable[[list[int]], str]) -> str:
    """The step's headline and its tree, one node per line, depth first."""
    tree, accepted = trace.tree, set(trace.accepted)
    lines = [headline(trace), f"{token_text(decode, tree.tokens[0])}  (root)"]

    def walk(node: int, prefix: str) -> None:
        children = tree.children[node]
        for k, child in enumerate(children):
            last = k == len(children) - 1
            mark = ACCEPTED if child in accepted else REJECTED
            text = token_text(decode, tree.tokens[child])
            source = f"  [{trace.sources[child]}]" if trace.sources[child] else ""
            lines.append(f"{prefix}{'└─' if last else '├─'}{mark} {text}{source}")
            walk(child, prefix + ("   " if last else "│  "))

    walk(0, "")
    lines.append(f"=> target: {token_text(decode, trace.bonus)} after the accepted path")
    return "\n".join(lines)
