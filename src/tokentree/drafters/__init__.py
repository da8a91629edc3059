"""Drafters and their registry (name -> factory, options dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TokentreeError
from ..sampling import Draw
from .base import Drafter, NoDrafter
from .beam import BeamConfig, StochasticBeamDrafter
from .draft_trees import (
    ChainConfig,
    ChainDrafter,
    DySpecConfig,
    DySpecDrafter,
    RSDCConfig,
    SequoiaConfig,
    SequoiaDrafter,
    SpecInferConfig,
    WidthsDrafter,
)
from .eagle import EagleConfig, EagleDrafter, has_default_head
from .hybrid import HybridConfig, HybridDrafter
from .lookahead import LookaheadConfig, LookaheadDrafter
from .pld import PLDConfig, PromptLookupDrafter
from .recycling import RecyclingConfig, RecyclingDrafter
from .stand import StandConfig, StandDrafter
from .suffix import SuffixConfig, SuffixDrafter


@dataclass
class AutoConfig:
    """The ``auto`` drafter (CLI flags ``--auto-<field>``)."""

    sources: str = "stand,pld"  # the model-free sources, cheapest first
    draft_source: str = (
        "chain"  # the draft-model drafter joined when a draft model is loaded (the cheapest call)
    )
    # skip the draft model when the model-free sources promise this many accepted tokens
    skip_above: float = 2.0
    # join eagle when the target (transformers) has a trained default head; off by default: the
    # head trained here made auto slower on Spec-Bench (1.38x HF against 1.54x without it)
    head: bool = False

    def __post_init__(self) -> None:
        names = [n.strip() for n in self.sources.split(",") if n.strip()]
        allowed = MODEL_FREE + TARGET_READERS
        if not names or len(set(names)) != len(names) or any(n not in allowed for n in names):
            raise ValueError(
                f"sources must be distinct drafters that need no draft model "
                f"({', '.join(allowed)}), "
                f"got '{self.sources}'"
            )
        if self.draft_source not in ("chain", "specinfer", "rsd-c", "rsd-s", "sequoia", "dyspec"):
            raise ValueError(
                f"draft_source must be a draft-model drafter, got '{self.draft_source}'"
            )
        if self.skip_above < 0:
            raise ValueError(f"skip_above must be >= 0, got {self.skip_above}")


@dataclass(frozen=True)
class DrafterSpec:
    """How to build a drafter: ``build(config)``, or ``build(config, draft_model)`` when
    ``needs_draft``.

    ``config_cls`` is None for option-less drafters.
    """

    build: Callable[..., Drafter]
    config_cls: type | None = None
    defaults: tuple[tuple[str, Any], ...] = ()
    help: str = ""
    needs_draft: bool = False  # build(config, draft_model) with a model, or an error without one
    uses_draft: bool = False  # build(config, draft_model, target_model), either may be None
    reads_target: bool = False  # build(config, target_model): it reads the target's features


DRAFTERS: dict[str, DrafterSpec] = {
    "none": DrafterSpec(lambda _: NoDrafter(), help="plain decoding through the same engine"),
    "pld": DrafterSpec(
        PromptLookupDrafter, PLDConfig, help="prompt lookup: a chain after the latest n-gram match"
    ),
    "pld-tree": DrafterSpec(
        PromptLookupDrafter,
        PLDConfig,
        (("matches", 4),),
        help="prompt lookup merging several matches into a tree",
    ),
    "lookahead": DrafterSpec(
        LookaheadDrafter, LookaheadConfig, help="tries of earlier token windows (Lookahead)"
    ),
    "recycling": DrafterSpec(
        RecyclingDrafter, RecyclingConfig, help="the target's recycled top-k successors"
    ),
    "stand": DrafterSpec(
        StandDrafter, StandConfig, help="n-gram table of the target's distributions (STAND)"
    ),
    "suffix": DrafterSpec(
        SuffixDrafter,
        SuffixConfig,
        help="longest suffix match in tries of this request and of past "
        "responses, depth adaptive to the match (SuffixDecoding)",
    ),
    "chain": DrafterSpec(
        ChainDrafter,
        ChainConfig,
        help="draft-model chain, adaptive length, confidence stop",
        needs_draft=True,
    ),
    "specinfer": DrafterSpec(
        lambda c, m: WidthsDrafter(c, m, "specinfer", Draw.IID),
        SpecInferConfig,
        help="draft-model tree, per-depth widths, i.i.d. children (SpecInfer)",
        needs_draft=True,
    ),
    "rsd-c": DrafterSpec(
        lambda c, m: WidthsDrafter(c, m, "rsd-c", Draw.WITHOUT_REPLACEMENT),
        RSDCConfig,
        (("widths", "3,2,1,1"),),
        help="draft-model tree, per-depth branching, children without replacement (RSD-C)",
        needs_draft=True,
    ),
    "rsd-s": DrafterSpec(
        StochasticBeamDrafter,
        BeamConfig,
        help="draft-model tree from stochastic beam search, siblings without replacement (RSD-S)",
        needs_draft=True,
    ),
    "sequoia": DrafterSpec(
        SequoiaDrafter,
        SequoiaConfig,
        help="draft-model tree, Sequoia's optimal static shape",
        needs_draft=True,
    ),
    "dyspec": DrafterSpec(
        DySpecDrafter,
        DySpecConfig,
        help="draft-model tree grown best-first by path probability (DySpec)",
        needs_draft=True,
    ),
    "hybrid": DrafterSpec(
        lambda c, m, t: HybridDrafter(c, lambda name: make_drafter(name, m, target_model=t)),
        HybridConfig,
        help="several drafters merged into one tree, ranked by calibrated acceptance",
        uses_draft=True,
    ),
    "auto": DrafterSpec(
        lambda c, m, t: _auto(c, m, t),
        AutoConfig,
        uses_draft=True,
        help="hybrid of model-free sources (--auto-sources, default stand,pld; --auto-head true "
        "adds the target's trained head) and the draft model when one is loaded, tree size "
        "planned per step",
    ),
    "eagle": DrafterSpec(
        EagleDrafter,
        EagleConfig,
        (("rounds", 6),),
        help="a trained feature head on the target's own features (tokentree train-head), "
        "tree grown best-first by path probability (EAGLE-2)",
        reads_target=True,
    ),
}


MODEL_FREE = ("stand", "pld", "pld-tree", "lookahead", "suffix", "recycling")
TARGET_READERS = ("eagle",)  # drafters on the target's own features (a trained head)


def _auto(config: "AutoConfig", draft_model: Any, target_model: Any) -> Drafter:
    sources = config.sources + (f",{config.draft_source}" if draft_model is not None else "")
    named = [n.strip() for n in config.sources.split(",")]
    if config.head and "eagle" not in named and has_default_head(target_model):
        sources += ",eagle"
    hybrid = HybridConfig(sources=sources, skip_above=config.skip_above)
    return HybridDrafter(
        hybrid,
        lambda name: make_drafter(name, draft_model, target_model=target_model),
        name="auto",
        default_budget="auto",
    )


def drafter_config(name: str, **options: Any) -> Any:
    """The validated config of drafter ``name`` (None for option-less drafters); raises
    TokentreeError."""
    if name not in DRAFTERS:
        raise TokentreeError(f"unknown drafter '{name}': choose one of {', '.join(DRAFTERS)}")
    spec = DRAFTERS[name]
    if spec.config_cls is None:
        if options:
            raise TokentreeError(f"drafter '{name}' takes no options, got {', '.join(options)}")
        return None
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = set(options) - fields
    if unknown:
        raise TokentreeError(
            f"drafter '{name}' has no option(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(fields))}"
        )
    try:
        return spec.config_cls(**{**dict(spec.defaults), **options})
    except (TypeError, ValueError) as exc:
        raise TokentreeError(f"drafter '{name}': {exc}") from exc


def make_drafter(
    name: str, draft_model: Any = None, target_model: Any = None, **options: Any
) -> Drafter:
    """Build the drafter ``name``; ``options`` are fields of its config dataclass.

    ``draft_model`` (a transformers causal LM sharing the target's vocabulary) is required by the
    draft-model drafters and ignored by the others; ``target_model`` (the target's transformers
    module) by the drafters that read its features (``eagle``).
    """
    config = drafter_config(name, **options)
    spec = DRAFTERS[name]
    if spec.uses_draft:
        return spec.build(config, draft_model, target_model)
    if spec.reads_target:
        if target_model is None:
            raise TokentreeError(f"drafter '{name}' reads the target's features: pass target_model")
        return spec.build(config, target_model)
    if not spec.needs_draft:
        return spec.build(config)
    if draft_model is None:
        raise TokentreeError(
            f"drafter '{name}' needs a draft model (--draft, or the embedded pair)"
        )
    return spec.build(config, draft_model)


__all__ = [
    "AutoConfig",
    "BeamConfig",
    "StochasticBeamDrafter",
    "HybridConfig",
    "HybridDrafter",
    "drafter_config",
    "ChainConfig",
    "DySpecConfig",
    "EagleConfig",
    "EagleDrafter",
    "SequoiaConfig",
    "SpecInferConfig",
    "RSDCConfig",
    "DRAFTERS",
    "Drafter",
    "DrafterSpec",
    "LookaheadConfig",
    "LookaheadDrafter",
    "NoDrafter",
    "PLDConfig",
    "PromptLookupDrafter",
    "RecyclingConfig",
    "RecyclingDrafter",
    "StandConfig",
    "StandDrafter",
    "SuffixConfig",
    "SuffixDrafter",
    "make_drafter",
]
