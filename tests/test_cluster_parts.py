"""The parts of ``tokentree serve --replicas`` that need no Ray: conversation keys and rendezvous
order, the in-process ASGI call a replica answers with, the deployment's merged metrics, the
knowledge store, and the drafters' knowledge deltas (absorbed knowledge changes speed, never
output)."""

import asyncio
import json
import random

import pytest
from test_constraints import generator

from tokentree.cluster.asgi import call_app
from tokentree.cluster.config import ClusterConfig
from tokentree.cluster.knowledge import KnowledgeStore, is_empty
from tokentree.cluster.metrics import labelled, merge_metrics
from tokentree.cluster.session_key import rendezvous_order, session_key
from tokentree.errors import TokentreeError
from tokentree.server.app import create_app
from tokentree.server.config import ServeConfig

PROMPT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_a_conversation_is_named_by_header_user_or_opening():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    later = chat + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    assert session_key([("X-Session-ID", "abc")], body(user="u")) == "session:abc"
    assert session_key([], body(user="u", messages=chat)) == "user:u"
    first, second = session_key([], body(messages=chat)), session_key([], body(messages=later))
    assert first == second and first.startswith("prefix:")  # later turns: the same replica
    other = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"}]
    assert session_key([], body(messages=other)) != first
    assert session_key([], b"not json") is None and session_key([], body(model="m")) is None


def test_rendezvous_order_agrees_everywhere_and_moves_only_a_leavers_keys():
    names = ["r1", "r2", "r3", "r4"]
    keys = [f"user:{i}" for i in range(400)]
    best = {k: names[rendezvous_order(k, names)[0]] for k in keys}
    assert best == {k: names[rendezvous_order(k, names)[0]] for k in keys}  # deterministic
    assert 60 < sum(v == "r1" for v in best.values()) < 140  # spread over the replicas
    left = ["r1", "r2", "r4"]  # r3 leaves: only its keys move
    moved = [k for k in keys if left[rendezvous_order(k, left)[0]] != best[k]]
    assert moved and all(best[k] == "r3" for k in moved)


def test_a_replica_answers_through_its_own_app_in_process():
    """What a replica does with a forwarded request: the single-machine app's own answer, whole
    and streamed (the gate, limits and errors included)."""
    gen = generator("pld")
    app = create_app(gen, ServeConfig(max_batch=2))
    app.state.service.start()
    try:
        whole = asyncio.run(collect(app, {"prompt": "abc", "max_tokens": 5, "temperature": 0}))
        assert whole[0]["status"] == 200
        text = json.loads(b"".join(whole[1:]))["choices"][0]["text"]
        assert text == gen.generate("abc", max_new_tokens=5, chat=False).text
        streamed = asyncio.run(collect(app, {"prompt": "abc", "max_tokens": 5, "temperature": 0,
                                             "stream": True}))  # fmt: skip
        events = b"".join(streamed[1:]).decode()
        assert events.count("data: ") >= 6 and events.endswith("data: [DONE]\n\n")
        bad = asyncio.run(collect(app, {"prompt": "abc", "max_tokens": 0}))
        assert bad[0]["status"] == 400 and b"max_tokens" in b"".join(bad[1:])
    finally:
        app.state.service.stop()


async def collect(app, request: dict) -> list:
    envelope = {"method": "POST", "path": "/v1/completions", "query": "",
                "headers": [("content-type", "application/json")],
                "body": json.dumps(request).encode()}  # fmt: skip
    return [item async for item in call_app(app, envelope)]


def test_the_deployments_metrics_label_each_replica():
    text = '# TYPE x_total counter\nx_total 3\n# TYPE y histogram\ny_bucket{le="1"} 2\ny_count 2\n'
    merged = merge_metrics({"a": text, "b": text})
    assert merged.count("# TYPE x_total counter") == 1
    assert 'x_total{replica="a"} 3' in merged and 'x_total{replica="b"} 3' in merged
    assert 'y_bucket{replica="b",le="1"} 2' in merged
    assert labelled("z{} 1", "a") == 'z{replica="a"} 1'
    lines = merged.splitlines()
    assert lines.index("# TYPE y histogram") < lines.index('y_count{replica="a"} 2')


def test_the_store_hands_each_replica_the_others_deltas_and_forgets_the_oldest():
    store = KnowledgeStore(keep=3)
    for i in range(4):
        store.publish("a" if i % 2 else "b", {"stand": [[i]]})
    serial, deltas = store.since(0, "a")
    assert serial == 4 and deltas == [{"stand": [[2]]}]  # 1 forgotten, 2 from b, 3 from a
    assert store.since(serial, "b") == (4, [])
    assert is_empty({"sources": ["stand", "pld"], "deltas": [{"stand": []}, None]})
    assert not is_empty({"sources": ["suffix"], "deltas": [{"suffix": [[1, 2]]}]})


@pytest.mark.parametrize("name", ["stand", "suffix", "auto"])
def test_absorbed_knowledge_changes_speed_never_output(name):
    """A replica that absorbs what another learned from a request decodes that request with
    more tokens per step than a cold one, and the same tokens; what it absorbed is not in its
    own next delta."""
    teacher, cold, warm = generator(name), generator(name), generator(name)
    rng = random.Random(1)
    prompt = [rng.randrange(4, 90) for _ in range(12)]  # an answer that varies a little
    for _ in range(2):
        taught = teacher.generate(prompt, max_new_tokens=32, budget=8)
    # two rounds: suffix responses are shared once they stopped growing, STAND's at once
    deltas = [teacher.drafter.knowledge_delta(), teacher.drafter.knowledge_delta(final=True)]
    assert not all(is_empty(d) for d in deltas)
    for delta in deltas:
        warm.drafter.absorb_knowledge(json.loads(json.dumps(delta)))  # as it crosses processes
    assert is_empty(warm.drafter.knowledge_delta(final=True))
    slow = cold.generate(prompt, max_new_tokens=32, budget=8)
    fast = warm.generate(prompt, max_new_tokens=32, budget=8)
    assert fast.token_ids == slow.token_ids == taught.token_ids
    assert fast.stats.tokens_per_step > slow.stats.tokens_per_step


def test_cluster_options_are_checked():
    assert not ClusterConfig().clustered and ClusterConfig(replicas=2).clustered
    assert ClusterConfig(max_replicas=3).autoscaling["max_replicas"] == 3
    with pytest.raises(TokentreeError, match="replicas"):
        ClusterConfig(replicas=0)
    with pytest.raises(TokentreeError, match="min-replicas"):
        ClusterConfig(min_replicas=3, max_replicas=2)


def test_replicas_without_ray_are_a_one_line_error_naming_the_extra(monkeypatch):
    import sys

    from tokentree.cluster.run import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(TokentreeError, match=r"pip install 'tokentree\[cluster\]'"):
        import_ray()


def test_a_failed_start_names_the_replicas_own_error():
    from tokentree.cluster.run import start_failure

    ray_text = (
        "Deploying application tokentree failed\nTraceback ...\n  raise TokentreeError(f...)\n"
    )
    ray_text += "tokentree.errors.TokentreeError: /m is not a Hugging Face model directory\n"
    assert start_failure(ray_text) == "/m is not a Hugging Face model directory"
    assert (
        start_failure("Deploying failed: out of memory\nmore") == "Deploying failed: out of memory"
    )
