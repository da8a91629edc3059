"""``eagle``: trees drafted by a trained feature head from the target's own features (see
:mod:`tokentree.head`), grown best-first by path probability as EAGLE-2 and DySpec do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import TokentreeError
from ..sampling import Draft
from ..tree import TokenTree
from .draft_trees import DySpecConfig, DySpecDrafter
from .model import DraftModel


def has_default_head(target_model) -> bool:
    """Whether ``target_model`` (a transformers module) has a head where train-head puts it."""
    from ..head import default_head_dir
    from ..head.model import CONFIG

    if not isinstance(target_model, torch.nn.Module):
        return False
    return (default_head_dir(target_model) / CONFIG).is_file()


@dataclass
class EagleConfig(DySpecConfig):
    """The head drafter (CLI flags ``--eagle-<field>``); rounds = the tree's depth."""

    head: str = ""  # a directory from 'tokentree train-head' (empty: the target's default head)


class EagleDrafter(DySpecDrafter):
    """DySpec's best-n tree over a :class:`~tokentree.head.HeadBackend`: each round steps the head
    once for the frontier; a head step costs a few percent of a target forward."""

    name = "eagle"

    def __init__(self, config: EagleConfig, target_model: torch.nn.Module):
        from ..head import FeatureTap, HeadBackend, default_head_dir, load_head

        if not isinstance(target_model, torch.nn.Module):
            raise TokentreeError(
                "drafter 'eagle' reads the target's features: it needs the transformers backend "
                "(--backend hf)"
            )
        head = load_head(config.head or default_head_dir(target_model)).attach(target_model)
        self.config = config
        self.model = DraftModel(HeadBackend(head, FeatureTap(target_model)))

    def _grow(self, context: Sequence[int], budget, params, generator) -> Draft:
        backend = self.model.backend
        backend.prefill(context[:-1])
        if not backend.ready:  # the prompt's last token was not forwarded yet: one plain step
            return Draft(TokenTree.root(int(context[-1])))
        return super()._grow(context, budget, params, generator)
