"""Summaries from benchmark records: speedup, tau, losslessness; markdown table and plots."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .grammar_report import grammar_lines, grammar_table
from .suites import ALL

if TYPE_CHECKING:
    from .runner import BenchConfig

BASELINES = (
    "hf",
    "llama-decode",
    "llama",
    "tt:none",
)  # plain decoding of the backend under test: HF generate, llama.cpp's own per-token decoding,
# or llama-cpp-python's (a prompt-cache run, whose baseline must reuse its cache too); on
# OpenVINO, tokentree's loop without drafts


def baseline_of(records: list[dict]) -> str:
    """The plain-decoding method every ratio is taken against: the first of BASELINES the records
    hold."""
    present = {r["method"] for r in records}
    return next((b for b in BASELINES if b in present), BASELINES[0])


def prompt_rates(records: list[dict], rate: str = "tokens_per_s") -> dict[tuple[str, str], float]:
    """(method, prompt_id) -> median ``rate`` (a record field) over repeats; records without it
    are left out."""
    rates = defaultdict(list)
    for r in records:
        if rate in r:
            rates[(r["method"], r["prompt_id"])].append(r[rate])
    return {key: statistics.median(values) for key, values in rates.items()}


def speedup_table(records: list[dict], rate: str = "tokens_per_s") -> dict[str, dict[str, float]]:
    """method -> category -> mean over prompts of (method tokens/s / baseline tokens/s)
    (Spec-Bench's speedup); ``rate="decode_tokens_per_s"``: after the first token."""
    rates, baseline = prompt_rates(records, rate), baseline_of(records)
    category = {r["prompt_id"]: r["category"] for r in records}
    ratios: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, pid), rate in rates.items():
        base = rates.get((baseline, pid))
        if base:
            ratios[method][category[pid]].append(rate / base)
            ratios[method][ALL].append(rate / base)
    return {m: {c: statistics.mean(v) for c, v in cats.items()} for m, cats in ratios.items()}


def slowest_table(records: list[dict]) -> dict[str, dict]:
    """method -> {"ratio", "prompt_id"}: its slowest prompt relative to the baseline (a mixed run's
    worst request: learned state shaped by other kinds of request must not make any one slower)."""
    rates, baseline = prompt_rates(records), baseline_of(records)
    worst: dict[str, dict] = {}
    for (method, pid), rate in rates.items():
        base = rates.get((baseline, pid))
        if base and (method not in worst or rate / base < worst[method]["ratio"]):
            worst[method] = {"ratio": rate / base, "prompt_id": pid}
    return worst


def pass_table(records: list[dict]) -> dict[str, dict[int, dict]]:
    """method -> repeat -> {"speedup": mean per-prompt ratio to the baseline's run of the same
    repeat, "tau": tokens per step}. Repeats run in sequence, so a later pass shows what drafters
    that learn across requests (lookahead, recycling, stand) gained from the earlier ones."""
    baseline = baseline_of(records)
    base = {
        (r["prompt_id"], r["repeat"]): r["tokens_per_s"] for r in records if r["method"] == baseline
    }
    ratios: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[tuple[str, int], list[int]] = defaultdict(
        lambda: [0, 0]
    )  # (method, repeat) -> [new, steps]
    for r in records:
        if (r["prompt_id"], r["repeat"]) in base:
            ratios[r["method"]][r["repeat"]].append(
                r["tokens_per_s"] / base[(r["prompt_id"], r["repeat"])]
            )
        for turn in r["turns"]:
            tokens[(r["method"], r["repeat"])][0] += turn.get("new_tokens", 0)
            tokens[(r["method"], r["repeat"])][1] += turn.get("steps") or 0
    return {
        m: {
            rep: {
                "speedup": statistics.mean(v),
                "tau": tokens[(m, rep)][0] / tokens[(m, rep)][1] if tokens[(m, rep)][1] else None,
            }
            for rep, v in sorted(reps.items())
        }
        for m, reps in ratios.items()
    }


def running_speedups(records: list[dict]) -> dict[str, float]:
    """Overall speedup of each non-baseline method so far (for the progress bar)."""
    return {m: cats[ALL] for m, cats in speedup_table(records).items() if m != baseline_of(records)}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or length difference), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def lossless_table(records: list[dict]) -> dict[str, dict]:
    """method -> share of turns token-identical to the baseline (same prompt, same repeat) and
    divergences."""
    baseline = baseline_of(records)
    base = {(r["prompt_id"], r["repeat"]): r for r in records if r["method"] == baseline}
    result: dict[str, dict] = {}
    for r in records:
        ref = base.get((r["prompt_id"], r["repeat"]))
        if ref is None:
            continue
        entry = result.setdefault(r["method"], {"turns": 0, "identical": 0, "divergences": []})
        for turn, (got, want) in enumerate(zip(r["turns"], ref["turns"])):
            entry["turns"] += 1
            at = first_divergence(got["token_ids"], want["token_ids"])
            if at is None:
                entry["identical"] += 1
            else:
                entry["divergences"].append(
                    {"prompt_id": r["prompt_id"], "turn": turn, "position": at}
                )
    for entry in result.values():
        entry["share"] = entry["identical"] / entry["turns"] if entry["turns"] else 0.0
    return result


def method_totals(records: list[dict]) -> dict[str, dict]:
    """method -> median tokens/s, tau, accepted histogram, time split."""
    totals: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        turns = [t for r in mine for t in r["turns"]]
        steps = sum(t["steps"] or 0 for t in turns)
        hist: dict[str, int] = defaultdict(int)
        for t in turns:
            for k, v in (t.get("accepted_hist") or {}).items():
                hist[k] += v
        totals[method] = {
            "prompts": len({r["prompt_id"] for r in mine}),
            "new_tokens": sum(r["new_tokens"] for r in mine),
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "tau": sum(t["new_tokens"] for t in turns) / steps if steps else None,
            "accepted_hist": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
            "draft_s": sum(t["draft_s"] or 0 for t in turns) if steps else None,
            "verify_s": sum(t["verify_s"] or 0 for t in turns) if steps else None,
            "wall_s": sum(t["wall_s"] for t in turns),
            "median_first_token_s": _median_or_none([t.get("first_token_s") for t in turns]),
        }
    return totals


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def environment(config: BenchConfig, dtype: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and config.device != "cpu"
        else cpu
    )
    threads = config.threads or torch.get_num_threads()
    return {
        "machine": f"{device}, {threads} threads",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": dtype,
        "llama_cpp": _llama_cpp_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": config.command,
        "commit": checkout_commit(),
    }


def checkout_commit() -> str | None:
    """The tokentree checkout's commit (with '+dirty' when it has uncommitted changes), if it is
    one."""
    import subprocess

    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _llama_cpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def write_report(
    records: list[dict],
    config: BenchConfig,
    methods: list[str],
    notes: list[str],
    out: Path,
    dtype: str,
) -> dict:
    summary = {
        "config": asdict(config),
        "environment": environment(config, dtype),
        "notes": notes,
        "baseline": baseline_of(records),
        "speedup": speedup_table(records),
        "decode_speedup": speedup_table(records, "decode_tokens_per_s"),
        "lossless": lossless_table(records),
        "methods": method_totals(records),
        "passes": pass_table(records),
        "slowest": slowest_table(records),
        "structured": grammar_table(records),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(markdown(summary, methods))
    try:
        from .plots import write_plots
    except ImportError:
        summary["notes"].append(
            "matplotlib not installed: no plots (pip install 'tokentree[bench]')"
        )
    else:
        write_plots(summary, records, methods, out)
    return summary


def markdown(summary: dict, methods: list[str]) -> str:
    env, speed, totals, lossless = (
        summary["environment"],
        summary["speedup"],
        summary["methods"],
        summary["lossless"],
    )
    methods = [m for m in methods if m in totals]
    greedy = summary["config"].get("temperature", 0) == 0
    categories = sorted({c for cats in speed.values() for c in cats if c != ALL}) + [ALL]
    lines = [
        f"Machine: {env['machine']} · torch {env['torch']} · transformers {env['transformers']} · "
        + (f"llama-cpp-python {env['llama_cpp']} · " if env.get("llama_cpp") else "")
        + f"dtype {env['dtype']} · {env['date']}"
        + (f" · commit {env['commit']}" if env.get("commit") else ""),
        "",
        f"Command: `{env['command']}`",
        "",
        f"Speedup vs `{summary['baseline']}` (mean per-prompt tokens/s ratio):",
        "",
        "| method | " + " | ".join(categories) + " |",
        "|---|" + "---|" * len(categories),
    ]
    for m in methods:
        cells = [f"{speed.get(m, {}).get(c, float('nan')):.2f}x" for c in categories]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| method | prompts | median tokens/s | tau | identical to {summary['baseline']} | draft "
        "s "
        "| verify s | slowest prompt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        t, loss = totals[m], lossless.get(m, {})
        slow = summary.get("slowest", {}).get(m)
        slowest = "-" if slow is None else f"{slow['ratio']:.2f}x ({slow['prompt_id']})"
        tau = "-" if t["tau"] is None else f"{t['tau']:.2f}"
        share = f"{loss.get('identical', 0)}/{loss.get('turns', 0)}" if greedy else "n/a (sampled)"
        split = (
            ("-", "-") if t["draft_s"] is None else (f"{t['draft_s']:.1f}", f"{t['verify_s']:.1f}")
        )
        lines.append(
            f"| {m} | {t['prompts']} | {t['median_tokens_per_s']:.2f} | {tau} | {share} | "
            f"{split[0]} | {split[1]} | {slowest} |"
        )
    lines += _decode_lines(summary, methods, categories)
    lines += grammar_lines(summary.get("structured") or {}, methods)
    lines += _pass_lines(summary.get("passes", {}), methods, summary["baseline"])
    if summary["notes"]:
        lines += [""] + [f"Note: {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _decode_lines(summary: dict, methods: list[str], categories: list[str]) -> list[str]:
    """The speedup after the first token, and the median time to it (long prompts: what the
    prefill hides)."""
    decode, totals = summary.get("decode_speedup") or {}, summary["methods"]
    if not decode:
        return []
    lines = [
        "",
        f"After the first token (decode tokens/s ratio vs `{summary['baseline']}`; the time to the "
        "first token, prefill included, is the median over turns):",
        "",
        "| method | " + " | ".join(categories) + " | first token s |",
        "|---|" + "---|" * (len(categories) + 1),
    ]
    for m in methods:
        cells = [f"{decode.get(m, {}).get(c, float('nan')):.2f}x" for c in categories]
        first = totals[m].get("median_first_token_s")
        cells.append("-" if first is None else f"{first:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _pass_lines(passes: dict, methods: list[str], baseline: str) -> list[str]:
    """A speedup (tau) column per repeat, when there was more than one."""
    repeats = sorted({rep for reps in passes.values() for rep in reps})
    if len(repeats) < 2:
        return []
    lines = [
        "",
        f"By pass over the prompts (speedup vs `{baseline}` of the same pass, tau in brackets; "
        "state "
        "learned in earlier passes is kept):",
        "",
        "| method | " + " | ".join(f"pass {rep + 1}" for rep in repeats) + " |",
        "|---|" + "---|" * len(repeats),
    ]
    for m in methods:
        cells = []
        for rep in repeats:
            cell = passes.get(m, {}).get(rep)
            tau = "" if cell is None or cell["tau"] is None else f" ({cell['tau']:.2f})"
            cells.append("-" if cell is None else f"{cell['speedup']:.2f}x{tau}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
