"""``tokentree profile``: the target's verify latency t(n), the curve ``--budget auto`` plans
with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model_flags import add_model_arguments, load_from_args


def add_parser(sub) -> None:
    profile = sub.add_parser(
        "profile", help="measure the target's verify latency t(n) (used by --budget auto)"
    )
    add_model_arguments(profile)
    profile.add_argument("--plot", metavar="PNG", help="also save the curve as a PNG plot")
    profile.add_argument(
        "--compare",
        metavar="GGUF",
        action="append",
        default=[],
        help="also measure this GGUF file (repeatable; e.g. the target in other formats, see "
        "tokentree quantize), side by side",
    )
    profile.add_argument(
        "--chain", action="store_true", help="also measure single chains (trees are the default)"
    )
    profile.add_argument(
        "--long-contexts",
        type=context_lengths,
        default=(),
        metavar="N,N,...",
        help="also measure after these many cached tokens (e.g. 4096,8192,16384): the planner "
        "then prices trees at the context a request has reached (default: 256 only)",
    )
    profile.set_defaults(run=run)


def context_lengths(text: str) -> tuple[int, ...]:
    from ..planner import PROFILE_CONTEXT

    try:
        lengths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got '{text}'")
    if list(lengths) != sorted(set(lengths)) or lengths[0] <= PROFILE_CONTEXT:
        raise argparse.ArgumentTypeError(
            f"context lengths must be ascending and above {PROFILE_CONTEXT}, got '{text}'"
        )
    return lengths


def run(args: argparse.Namespace) -> int:
    from ..planner import measure_profile

    columns = []  # (label, profile)
    for index, target in enumerate([args.target] + list(args.compare)):
        if index:  # a --compare file: a GGUF on llama.cpp, the other flags as given
            args.target, args.backend = target, "llamacpp"
        gen = load_from_args(args, "none")
        name = gen.target.source if target is None else Path(target).name
        print(
            f"measuring verify latency of {name} "
            f"({gen.target.precision}, {gen.target.device_name})",
            file=sys.stderr,
        )
        progress = lambda n, c, s: print(  # noqa: E731
            f"  context {c:<6d} n={n:<4d} {s * 1000:8.1f} ms", file=sys.stderr
        )
        profile = gen.cost_profile(refresh=True, progress=progress, longer=args.long_contexts)
        columns.append((name, profile))
        if args.chain:
            columns.append(
                (f"{name} (chains)", measure_profile(gen.backend, progress=progress, chain=True))
            )
    print(
        "t(n) / t(1): verify time of an n-node tree over one token's (context "
        f"{columns[0][1].context_len} tokens)"
    )
    print("| n | " + " | ".join(label for label, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    print("| t(1) ms | " + " | ".join(f"{p.seconds[0] * 1000:.1f}" for _, p in columns) + " |")
    for n in columns[0][1].sizes[1:]:
        print(f"| {n} | " + " | ".join(f"{p.ratio(n):.2f}" for _, p in columns) + " |")
    if columns[0][1].longer:
        _print_context_table(columns[0][1])
    if args.plot:
        from ..planner.plot import plot_profile

        plot_profile(columns[0][1], args.plot)
    return 0


def _print_context_table(profile) -> None:
    """t(n) in ms at each measured context (the sizes measured at every one)."""
    curves = (profile, *profile.longer)
    print("\nt(n) ms by context (cached tokens)")
    print("| n | " + " | ".join(str(p.context_len) for p in curves) + " |")
    print("|---|" + "---|" * len(curves))
    for n in profile.longer[0].sizes:
        times = (p.seconds_at(n, p.context_len) for p in curves)
        print(f"| {n} | " + " | ".join(f"{t * 1000:.0f}" for t in times) + " |")
