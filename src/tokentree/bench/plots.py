"""PNG plots of a benchmark summary (needs matplotlib: pip install 'tokentree[bench]')."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .suites import ALL  # noqa: E402
from .tree_plots import write_tree_pictures  # noqa: E402


def write_plots(summary: dict, records: list[dict], methods: list[str], out: Path) -> None:
    baseline = summary["baseline"]
    _speedup_bars(
        summary["speedup"], [m for m in methods if m != baseline], baseline, out / "speedup.png"
    )
    _tau_histograms(summary["methods"], out / "tau_hist.png")
    _rate_boxes(records, methods, out / "tokens_per_s.png")
    write_tree_pictures(records, out / "trees.png")


def _speedup_bars(speed: dict, methods: list[str], baseline: str, path: Path) -> None:
    categories = sorted({c for m in methods for c in speed.get(m, {}) if c != ALL}) + [ALL]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(categories)), 4))
    for i, m in enumerate(methods):
        xs = [j + i * width for j in range(len(categories))]
        ax.bar(xs, [speed.get(m, {}).get(c, 0) for c in categories], width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(
        [j + width * (len(methods) - 1) / 2 for j in range(len(categories))],
        categories,
        rotation=30,
    )
    ax.set_ylabel(f"speedup vs {baseline} (x)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tau_histograms(totals: dict, path: Path) -> None:
    spec = {m: t["accepted_hist"] for m, t in totals.items() if t["accepted_hist"]}
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, hist in spec.items():
        steps = sum(hist.values())
        ax.plot([int(k) for k in hist], [v / steps for v in hist.values()], marker="o", label=m)
    ax.set_xlabel("drafted tokens accepted per step")
    ax.set_ylabel("share of steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rate_boxes(records: list[dict], methods: list[str], path: Path) -> None:
    data = [[r["tokens_per_s"] for r in records if r["method"] == m] for m in methods]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(methods)), 4))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
    ax.set_ylabel("tokens/s per prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
