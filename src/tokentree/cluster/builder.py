"""The application builder Ray Serve's config files name (``import_path:
tokentree.cluster.builder:app_builder``, as a KubeRay ``RayService`` does): its ``flags`` are
``tokentree serve``'s own flags, parsed by the same parser, so a cluster and the CLI take one set of
options (see deploy/kuberay-rayservice.yaml)."""

from __future__ import annotations

import argparse
import shlex

from ..cli.flags import config_from_args
from ..server.config import ServeConfig
from .config import ClusterConfig


def serve_parser() -> argparse.ArgumentParser:
    from ..cli.serve import add_parser

    parser = argparse.ArgumentParser(prog="tokentree")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def app_builder(options: dict):
    """The bound application for ``options["flags"]`` (a string of ``tokentree serve`` flags)."""
    from .deployment import build_app

    args = serve_parser().parse_args(["serve", *shlex.split(options.get("flags", ""))])
    config, cluster = config_from_args(ServeConfig, args), config_from_args(ClusterConfig, args)
    return build_app(args, config, cluster)
