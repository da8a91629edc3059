"""A PNG of a verify-cost profile (matplotlib, optional)."""

from __future__ import annotations

from ..errors import TokentreeError
from .profile import CostProfile


def plot_profile(profile: CostProfile, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TokentreeError("--plot needs matplotlib: pip install 'tokentree[bench]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        profile.sizes,
        [profile.ratio(n) for n in profile.sizes],
        marker="o",
        label="measured t(n) / t(1)",
    )
    ax.plot(profile.sizes, profile.sizes, linestyle=":", color="grey", label="n one-token steps")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tree nodes verified in one forward (n)")
    ax.set_ylabel("cost relative to one token")
    ax.set_title(
        f"verify cost, context {profile.context_len} tokens (t(1) = "
        f"{profile.seconds[0] * 1000:.0f} ms)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
