"""Command line: ``tokentree generate ...``. One module per subcommand, each with ``add_parser``
and ``run``; no algorithm lives here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import TokentreeError
from . import bench, generate, profile, rollout, serve, tools
from .flags import drafter_options  # noqa: F401 - public: the drafter options given as flags

SUBCOMMANDS = (
    generate.add_parser,
    bench.add_parser,
    serve.add_parser,
    tools.add_calibrate,
    tools.add_quantize,
    tools.add_train_head,
    profile.add_parser,
    rollout.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentree", description="Lossless token-tree speculative decoding"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return args.run(args)
    except TokentreeError as exc:
        print(f"tokentree: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokentree: interrupted", file=sys.stderr)
        return 130
