"""``tokentree rollout``: a tree of sampled trajectories of one prompt, as JSON (and a picture)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .flags import request_flags, request_from_args
from .model_flags import add_model_arguments, load_from_args

POLICIES = ("independent", "segments", "uncertain")
REQUEST_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                 "budget", "drafter", "logprobs_mode")  # fmt: skip


def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "rollout", help="sample a tree of trajectories of one prompt (RL rollouts, best-of-N)"
    )
    cmd.add_argument("prompt", help="the prompt (chat template applied when the model has one)")
    add_model_arguments(cmd)
    request_flags(cmd.add_argument_group("request"), names=REQUEST_FLAGS)
    cmd.set_defaults(temperature=1.0)
    policy = cmd.add_argument_group("policy")
    policy.add_argument("--policy", choices=POLICIES, default="segments")
    policy.add_argument("--n", type=int, default=16, help="independent: trajectories")
    policy.add_argument("--width", type=int, default=2, help="segments: children per fork")
    policy.add_argument("--segment-tokens", type=int, default=32, help="segments: tokens each")
    policy.add_argument("--depth", type=int, default=3, help="segments: forks along a path")
    policy.add_argument("--max-leaves", type=int, default=16, help="segments, uncertain: leaves")
    uncertain = {
        "--threshold": (float, 0.2, "fork where p(top-1) - p(top-2) is below this"),
        "--fork-top-k": (int, 2, "children per fork, starting with distinct tokens"),
        "--lookahead": (int, 8, "tokens a new branch runs before it is compared or forks"),
        "--prune-similar": (_share, 0.9, "prune an alternative this similar to a sibling ('off')"),
    }
    for flag, (kind, default, text) in uncertain.items():
        policy.add_argument(flag, type=kind, default=default, help=f"uncertain: {text}")
    policy.add_argument("--roots", type=int, default=1, help="uncertain: branches at the start")
    cmd.add_argument("--out", help="write the tree as JSON here (default: stdout)")
    cmd.add_argument("--plot", metavar="PNG", help="draw the tree of segments")
    cmd.set_defaults(run=run)


def _share(text: str) -> float | None:
    return None if text == "off" else float(text)


def policy_from_args(args: argparse.Namespace):
    from ..api import Independent, Segments, Uncertain

    if args.policy == "independent":
        return Independent(args.n)
    if args.policy == "uncertain":
        return Uncertain(args.threshold, args.fork_top_k, args.lookahead, args.max_leaves,
                         args.prune_similar, args.roots)  # fmt: skip
    return Segments(args.width, args.segment_tokens, args.depth, args.max_leaves)


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args, REQUEST_FLAGS)  # checked before minutes of loading
    policy = policy_from_args(args)
    gen = load_from_args(args, args.drafter or "auto", args.draft, None, None)
    tree = gen.rollouts(args.prompt, policy, request)
    body = tree.to_dict() | {"texts": [gen.tokenizer.decode(t.completion_ids)
                                       for t in tree.trajectories]}  # fmt: skip
    text = json.dumps(body)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.plot:
        from ..rollout_plot import plot_rollout

        plot_rollout(tree, args.plot)
    print(
        f"tokentree: {len(tree.trajectories)} trajectories, {tree.new_tokens} tokens generated "
        f"in {tree.forwards} forwards, {tree.wall_s:.2f} s",
        file=sys.stderr,
    )
    return 0
