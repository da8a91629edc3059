"""Flags generated from dataclasses (the request, the drafter configs, the server's and tools'
configs), the model flags every model command shares, and the argument types."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from ..constraints import Constraint
from ..drafters import DRAFTERS
from ..errors import TokentreeError
from ..request import Request


def boolean(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "on": True}
    words |= {"false": False, "no": False, "0": False, "off": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return words[text.lower()]


def budget(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens or 'auto', got '{text}'"
        ) from None


def csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _flag_type(hint: Any) -> Any:
    """The argparse type of a dataclass field's type hint (Optional[X] -> X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if str in args and int in args:
            return budget
        hint = args[0] if args else hint
    return boolean if hint is bool else hint


def request_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """One flag per field of :class:`~tokentree.request.Request` (``names``: only these), with
    the field's default and help: ``--max-new-tokens``, ``--temperature``, ``--stop`` (repeat
    it), ..."""
    hints = typing.get_type_hints(Request)
    for field in dataclasses.fields(Request):
        if names is not None and field.name not in names:
            continue
        flag = f"--{field.name.replace('_', '-')}"
        text = field.metadata.get("help", "")
        if typing.get_origin(hints[field.name]) is tuple:
            parser.add_argument(flag, action="append", default=[], help=text)
        else:
            kind = _flag_type(hints[field.name])
            parser.add_argument(flag, type=kind, default=field.default, help=text)


def request_from_args(args: argparse.Namespace, names: Iterable[str] | None = None) -> Request:
    """The request the flags of :func:`request_flags` (``names``: only these) give."""
    wanted = set(names) if names is not None else {f.name for f in dataclasses.fields(Request)}
    return Request(**{name: getattr(args, name) for name in wanted if hasattr(args, name)})


def constraint_flags(parser: argparse.ArgumentParser) -> None:
    """--json-schema FILE, --json-object, --regex PATTERN, --grammar FILE (one at most)."""
    group = parser.add_argument_group("constrained output (one of)")
    group.add_argument("--json-schema", metavar="FILE", help="output JSON valid under this schema")
    group.add_argument("--json-object", action="store_true", help="output any JSON object")
    group.add_argument("--regex", metavar="PATTERN", help="output text matching this regex")
    group.add_argument(
        "--grammar", metavar="FILE", help="output text of this grammar (GBNF or Lark, by content)"
    )


def constraint_from_args(args: argparse.Namespace) -> Constraint | None:
    """The constraint the flags of :func:`constraint_flags` give (ConstraintError when invalid)."""
    given = [n for n in ("json_schema", "json_object", "regex", "grammar") if getattr(args, n)]
    if len(given) > 1:
        flags = " and ".join("--" + n.replace("_", "-") for n in given)
        raise TokentreeError(f"give one constraint, not {flags}")
    if not given:
        return None
    if args.json_object:
        return Constraint.json_object()
    if args.regex:
        return Constraint.regex(args.regex)
    path = Path(args.json_schema or args.grammar)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TokentreeError(f"cannot read {path}: {exc.strerror}") from None
    return Constraint.json_schema(text) if args.json_schema else Constraint.grammar_text(text)


def _drafter_flag(config_cls: type, field_name: str) -> str:
    prefix = config_cls.__name__.removesuffix("Config").lower()
    return f"--{prefix}-{field_name.replace('_', '-')}"


def drafter_option_groups(parser: argparse.ArgumentParser) -> None:
    """One flag per field of every drafter config dataclass, e.g. ``--pld-max-ngram``."""
    seen: set[type] = set()
    for spec in DRAFTERS.values():
        if spec.config_cls is None or spec.config_cls in seen:
            continue
        seen.add(spec.config_cls)
        users = ", ".join(n for n, s in DRAFTERS.items() if s.config_cls is spec.config_cls)
        group = parser.add_argument_group(f"options of drafter {users}")
        hints = typing.get_type_hints(spec.config_cls)
        for field in dataclasses.fields(spec.config_cls):
            group.add_argument(
                _drafter_flag(spec.config_cls, field.name),
                type=boolean if hints[field.name] is bool else hints[field.name],
                default=None,
                metavar=field.name.upper(),
                help=f"default {field.default}",
            )


def drafter_options(args: argparse.Namespace) -> dict[str, Any]:
    """The drafter options given on the command line, for the chosen drafter's config."""
    config_cls = DRAFTERS[args.drafter].config_cls if args.drafter in DRAFTERS else None
    options = {}
    for spec in DRAFTERS.values():
        if spec.config_cls is None:
            continue
        for field in dataclasses.fields(spec.config_cls):
            flag = _drafter_flag(spec.config_cls, field.name)
            value = getattr(args, flag[2:].replace("-", "_"))
            if value is None:
                continue
            if spec.config_cls is not config_cls:
                raise TokentreeError(f"{flag} does not apply to drafter '{args.drafter}'")
            options[field.name] = value
    return options


def config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--field-name`` flag per field of ``config_cls`` (defaults from the dataclass)."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=boolean if kind is bool else kind,
            default=field.default,
            help=f"default {field.default}",
        )


def config_from_args(config_cls: type, args: argparse.Namespace):
    """``config_cls`` with each field from the flag of :func:`config_flags`."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def drafter_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--drafter`` (the generator's drafter, with its options' flags) and ``--drafter-state``."""
    parser.add_argument(
        "--drafter",
        default="auto",
        help=f"{what}: one of {', '.join(DRAFTERS)} (default auto: stand + pld merged, plus the "
        "--draft model when given, tree size planned per step)",
    )
    parser.add_argument(
        "--drafter-state",
        metavar="PATH",
        help="learned drafter state (lookahead, recycling, stand): loaded when it exists, saved "
        "after (serve: periodically and at shutdown)",
    )
    drafter_option_groups(parser)
