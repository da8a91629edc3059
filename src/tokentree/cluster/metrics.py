"""The deployment's ``/metrics``: every replica's own Prometheus text, each sample labelled with
its replica (``sum without (replica)`` gives the deployment's totals). Pure text in, text out."""

from __future__ import annotations

SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")  # a family's sample names


def labelled(line: str, replica: str) -> str:
    """A sample line with ``replica="..."`` as its first label."""
    label = f'replica="{replica}"'
    name, _, rest = line.partition(" ")
    if "{" in name or rest.startswith("{"):
        head, _, tail = line.partition("{")
        return f"{head}{{{label},{tail}" if not tail.startswith("}") else f"{head}{{{label}{tail}"
    return f"{name}{{{label}}} {rest}"


def merge_metrics(texts: dict[str, str]) -> str:
    """One exposition of every replica's metrics (``# HELP``/``# TYPE`` once per metric)."""
    comments: dict[str, None] = {}
    samples: dict[str, list[str]] = {}
    for replica, text in sorted(texts.items()):
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                comments.setdefault(line, None)
                continue
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            samples.setdefault(metric, []).append(labelled(line, replica))
    out = []
    for comment in comments:  # each metric's comments, then its samples
        out.append(comment)
        parts = comment.split()
        if len(parts) >= 3 and parts[1] == "TYPE":
            family = parts[2]
            for metric in [family] + [family + suffix for suffix in SUFFIXES]:
                out.extend(samples.pop(metric, []))
    for lines in samples.values():
        out.extend(lines)
    return "\n".join(out) + "\n"
