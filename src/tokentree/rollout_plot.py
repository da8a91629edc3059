"""A picture of a rollout tree: each segment a horizontal bar from its first to its last token
position, at the height of the leaves below it, joined to its parent where it forked (blue: it
forked, green: a trajectory ended, red: pruned; dotted: an alternative's)."""

from __future__ import annotations

from .api.rollouts import RolloutTree
from .errors import TokentreeError

# by finish reason: forked, pruned, anything else (a trajectory's end) green
COLORS = {None: "tab:blue", "pruned": "tab:red"}


def leaf_heights(tree: RolloutTree) -> dict[int, float]:
    """segment id -> its height: leaves in order 0, 1, ...; an inner segment at its children's
    mean."""
    children: dict[int | None, list[int]] = {}
    for segment in tree.segments:
        children.setdefault(segment.parent, []).append(segment.id)
    heights: dict[int, float] = {}
    next_leaf = [0]

    def place(node: int) -> float:
        below = children.get(node, [])
        if not below:
            heights[node] = float(next_leaf[0])
            next_leaf[0] += 1
        else:
            heights[node] = sum(place(child) for child in below) / len(below)
        return heights[node]

    for root in children.get(None, []):
        place(root)
    return heights


def plot_rollout(tree: RolloutTree, path: str) -> None:
    """Write the tree's picture to ``path`` (PNG; needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise TokentreeError("--plot needs matplotlib: pip install 'tokentree[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = leaf_heights(tree)
    fig, ax = plt.subplots(figsize=(9, 1 + 0.35 * max(1, len(tree.trajectories))))
    for segment in tree.segments:
        y, end = heights[segment.id], segment.start + len(segment.token_ids)
        color = COLORS.get(segment.finish_reason, "tab:green")
        style = ":" if segment.reason == "alternative" else "-"
        ax.plot([segment.start, end], [y, y], color=color, linewidth=3, linestyle=style,
                solid_capstyle="butt")  # fmt: skip
        if segment.parent is not None:
            ax.plot([segment.start, segment.start], [heights[segment.parent], y], color="grey")
    ax.set_xlabel("token position in the completion")
    ax.set_yticks([])
    ax.set_title(
        f"{len(tree.trajectories)} trajectories, {tree.new_tokens} tokens generated, "
        f"{tree.forwards} forwards"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
