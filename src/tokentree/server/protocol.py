"""OpenAI request bodies (validated by pydantic, strictly: ``true`` or ``"3"`` is not an integer),
each turned into the one :class:`~tokentree.request.Request` by
:meth:`GenerationRequest.to_request`.

Every field OpenAI defines for these routes is either honoured or, when a request sets it to a
value that would change the output in a way tokentree does not provide, rejected with a 400 that
names it: nothing is silently ignored. ``null`` means the default, as in OpenAI's API. Fields
OpenAI does not define are ignored (clients send their own extensions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..constraints import Constraint, ConstraintError
from ..request import Request, RequestError
from ..toolcalls import (
    Tool,
    ToolError,
    call_constraint,
    chosen_tools,
    template_messages,
    tools_from_openai,
)
from .errors import APIError
from .limits import Limits

# the Request's field names as OpenAI's (or tokentree's extension's) bodies spell them
OPENAI_PARAMS = {
    "max_new_tokens": "max_tokens",
    "drafter": "tokentree.drafter",
    "budget": "tokentree.budget",
    "logprobs_mode": "tokentree.logprobs_mode",
}


def openai_param(field: str) -> str:
    return OPENAI_PARAMS.get(field, field)


CONSTRAINT_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_grammar")


def _constraint(field: str, value: Any) -> Constraint:
    """A :class:`Constraint` from one of CONSTRAINT_FIELDS (ConstraintError when invalid)."""
    if field == "guided_json":
        return Constraint.json_schema(value)
    if field == "guided_regex":
        return Constraint.regex(value)
    if field == "guided_grammar":
        return Constraint.grammar_text(value)
    kind = value.get("type")
    if kind == "json_object":
        return Constraint.json_object()
    if kind != "json_schema":
        raise ConstraintError(
            f"response_format type must be text, json_object or json_schema, got {kind!r}"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise ConstraintError("response_format.json_schema must be an object with a 'schema'")
    return Constraint.json_schema(spec.get("schema", {}), name=spec.get("name"))


def _valid_unicode(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (invalid Unicode)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
STRICT = ConfigDict(strict=True)


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[TextPart], None] = None  # None: an assistant's tool calls only
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: Text | None = None  # a tool message: the call it answers
    name: Text | None = None

    @model_validator(mode="after")
    def _content(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )

    def as_dict(self) -> dict:
        """The message as chat templates take it (tool calls' arguments as objects)."""
        message = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = template_messages([{"tool_calls": self.tool_calls}])[0][
                "tool_calls"
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool | None = None


class TokentreeOptions(BaseModel):
    """tokentree's own options, sent as ``extra_body={"tokentree": {...}}``."""

    model_config = ConfigDict(strict=True, extra="forbid")
    drafter: Text | None = None  # checked by the Request (one validator)
    budget: Union[int, Literal["auto"], None] = None
    logprobs_mode: Text | None = None  # raw_logprobs (default) or processed_logprobs


UNSUPPORTED = "is not supported by tokentree"


def _unsupported(request: BaseModel, rules: dict[str, Any]) -> None:
    """Raise for the first field set to a value other than those ``rules`` allows (None always
    is)."""
    for name, allowed in rules.items():
        value = getattr(request, name, None)
        if value is not None and not allowed(value):
            raise ValueError(f"{name} {UNSUPPORTED} (got {value!r})")


class GenerationRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = STRICT
    model: Text | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None = 1.0
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # vLLM-style extension
    min_p: float | None = Field(None, ge=0, lt=1)  # vLLM-style extension
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Union[Text, list[Text], None] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tokentree: TokentreeOptions | None = None
    user: Text | None = None  # accepted and unused, as OpenAI's abuse-monitoring id
    n: int | None = Field(
        None, ge=1, le=16
    )  # choices per request (more than 1 needs --max-batch > 1)
    # defined by OpenAI, honoured only at their neutral values:
    best_of: int | None = None
    logprobs: Union[bool, int, None] = None
    top_logprobs: int | None = None
    prompt_logprobs: int | None = Field(None, ge=0)  # vLLM's: K per prompt token (not streamed)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None  # vLLM-style
    logit_bias: dict[str, Any] | None = None
    # structured output: OpenAI's response_format, and vLLM's extra_body names
    response_format: dict[str, Any] | None = None
    guided_json: Union[dict[str, Any], Text, None] = None
    guided_regex: Text | None = None
    guided_grammar: Text | None = None

    @model_validator(mode="after")
    def _supported(self):
        _unsupported(
            self,
            {
                "best_of": lambda v: v == 1,
                "frequency_penalty": lambda v: v == 0,
                "presence_penalty": lambda v: v == 0,
                "repetition_penalty": lambda v: v == 1,
                "logit_bias": lambda v: not v,
            },
        )
        return self

    def logprobs_wanted(self) -> int | None:
        """How many top logprobs per token the body asks for (None: no logprobs). Completions:
        ``logprobs: K``; chat: ``logprobs: true`` with ``top_logprobs: K`` (0 when left out)."""
        if isinstance(self.logprobs, bool) or self.logprobs is None:
            if self.top_logprobs is not None and not self.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            return (self.top_logprobs or 0) if self.logprobs else None
        return self.logprobs

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def constraint(self) -> Constraint | None:
        """The output constraint the body asks for (at most one way), APIError 400 naming the
        field when it is invalid."""
        given = [name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None]
        if self.response_format is not None and self.response_format.get("type") == "text":
            given.remove("response_format")
        if len(given) > 1:
            raise APIError(400, f"give one of {' or '.join(given)}", param=given[1])
        if not given:
            return None
        try:
            return _constraint(given[0], getattr(self, given[0]))
        except ConstraintError as exc:
            raise APIError(400, str(exc), param=given[0]) from None

    def to_request(
        self, limits: Limits, prompt_tokens: int, param: str, tool_constraint=None
    ) -> Request:
        """The request this body asks for, within this server's ``limits`` (OpenAI's defaults for
        the fields left out); APIError 400 naming the field otherwise. ``param`` names the prompt's
        field."""
        limits.check_stops(self.stops)
        if self.prompt_logprobs is not None and self.stream:
            raise APIError(400, "prompt_logprobs come with the whole reply: leave out stream",
                           param="prompt_logprobs")  # fmt: skip
        extra = self.tokentree or TokentreeOptions()
        constraint = tool_constraint or self.constraint()
        try:
            return Request(
                max_new_tokens=limits.new_tokens_for(self.token_limit, prompt_tokens, param),
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=self.top_k or 0,
                min_p=self.min_p or 0.0,
                seed=self.seed,
                stop=tuple(self.stops),
                drafter=extra.drafter,
                budget=extra.budget,
                constraint=constraint,
                logprobs=self.logprobs_wanted(),
                prompt_logprobs=self.prompt_logprobs,
                logprobs_mode=extra.logprobs_mode or "raw_logprobs",
            )
        except RequestError as exc:
            raise APIError(400, str(exc), param=openai_param(exc.field)) from None


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    functions: list[Any] | None = None
    function_call: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_supported(self):
        _unsupported(
            self,
            {
                "functions": lambda v: not v,
                "function_call": lambda v: v in ("none", "auto"),
                "modalities": lambda v: v == ["text"],
                "audio": lambda v: False,
                "prediction": lambda v: False,
            },
        )
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def messages_as_dicts(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]

    def tool_plan(self, marker_tokens: bool) -> ToolPlan:
        """The tools to render, and the constraint ``tool_choice`` asks for; APIError 400 naming
        the field when a tool or the choice is malformed."""
        try:
            tools = tools_from_openai(self.tools or [])
            mode, chosen = chosen_tools(tools, self.tool_choice)
        except ToolError as exc:
            raise APIError(400, str(exc), param=exc.field) from None
        if mode == "required" and not tools:
            raise APIError(400, "tool_choice asks for a tool call, but no tools are given",
                           param="tool_choice")  # fmt: skip
        if mode == "none" or not tools:
            return ToolPlan((), None)
        if mode == "auto":
            return ToolPlan(tools, None)
        if self.constraint() is not None:
            raise APIError(
                400, "give tool_choice or response_format, not both", param="tool_choice"
            )
        parallel = self.parallel_tool_calls is not False
        return ToolPlan(tools, call_constraint(chosen, parallel, marker_tokens))


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request's tools mean for its generation: the tools rendered into the prompt
    (empty: none) and the constraint the tool choice imposes (None: free text, calls parsed)."""

    tools: tuple[Tool, ...]
    constraint: Constraint | None

    @property
    def rendered(self) -> list[dict] | None:
        return [tool.as_openai() for tool in self.tools] or None


class CompletionRequest(GenerationRequest):
    prompt: Union[Annotated[Text, Field(min_length=1)], Annotated[list[int], Field(min_length=1)]]
    echo: bool | None = None
    suffix: Text | None = None

    @model_validator(mode="after")
    def _completion_supported(self):
        _unsupported(self, {"echo": lambda v: not v, "suffix": lambda v: not v})
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens
