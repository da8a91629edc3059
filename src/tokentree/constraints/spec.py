"""What a constrained request asks for: a JSON schema, any JSON object, a regular expression or a
context-free grammar (Lark or GBNF text), checked when it is made and compiled by llguidance (the
grammar engine llama.cpp and vLLM use)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import TokentreeError

KINDS = ("json_schema", "json_object", "regex", "lark", "gbnf")
ANY_OBJECT = '{"type": "object"}'
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(TokentreeError):
    """An invalid schema, regular expression or grammar (the message says where and why)."""


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a core dependency; a broken install still gets a clear line
        raise TokentreeError("constrained decoding needs llguidance: pip install llguidance")
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """A constraint on the output. ``source``: the schema's JSON text, the regex, or the grammar;
    ``name``: what a client called it (a json_schema's name, a tool's). Build one with
    :meth:`json_schema`, :meth:`json_object`, :meth:`regex`, :meth:`lark` or :meth:`gbnf`."""

    kind: str
    source: str = ""
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(
                f"unknown constraint kind '{self.kind}': one of {', '.join(KINDS)}"
            )
        if self.kind != "json_object" and not self.source.strip():
            raise ConstraintError(f"the {self.kind} constraint is empty")
        error = _llguidance().LLMatcher.validate_grammar(self.grammar())
        if error:
            raise ConstraintError(f"invalid {self.kind.replace('_', ' ')}: {error.strip()}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def json_schema(cls, schema: dict | str, name: str | None = None) -> Constraint:
        """Output one JSON value valid under ``schema`` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ConstraintError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ConstraintError("a JSON schema must be a JSON object")
        return cls("json_schema", json.dumps(schema), name)

    @classmethod
    def json_object(cls) -> Constraint:
        """Output any JSON object."""
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """A context-free grammar in llguidance's Lark dialect (``start: ...``)."""
        return cls("lark", grammar)

    @classmethod
    def gbnf(cls, grammar: str) -> Constraint:
        """A grammar in llama.cpp's GBNF (``root ::= ...``)."""
        return cls("gbnf", grammar)

    @classmethod
    def grammar_text(cls, text: str) -> Constraint:
        """GBNF when the text defines ``root ::=``, else Lark."""
        return cls("gbnf" if "::=" in text else "lark", text)

    # ------------------------------------------------------------------ compilation
    @property
    def schema(self) -> dict[str, Any] | None:
        if self.kind == "json_object":
            return json.loads(ANY_OBJECT)
        return json.loads(self.source) if self.kind == "json_schema" else None

    def grammar(self) -> str:
        """The llguidance grammar. JSON is written as ``json.dumps`` writes it (``", "`` and
        ``": "``, no other whitespace), which models produce most naturally and which leaves no
        room for runs of whitespace."""
        matcher = _llguidance().LLMatcher
        if self.kind in ("json_schema", "json_object"):
            source = ANY_OBJECT if self.kind == "json_object" else self.source
            return matcher.grammar_from_json_schema(source, defaults=JSON_STYLE)
        if self.kind == "regex":
            return matcher.grammar_from_regex(self.source)
        if self.kind == "gbnf":
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                return matcher.grammar_from_lark(gbnf_to_lark(self.source))
            except Exception as exc:  # noqa: BLE001 - the converter raises bare Exceptions
                raise ConstraintError(f"invalid gbnf: {exc}") from None
        return matcher.grammar_from_lark(self.source)
