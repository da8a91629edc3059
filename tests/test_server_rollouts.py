"""``POST /v1/rollouts``: a rollout tree through the server, its branches decoded in the worker's
batch beside ordinary requests; bodies no rollout can honour get a 400 naming the field."""

import concurrent.futures

import httpx
import pytest
from test_constraints import generator
from test_server import client, running_server

SEGMENTS = {"type": "segments", "width": 2, "segment_tokens": 3, "depth": 1, "max_leaves": 4}


@pytest.fixture(scope="module")
def server():
    with running_server(generator("pld"), max_batch=6) as (url, uvicorn):
        yield url, uvicorn


def rollout(url: str, **body) -> httpx.Response:
    body = {"prompt": "abc abc", "max_tokens": 10, "temperature": 1.0, "seed": 1} | body
    return httpx.post(url + "/v1/rollouts", json=body, timeout=60)


def check_tree(body: dict, leaves: int) -> None:
    tree = body["tree"]
    assert body["object"] == "tokentree.rollout" and 1 <= len(tree["trajectories"]) <= leaves
    assert len(body["texts"]) == len(tree["trajectories"])
    segments = {s["id"]: s for s in tree["segments"]}
    for path in tree["trajectories"]:
        rebuilt = [t for node in path["segments"] for t in segments[node]["token_ids"]]
        assert rebuilt == path["completion_ids"]
        assert len(path["logprobs"]) == len(rebuilt) and all(lp <= 0 for lp in path["logprobs"])
    assert body["usage"]["completion_tokens"] == tree["new_tokens"]


def test_a_rollout_tree_through_the_server(server):
    url, _ = server
    reply = rollout(url, policy=SEGMENTS)
    assert reply.status_code == 200, reply.text
    check_tree(reply.json(), 4)
    assert any(s["reason"] == "segment" for s in reply.json()["tree"]["segments"])
    messages = [{"role": "user", "content": "hello"}]
    uncertain = {"type": "uncertain", "threshold": 0.9, "top_k": 2, "lookahead": 2,
                 "max_leaves": 4}  # fmt: skip
    reply = rollout(url, prompt=None, messages=messages, max_tokens=8, policy=uncertain)
    assert reply.status_code == 200, reply.text
    check_tree(reply.json(), 4)


def test_rollouts_and_chat_requests_share_the_batch(server):
    """A rollout and chat requests at once: each gets its own answer (a rollout's branches post
    nothing to the chat jobs beside them), and the greedy chat replies equal a lone one's."""
    url, uvicorn = server
    api = client(url)
    chat = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                temperature=0)  # fmt: skip
    alone = api.chat.completions.create(**chat).choices[0].message.content
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        trees = [pool.submit(rollout, url, policy=SEGMENTS, max_tokens=24) for _ in range(2)]
        chats = [pool.submit(api.chat.completions.create, **chat) for _ in range(2)]
        for future in trees:
            assert future.result().status_code == 200, future.result().text
            check_tree(future.result().json(), 4)
        assert [f.result().choices[0].message.content for f in chats] == [alone, alone]
    assert httpx.get(url + "/health").json()["queue_depth"] == 0
    assert 3 <= uvicorn.config.app.state.worker.peak_batch <= 6  # never more than --max-batch


@pytest.mark.parametrize(
    "body,param",
    [
        ({"policy": {"type": "beam"}}, "policy.type"),
        ({"policy": SEGMENTS | {"breadth": 2}}, "policy.breadth"),
        ({"policy": SEGMENTS | {"width": 0}}, "policy"),
        ({"policy": {"type": "independent", "n": 8}}, "policy"),  # 8 slots > --max-batch 6
        ({"policy": SEGMENTS, "temperature": 0}, "policy"),
        ({"policy": SEGMENTS, "stream": True}, None),
        ({"policy": SEGMENTS, "n": 2}, None),
        ({"policy": SEGMENTS, "logprobs": True}, None),
        ({"policy": SEGMENTS, "prompt": None}, None),
        ({"policy": SEGMENTS, "tokentree": {"drafter": "nope"}}, "tokentree.drafter"),
    ],
)
def test_impossible_rollouts_get_a_400_naming_the_field(server, body, param):
    url, _ = server
    reply = rollout(url, **body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    assert error["message"]


def test_a_server_without_a_batch_says_how_to_get_one():
    with running_server(generator("pld")) as (url, _):
        reply = rollout(url, policy=SEGMENTS)
    assert reply.status_code == 400 and "--max-batch 5" in reply.json()["error"]["message"]
