"""Structured output through the OpenAI surface: response_format (json_object, json_schema) in
chat and text completions, vLLM's guided_json / guided_regex / guided_grammar, streamed and not,
and a 400 naming the field for every invalid constraint."""

import json
import re

import httpx
import jsonschema
import pytest
from test_constraints import generator
from test_server import client, running_server

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 99}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "json please"}]


@pytest.fixture(scope="module")
def server():
    with running_server(generator("auto")) as (url, _):
        yield url


def json_schema_format(schema=SCHEMA):
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_chat_json_schema_output_validates(server):
    reply = client(server).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=60, response_format=json_schema_format()
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    assert reply.tokentree["grammar"]["forced"] > 0  # '{"ok": ' and friends were free drafts


def test_streamed_json_schema_output_validates(server):
    stream = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=60,
        temperature=1.0,
        seed=3,
        response_format=json_schema_format(),
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_take_vllms_guided_fields(server):
    api = client(server)
    reply = api.completions.create(
        model="tiny", prompt="id:", max_tokens=20, extra_body={"guided_regex": "[0-9]{3}-[a-z]{2}"}
    )
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", reply.choices[0].text)
    reply = api.completions.create(
        model="tiny", prompt="x", max_tokens=60, extra_body={"guided_json": SCHEMA}
    )
    jsonschema.validate(json.loads(reply.choices[0].text), SCHEMA)
    reply = api.completions.create(
        model="tiny",
        prompt="x",
        max_tokens=10,
        extra_body={"guided_grammar": 'root ::= "yes" | "no"'},
    )
    assert reply.choices[0].text in ("yes", "no") and reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body,param",
    [
        ({"response_format": json_schema_format({"type": "objectx"})}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"guided_regex": "[a-"}, "guided_regex"),
        ({"guided_grammar": 'root ::= "a" missing'}, "guided_grammar"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_regex": "a", "guided_json": SCHEMA}, "guided_regex"),
    ],
)
def test_invalid_constraints_get_a_400_naming_the_field(server, body, param):
    response = httpx.post(server + "/v1/chat/completions", json={"messages": MESSAGES} | body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
