"""Tool calls through the OpenAI surface: tools rendered by the chat template, tool_choice
required / a named function constraining the output to calls whose arguments follow their
schemas, calls parsed into message.tool_calls (streamed as delta.tool_calls), tool messages in
the conversation, and a 400 naming the field for every malformed tool or choice."""

import json

import httpx
import jsonschema
import pytest
from test_constraints import generator, json_tokenizer
from test_server import client, running_server

from tokentree.toolcalls import ToolCallStream, parse_calls

TOOL_TEMPLATE = (
    "{%- if tools %}<|system|>tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n"
    "{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n"
    '{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}\n</tool_call>'
    "{% endfor %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["paris", "rome"]}, "days": {"type": "integer", "maximum": 9}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string", "maxLength": 6}},
                "required": ["q"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
MESSAGES = [{"role": "user", "content": "weather in paris?"}]


@pytest.fixture(scope="module")
def server():
    tokenizer = json_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    with running_server(generator("auto", tokenizer=tokenizer)) as (url, _):
        yield url


def check_calls(calls, names=SCHEMAS):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_choice_returns_calls_that_follow_their_schemas(server):
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1


def test_a_named_function_is_the_one_called(server):
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "search"}},
        max_tokens=200,
        temperature=1.0,
        seed=4,
    )
    check_calls(reply.choices[0].message.tool_calls, names={"search"})


def test_streamed_calls_reassemble_as_the_openai_client_expects(server):
    stream = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        stream=True,
    )
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                calls.setdefault(delta.index, delta)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    check_calls(list(calls.values()))


def test_a_conversation_with_calls_and_tool_results_is_served(server):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "paris"}'},
    }
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = client(server).chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, max_tokens=8
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    "body,param",
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "x"}]}, "messages"),
    ],
)
def test_malformed_tools_and_choices_get_a_400_naming_the_field(server, body, param):
    response = httpx.post(server + "/v1/chat/completions", json={"messages": MESSAGES} | body)
    assert response.status_code == 400, response.text
    assert param in (response.json()["error"]["param"] or response.json()["error"]["message"])


def test_calls_are_held_back_while_streaming_and_parsed_at_the_end():
    stream = ToolCallStream()
    shown = [
        stream.push(p)
        for p in ["Sure. <to", 'ol_call>\n{"name": "f", ', '"arguments": {}}\n</tool_call>']
    ]
    assert shown == ["Sure. ", "", ""]
    content, calls = stream.finish()
    assert content == "" and calls[0]["function"] == {"name": "f", "arguments": "{}"}
    plain = ToolCallStream()
    assert plain.push("a <t") == "a " and plain.push("x>") == "<tx>"  # not a call after all
    assert parse_calls("no calls here") == ("no calls here", [])
