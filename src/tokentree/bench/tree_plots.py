"""One drawn tree per category: the step of a tokentree method that accepted the most, its
tokens as text, the accepted path in green, each node's drafter (``trees.png``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ACCEPTED_COLOR, REJECTED_COLOR, BONUS_COLOR = "#2e7d32", "#9e9e9e", "#1565c0"


def best_steps(records: list[dict]) -> dict[str, dict]:
    """Per category, the recorded step that accepted the most drafted tokens (tt: methods)."""
    best: dict[str, dict] = {}
    for record in records:
        for turn in record.get("turns", []):
            step = turn.get("best_step")
            if not step:
                continue
            key = (len(step["accepted"]), len(step["tokens"]))
            held = best.get(record["category"])
            if held is None or key > (len(held["accepted"]), len(held["tokens"])):
                best[record["category"]] = step | {"method": record["method"]}
    return dict(sorted(best.items()))


def layout(parents: list[int]) -> list[tuple[int, float]]:
    """(depth, row) of each node: leaves on consecutive rows depth first, a parent centred on its
    children."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents[1:], start=1):
        children[parent].append(node)
    place: list[tuple[int, float]] = [(0, 0.0)] * len(parents)
    next_row = [0]

    def visit(node: int, depth: int) -> float:
        if not children[node]:
            row = float(next_row[0])
            next_row[0] += 1
        else:
            rows = [visit(child, depth + 1) for child in children[node]]
            row = (rows[0] + rows[-1]) / 2
        place[node] = (depth, row)
        return row

    visit(0, 0)
    return place


def _label(text: str) -> str:
    return repr(text)[1:-1][:14]


def draw_tree(ax, step: dict) -> None:
    """The tree left to right (depth), accepted nodes green, the target's own next token blue on a
    row of its own below, each node's drafter under it."""
    place, accepted = layout(step["parents"]), set(step["accepted"])
    rows = int(max(y for _, y in place)) + 1
    last = max(accepted)
    bonus = (place[last][0] + 1, float(rows))  # a row of its own: it never hides a node
    for node, parent in enumerate(step["parents"][1:], start=1):
        (x0, y0), (x1, y1) = place[parent], place[node]
        color = ACCEPTED_COLOR if node in accepted else REJECTED_COLOR
        ax.plot([x0, x1], [-y0, -y1], color=color, linewidth=1.6 if node in accepted else 0.8)
    ax.plot([place[last][0], bonus[0]], [-place[last][1], -bonus[1]], "--", color=BONUS_COLOR)
    for node, (x, y) in enumerate(place):
        good = node in accepted
        box = {"boxstyle": "round,pad=0.2", "fc": ACCEPTED_COLOR if good else "#eeeeee"}
        box["ec"] = ACCEPTED_COLOR if good else REJECTED_COLOR
        ax.text(x, -y, _label(step["texts"][node]), ha="center", va="center", fontsize=7,
                color="white" if good else "black", bbox=box)  # fmt: skip
        if step["sources"][node]:
            ax.text(x, -y - 0.32, step["sources"][node], ha="center", va="top", fontsize=5,
                    color="#555555")  # fmt: skip
    ax.text(bonus[0], -bonus[1], _label(step["bonus_text"]) + "  (target)", ha="center",
            va="center", fontsize=7, color="white",
            bbox={"boxstyle": "round,pad=0.2", "fc": BONUS_COLOR, "ec": BONUS_COLOR})  # fmt: skip
    ax.set_xlim(-0.6, max(x for x, _ in place) + 1.8)
    ax.set_ylim(-rows - 0.7, 0.6)
    ax.axis("off")


def write_tree_pictures(records: list[dict], path: Path) -> bool:
    """``path``: one panel per category with its best step; False when no step was recorded."""
    steps = best_steps(records)
    if not steps:
        return False
    heights = [0.9 + 0.45 * (max(y for _, y in layout(s["parents"])) + 2) for s in steps.values()]
    fig, axes = plt.subplots(
        len(steps), 1, figsize=(9, min(60.0, sum(heights))), height_ratios=heights, squeeze=False
    )
    for ax, (category, step) in zip(axes[:, 0], steps.items()):
        draw_tree(ax, step)
        drafted = len(step["tokens"]) - 1
        planned = (
            f" (the planner kept {drafted} of {step['candidate']})" if step["candidate"] else ""
        )
        ax.set_title(
            f"{category}: {step['method']}, step {step['step']}, "
            f"{len(step['accepted']) - 1} of {drafted} drafted nodes accepted{planned}",
            fontsize=8,
            loc="left",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
