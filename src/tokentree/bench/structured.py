"""What a prompt of the json suite must output, in each engine's terms: tokentree's constraint
(llguidance), llama.cpp's GBNF grammar (for llama-cpp-python's ``LlamaGrammar`` decoding), and
the check that a reply is valid (``jsonschema``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..constraints import Constraint
from ..errors import TokentreeError
from ..toolcalls import (
    CLOSE,
    OPEN,
    call_constraint,
    call_schema,
    has_marker_tokens,
    parse_calls,
    tools_from_openai,
)
from .prompt import BenchPrompt


@dataclass(frozen=True)
class Structured:
    """One prompt's output rule. ``schema``: what the reply's JSON follows (a JSON reply) or, with
    ``tools``, what each call's ``{"name", "arguments"}`` object follows."""

    constraint: Constraint
    schema: dict
    tools: bool = False

    def gbnf(self) -> str:
        """The same rule as llama.cpp's GBNF (llama-cpp-python's schema converter: it allows an
        optional space where tokentree's JSON style writes one)."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        body = json_schema_to_gbnf(json.dumps(self.schema))
        if not self.tools:
            return body
        call = body.replace("root ::=", "call-body ::=")
        return f'root ::= "{OPEN}\\n" call-body "\\n{CLOSE}"\n{call}'

    def valid(self, text: str) -> bool:
        """Whether ``text`` is a complete reply: JSON valid under the schema, or (tools) at least
        one call, each valid under the calls' schema."""
        import jsonschema

        if self.tools:
            _, calls = parse_calls(text)
            objects = [
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                for c in calls
            ]
        else:
            try:
                objects = [json.loads(text)]
            except json.JSONDecodeError:
                return False
        checker = jsonschema.Draft202012Validator(self.schema)
        return bool(objects) and all(checker.is_valid(o) for o in objects)


def structured_for(prompt: BenchPrompt, tokenizer) -> Structured | None:
    """The output rule of a prompt with a ``schema`` or ``tools`` (a tool call is required: one
    call to one of the offered tools, Qwen's ``<tool_call>`` tokens named where the tokenizer has
    them); None for a free-text prompt."""
    if prompt.tools:
        tools = tools_from_openai(list(prompt.tools))
        markers = has_marker_tokens(tokenizer)
        constraint = call_constraint(tools, parallel=False, marker_tokens=markers)
        return Structured(constraint, call_schema(tools), tools=True)
    if prompt.schema is not None:
        return Structured(Constraint.json_schema(prompt.schema), prompt.schema)
    return None


def require_jsonschema() -> None:
    """A clear error before a json run when the validity check cannot run."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise TokentreeError(
            "the json suite checks every reply with jsonschema: pip install 'tokentree[bench]'"
        ) from None
