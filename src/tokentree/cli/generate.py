"""``tokentree generate``: one prompt, streamed to stdout."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import TokentreeError
from .flags import (
    constraint_flags,
    constraint_from_args,
    drafter_flags,
    drafter_options,
    request_flags,
    request_from_args,
)
from .model_flags import add_model_arguments, load_from_args


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate text for one prompt, streamed to stdout")
    gen.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    gen.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the chat template (default: on when the tokenizer has one)",
    )
    add_model_arguments(gen)
    request_flags(gen.add_argument_group("request"), names=REQUEST_FLAGS)
    constraint_flags(gen)
    gen.add_argument(
        "--stats", action="store_true", help="print tau, tokens/s and step counts to stderr"
    )
    gen.add_argument(
        "--json", action="store_true", help="print one JSON object instead of streaming text"
    )
    gen.add_argument(
        "--show-trees",
        action="store_true",
        help="draw each step's verified tree on stderr: tokens as text, the accepted path "
        "marked, each node's drafter, the planner's cut",
    )
    drafter_flags(gen, "the drafter")
    gen.set_defaults(run=run)


# the request's fields with flags of their type: the drafter is --drafter (with its options'
# flags), the constraint one of constraint_flags
REQUEST_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                  "budget", "logprobs", "logprobs_mode", "prompt_logprobs")  # fmt: skip


def read_prompt(prompt: str | None) -> str:
    if prompt is not None:
        return prompt
    if sys.stdin.isatty():
        raise TokentreeError("no prompt: give PROMPT or pipe it on stdin")
    text = sys.stdin.read()
    if not text.strip():
        raise TokentreeError("the prompt read from stdin is empty")
    return text


def _tree_printer(gen, args: argparse.Namespace):
    """--show-trees: each step's tree on stderr (between the streamed pieces of text)."""
    if not args.show_trees:
        return None
    from ..show import render_step

    def show(trace) -> None:
        print("\n" + render_step(trace, gen.tokenizer.decode), file=sys.stderr, flush=True)

    return show


def _logprob_json(gen, entry) -> dict:
    """One token's logprobs for ``--json``, each token with its text."""
    top = [{"token": t, "text": gen.tokenizer.decode([t]), "logprob": lp} for t, lp in entry.top]
    text = gen.tokenizer.decode([entry.token])
    body = {"token": entry.token, "text": text, "logprob": entry.logprob, "top": top}
    return body if entry.rank is None else body | {"rank": entry.rank}


def _prompt_summary(entries) -> str:
    """The prompt's mean log-probability per token and its perplexity, for stderr."""
    scored = [e.logprob for e in entries[1:]]
    mean = sum(scored) / max(1, len(scored))
    return f"tokentree: prompt: {len(scored)} tokens scored, mean logprob {mean:.4f}, " + (
        f"perplexity {math.exp(-mean):.3f}"
    )


def _logprob_line(gen, entry) -> str:
    """One token's logprobs on stderr: its text, log-probability and the best at its position."""
    others = "  ".join(f"{gen.tokenizer.decode([t])!r} {lp:.3f}" for t, lp in entry.top)
    return f"{gen.tokenizer.decode([entry.token])!r:>16} {entry.logprob:8.4f}  {others}"


def run(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    request = request_from_args(args, REQUEST_FLAGS)  # checked before minutes of loading
    request = request.replace(constraint=constraint_from_args(args))
    options = drafter_options(args)
    gen = load_from_args(args, args.drafter, args.draft, None, args.drafter_state, **options)
    stream = gen.stream(prompt, request, chat=args.chat, on_step=_tree_printer(gen, args))
    for piece in stream:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    logprobs, prompt_entries = stream.logprobs, stream.stats.prompt_logprobs
    if args.json:
        body = {"text": stream.text, "token_ids": stream.token_ids}
        if logprobs is not None:
            body["logprobs"] = [_logprob_json(gen, entry) for entry in logprobs]
        if prompt_entries is not None:
            body["prompt_logprobs"] = [None] + [_logprob_json(gen, e) for e in prompt_entries[1:]]
        print(json.dumps(body | {"stats": stream.stats.to_dict()}))
    else:
        print()
        for entry in logprobs or []:
            print(_logprob_line(gen, entry), file=sys.stderr)
        if prompt_entries is not None:
            print(_prompt_summary(prompt_entries), file=sys.stderr)
    if args.drafter_state:
        gen.save_drafter_state(args.drafter_state)
    if args.stats:
        print(f"tokentree [{gen.drafter.name}]: {stream.stats.summary()}", file=sys.stderr)
        target = gen.target
        print(f"tokentree: {target.engine} ran the target ({target.why})", file=sys.stderr)
    return 0
