"""The structured-output columns of a report (the json suite): valid replies, time per reply, and
what the grammar did in the trees (forced tokens, pruned nodes, the matcher's share of the time)."""

from __future__ import annotations

import statistics


def grammar_table(records: list[dict]) -> dict[str, dict]:
    """method -> {"turns", "valid", "median_reply_s", "forced_share", "pruned_share",
    "mask_share"} over the records' structured turns (those checked for validity).

    ``forced_share``: forced tokens added to trees per token emitted; ``pruned_share``: drafted
    nodes the grammar cut, of those cut plus those verified; ``mask_share``: the matcher's seconds
    (masks, tree walks, consuming) of the wall time. None where the method has no such counts."""
    table: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        turns = [t for r in records if r["method"] == method for t in r["turns"] if "valid" in t]
        if not turns:
            continue
        counted = [t for t in turns if t.get("grammar")]
        forced = sum(t["grammar"]["forced"] for t in counted)
        pruned = sum(t["grammar"]["pruned"] for t in counted)
        verified = sum(t.get("drafted_tokens") or 0 for t in counted)
        emitted = sum(t["new_tokens"] for t in counted)
        wall = sum(t["wall_s"] for t in counted)
        table[method] = {
            "turns": len(turns),
            "valid": sum(bool(t["valid"]) for t in turns),
            "median_reply_s": statistics.median(t["wall_s"] for t in turns),
            "median_reply_tokens": statistics.median(t["new_tokens"] for t in turns),
            "forced_share": forced / emitted if counted and emitted else None,
            "pruned_share": pruned / (pruned + verified) if counted and pruned + verified else None,
            "mask_share": sum(t["grammar"]["seconds"] for t in counted) / wall if wall else None,
        }
    return table


def grammar_lines(table: dict[str, dict], methods: list[str]) -> list[str]:
    """The markdown table of :func:`grammar_table` (empty when no turn was structured)."""
    if not table:
        return []
    lines = [
        "",
        "Structured output (each reply checked with jsonschema; forced: tokens the grammar forced "
        "into trees per token emitted; pruned: drafted nodes cut, of those cut or verified; mask: "
        "the matcher's share of the time):",
        "",
        "| method | valid | median s per reply | median tokens per reply | forced | pruned "
        "| mask |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        row = table.get(m)
        if row is None:
            continue
        cells = [_share(row[k]) for k in ("forced_share", "pruned_share", "mask_share")]
        lines.append(
            f"| {m} | {row['valid']}/{row['turns']} | {row['median_reply_s']:.2f} | "
            f"{row['median_reply_tokens']:g} | " + " | ".join(cells) + " |"
        )
    return lines


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
