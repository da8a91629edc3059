"""OpenAI request bodies (validated by pydantic) and the OpenAI error shape."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class TokentreeOptions(BaseModel):
    """tokentree's own options, sent as ``extra_body={"tokentree": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    drafter: str | None = None
    budget: Union[int, Literal["auto"], None] = None

    @field_validator("budget")
    @classmethod
    def _budget(cls, budget):
        if isinstance(budget, int) and not 0 <= budget <= 256:
            raise ValueError("budget must be in [0, 256] or 'auto'")
        return budget


class GenerationRequest(BaseModel):
    """Fields shared by chat and text completions (unknown OpenAI fields are ignored)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM-style extension
    min_p: float = Field(0.0, ge=0, lt=1)  # vLLM-style extension
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    tokentree: TokentreeOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("give at most 16 non-empty stop strings")
        return stops

    @model_validator(mode="after")
    def _supported(self):
        if self.n != 1:
            raise ValueError("n > 1 is not supported: send one request per completion")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported (they would change the "
                             "target's distribution)")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: Union[str, list[int]] = Field(min_length=1)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo):
        if echo:
            raise ValueError("echo is not supported")
        return echo

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The JSON body OpenAI returns with a 4xx/5xx status."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
