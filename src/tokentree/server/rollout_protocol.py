"""The body of ``POST /v1/rollouts`` (tokentree's extension): a prompt or chat messages, the
sampling fields of a completion, and a rollout ``policy`` ({"type": "segments", "width": 2, ...},
the fields of :mod:`tokentree.api.rollout_policies`' dataclasses, which validate them)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Union

from pydantic import Field, model_validator

from ..api.rollout_policies import Independent, Policy, Segments, Uncertain
from ..errors import TokentreeError
from .errors import APIError
from .protocol import GenerationRequest, Message, Text, _unsupported

POLICY_TYPES = {"independent": Independent, "segments": Segments, "uncertain": Uncertain}


def policy_from_body(spec: dict[str, Any]) -> Policy:
    """The policy ``spec`` describes; APIError 400 naming the field otherwise."""
    kind = spec.get("type")
    if kind not in POLICY_TYPES:
        raise APIError(400, f"policy.type must be one of {', '.join(POLICY_TYPES)}, got {kind!r}",
                       param="policy.type")  # fmt: skip
    cls = POLICY_TYPES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    options = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise APIError(400, f"a {kind} policy has no field '{unknown[0]}': its fields are "
                       f"{', '.join(sorted(fields))}", param=f"policy.{unknown[0]}")  # fmt: skip
    try:
        return cls(**options)
    except (TokentreeError, TypeError) as exc:  # TypeError: a missing field or a wrong type
        raise APIError(400, f"policy: {exc}", param="policy") from None


class RolloutRequest(GenerationRequest):
    """A tree of sampled trajectories of one prompt; every token comes with its logprob (in
    ``tokentree.logprobs_mode``)."""

    prompt: Union[Annotated[Text, Field(min_length=1)], Annotated[list[int], Field(min_length=1)],
                  None] = None  # fmt: skip
    messages: list[Message] | None = Field(None, min_length=1)
    policy: dict[str, Any]

    @model_validator(mode="after")
    def _rollout_supported(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        _unsupported(
            self,
            {
                "stream": lambda v: not v,  # the tree comes whole
                "n": lambda v: v == 1,  # the policy says how many trajectories
                "logprobs": lambda v: False,  # every token's logprob is in the tree
                "top_logprobs": lambda v: False,
            },
        )
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    def rollout_policy(self) -> Policy:
        return policy_from_body(self.policy)
