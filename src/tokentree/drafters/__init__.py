"""Drafters and their registry (name -> factory, options dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TokentreeError
from .base import Drafter, NoDrafter
from .lookahead import LookaheadConfig, LookaheadDrafter
from .pld import PLDConfig, PromptLookupDrafter
from .recycling import RecyclingConfig, RecyclingDrafter
from .stand import StandConfig, StandDrafter


@dataclass(frozen=True)
class DrafterSpec:
    """How to build a drafter: ``build(config)``; ``config_cls`` is None for option-less drafters."""

    build: Callable[[Any], Drafter]
    config_cls: type | None = None
    defaults: tuple[tuple[str, Any], ...] = ()
    help: str = ""


DRAFTERS: dict[str, DrafterSpec] = {
    "none": DrafterSpec(lambda _: NoDrafter(), help="plain decoding through the same engine"),
    "pld": DrafterSpec(PromptLookupDrafter, PLDConfig, help="prompt lookup: a chain after the latest n-gram match"),
    "pld-tree": DrafterSpec(
        PromptLookupDrafter, PLDConfig, (("matches", 4),), help="prompt lookup merging several matches into a tree"
    ),
    "lookahead": DrafterSpec(LookaheadDrafter, LookaheadConfig, help="tries of earlier token windows (Lookahead)"),
    "recycling": DrafterSpec(RecyclingDrafter, RecyclingConfig, help="the target's recycled top-k successors"),
    "stand": DrafterSpec(StandDrafter, StandConfig, help="n-gram table of the target's distributions (STAND)"),
}


def make_drafter(name: str, **options: Any) -> Drafter:
    """Build the drafter ``name``; ``options`` are fields of its config dataclass."""
    if name not in DRAFTERS:
        raise TokentreeError(f"unknown drafter '{name}': choose one of {', '.join(DRAFTERS)}")
    spec = DRAFTERS[name]
    if spec.config_cls is None:
        if options:
            raise TokentreeError(f"drafter '{name}' takes no options, got {', '.join(options)}")
        return spec.build(None)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = set(options) - fields
    if unknown:
        raise TokentreeError(f"drafter '{name}' has no option(s) {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(sorted(fields))}")
    try:
        config = spec.config_cls(**{**dict(spec.defaults), **options})
    except (TypeError, ValueError) as exc:
        raise TokentreeError(f"drafter '{name}': {exc}") from exc
    return spec.build(config)


__all__ = ["DRAFTERS", "Drafter", "DrafterSpec", "LookaheadConfig", "LookaheadDrafter", "NoDrafter", "PLDConfig",
           "PromptLookupDrafter", "RecyclingConfig", "RecyclingDrafter", "StandConfig", "StandDrafter", "make_drafter"]
