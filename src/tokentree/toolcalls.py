"""Tool calls in the format of the Qwen and Hermes chat templates (what the embedded model was
trained on): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. The tools a request
declares, the grammar its ``tool_choice`` asks for, and the calls parsed back from the text."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .constraints import Constraint, ConstraintError
from .constraints.spec import JSON_STYLE
from .errors import TokentreeError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolError(TokentreeError):
    """A malformed tool or tool_choice; ``field`` names where (``tools[1].function.parameters``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and JSON schema of arguments."""

    name: str
    description: str
    parameters: str  # the schema's JSON text (frozen)

    @property
    def schema(self) -> dict:
        return json.loads(self.parameters)

    def as_openai(self) -> dict:
        function = {"name": self.name, "description": self.description, "parameters": self.schema}
        return {"type": "function", "function": function}


def tools_from_openai(items: list[Any]) -> tuple[Tool, ...]:
    """The tools of an OpenAI request's ``tools``; ToolError naming the field when one is
    malformed (a name that is not [A-Za-z0-9_-]{1,64}, a parameters schema llguidance refuses)."""
    tools = []
    for index, item in enumerate(items):
        where = f"tools[{index}]"
        function = item.get("function") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise ToolError(where, f"{where} must be {{'type': 'function', 'function': {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolError(
                f"{where}.function.name", f"{where}.function.name must match {NAME.pattern}"
            )
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        try:
            Constraint.json_schema(parameters)
        except ConstraintError as exc:
            raise ToolError(f"{where}.function.parameters", f"{where}.function.parameters: {exc}")
        text = json.dumps(parameters)
        tools.append(Tool(name, str(function.get("description") or ""), text))
    if len({t.name for t in tools}) < len(tools):
        raise ToolError("tools", "tool names must be distinct")
    return tuple(tools)


def chosen_tools(tools: tuple[Tool, ...], choice: Any) -> tuple[str, tuple[Tool, ...]]:
    """(mode, tools) for OpenAI's ``tool_choice``: "none", "auto" (None), "required", or
    ``{"type": "function", "function": {"name": ...}}`` (mode "required" over that one tool)."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice or "auto", tools
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    named = [tool for tool in tools if tool.name == name]
    if not named:
        known = ", ".join(t.name for t in tools) or "none"
        raise ToolError("tool_choice", f"tool_choice names '{name}', not a declared tool ({known})")
    return "required", tuple(named)


def call_schema(tools: tuple[Tool, ...]) -> dict:
    """The JSON schema of one call's object: ``{"name": one tool's, "arguments": its schema}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.schema},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return {"anyOf": options}


def call_constraint(
    tools: tuple[Tool, ...], parallel: bool = True, marker_tokens: bool = False
) -> Constraint:
    """The grammar of one call (or, with ``parallel``, one or more) to one of ``tools``: each call
    a JSON object whose ``name`` is the tool's and whose ``arguments`` follow its schema.
    ``marker_tokens``: the tokenizer has ``<tool_call>`` and ``</tool_call>`` as tokens of their
    own (Qwen's), which the grammar then names; otherwise they are text."""
    schema = call_schema(tools) | {"x-guidance": JSON_STYLE}
    if marker_tokens:
        call = f'{OPEN} "\\n" body "\\n" {CLOSE}'
    else:
        call = f'"{OPEN}\\n" body "\\n{CLOSE}"'
    start = 'start: call ("\\n" call)*' if parallel else "start: call"
    return Constraint.lark(f"{start}\ncall: {call}\nbody: %json {json.dumps(schema)}\n")


def has_marker_tokens(tokenizer) -> bool:
    """Whether ``<tool_call>`` and ``</tool_call>`` are tokens of their own in ``tokenizer``."""
    added = {token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    return OPEN in added and CLOSE in added


def parse_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a reply: each ``<tool_call>`` block with a JSON object holding a
    name becomes an OpenAI tool call (arguments as a JSON string); the text around the blocks is
    the content (None when there is none)."""
    calls = []
    for match in CALL.finditer(text):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            continue
        arguments = body.get("arguments", {})
        calls.append(
            {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {"name": body["name"], "arguments": json.dumps(arguments)},
            }
        )
    content = CALL.sub("", text).strip() if calls else text
    return (content or None), calls


class ToolCallStream:
    """Streamed text with tool calls held back: :meth:`push` returns what can be shown now (never
    a part of ``<tool_call>``: from its first character on, the rest waits), :meth:`finish` the
    content still held and the calls parsed from it."""

    def __init__(self):
        self.held = ""
        self.calling = False

    def push(self, piece: str) -> str:
        self.held += piece
        if self.calling:
            return ""
        start = self.held.find(OPEN)
        if start >= 0:
            self.calling = True
            shown, self.held = self.held[:start], self.held[start:]
            return shown
        keep = next(
            (k for k in range(min(len(OPEN) - 1, len(self.held)), 0, -1)
             if self.held.endswith(OPEN[:k])), 0,
        )  # fmt: skip
        shown, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return shown

    def finish(self) -> tuple[str, list[dict]]:
        content, calls = parse_calls(self.held)
        if not calls:
            return self.held, []
        return (content or ""), calls


def template_messages(messages: list[dict]) -> list[dict]:
    """Chat messages as chat templates take them: an assistant's tool calls with their arguments
    as objects (OpenAI sends JSON strings)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = message | {"tool_calls": [_with_object_arguments(c) for c in calls]}
        out.append(message)
    return out


def _with_object_arguments(call: dict) -> dict:
    function = dict(call.get("function", {}))
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return call | {"function": function}
