"""``tokentree serve``: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse

from ..cluster.config import ClusterConfig
from ..errors import TokentreeError
from ..server.config import ServeConfig
from .flags import config_flags, config_from_args, drafter_flags, drafter_options, request_flags
from .model_flags import add_model_arguments, load_from_args


def add_parser(sub) -> None:
    serve = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (chat and text completions, streaming)"
    )
    add_model_arguments(serve)
    request_flags(serve, names=("budget",))  # the default of requests that give none
    config_flags(serve.add_argument_group("server"), ServeConfig)
    config_flags(
        serve.add_argument_group("replicas (Ray Serve: pip install 'tokentree[cluster]')"),
        ClusterConfig,
    )
    drafter_flags(serve, "the default drafter")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..server.run import serve
    from ..server.state_keeper import prepare_state_file

    config = config_from_args(ServeConfig, args)
    cluster = config_from_args(ClusterConfig, args)
    if args.static_cache and config.max_batch > 1:
        raise TokentreeError("--static-cache decodes one sequence at a time: use --max-batch 1")
    if cluster.clustered:
        from ..cluster.run import serve_cluster

        serve_cluster(args, config, cluster)  # each replica loads the model itself
        return 0
    if args.drafter_state:
        prepare_state_file(args.drafter_state)  # before minutes of loading: writable, no leftovers
    gen = load_from_args(
        args, args.drafter, args.draft, args.budget, args.drafter_state, **drafter_options(args)
    )
    serve(gen, config, args.drafter_state)  # saves the state periodically and at shutdown
    return 0
