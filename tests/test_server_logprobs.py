"""Logprobs through the OpenAI surface: chat (logprobs + top_logprobs) and completions
(logprobs: K), whole and streamed (the streamed entries concatenate to the whole ones), with
--max-batch too, and 400s for what OpenAI refuses."""

import httpx
import pytest
from test_constraints import generator
from test_server import client, running_server

MESSAGES = [{"role": "user", "content": "say something"}]


@pytest.fixture(scope="module", params=[1, 2])
def server(request):
    with running_server(generator("pld"), max_batch=request.param) as (url, _):
        yield url


def test_chat_logprobs_whole_and_streamed(server):
    api = client(server)
    options = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True)
    reply = api.chat.completions.create(**options, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # the best is at least it
        assert entry.bytes == list(entry.token.encode("utf-8"))
    chunks = list(api.chat.completions.create(**options, top_logprobs=3, stream=True))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]  # noqa: E501
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = api.chat.completions.create(**options)
    assert all(entry.top_logprobs == [] for entry in plain.choices[0].logprobs.content)
    without = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    assert without.choices[0].logprobs is None


def test_completions_logprobs(server):
    api = client(server)
    reply = api.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0,
                                   logprobs=2)  # fmt: skip
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == reply.usage.completion_tokens
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(8)]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "logprobs"),
        ({"logprobs": True, "tokentree": {"logprobs_mode": "logits"}}, "tokentree.logprobs_mode"),
    ],
)
def test_bad_logprobs_requests_are_refused(server, body, param):
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2} | body
    answer = httpx.post(f"{server}/v1/chat/completions", json=payload, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_prompt_logprobs_as_vllm_returns_them(server):
    """Completions: each choice's ``prompt_logprobs``; chat: the reply's; per prompt token a map
    from token id to logprob, rank and text (the token itself and the top K); not streamed."""
    body = {"model": "tiny", "prompt": "abc abc", "max_tokens": 2, "temperature": 0,
            "prompt_logprobs": 2}  # fmt: skip
    reply = httpx.post(server + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    shown = reply.json()["choices"][0]["prompt_logprobs"]
    assert shown[0] is None and len(shown) == reply.json()["usage"]["prompt_tokens"]
    for entry in shown[1:]:
        assert 2 <= len(entry) <= 3  # the top 2, and the prompt's own token when not among them
        ranks = sorted(v["rank"] for v in entry.values())
        assert ranks[:2] == [1, 2] and all(v["logprob"] <= 0 for v in entry.values())
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "prompt_logprobs": 0}
    reply = httpx.post(server + "/v1/chat/completions", json=chat, timeout=60)
    assert reply.status_code == 200, reply.text
    shown = reply.json()["prompt_logprobs"]
    assert shown[0] is None and all(len(entry) == 1 for entry in shown[1:])
    reply = httpx.post(server + "/v1/completions", json=body | {"stream": True}, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt_logprobs"
