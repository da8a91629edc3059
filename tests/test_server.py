"""The OpenAI-compatible server on a tiny model, driven by the official openai client and raw
HTTP."""

import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
from conftest import tiny_model, tiny_tokenizer

from tokentree.api import Generator
from tokentree.drafters import NoDrafter, make_drafter
from tokentree.models import LoadedModel
from tokentree.server.config import ServeConfig
from tokentree.server.run import build_server

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "hello there"}]


class SlowDrafter(NoDrafter):
    """Plain decoding that takes ``delay`` seconds per step: keeps the worker busy on purpose."""

    def __init__(self, delay: float):
        self.delay = delay

    def propose(self, context, budget):
        time.sleep(self.delay)
        return super().propose(context, budget)


def tiny_generator(drafter=None) -> Generator:
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), MODEL)
    return Generator(target, drafter or make_drafter("pld"))


@contextmanager
def running_server(generator: Generator, state_path: str | None = None, **options):
    """The app under uvicorn on an ephemeral loopback port; yields (base_url, uvicorn server)."""
    server = build_server(generator, ServeConfig(port=0, **options), state_path)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def client(base_url: str, api_key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def generator():
    return tiny_generator()


@pytest.fixture(scope="module")
def server(generator):
    with running_server(generator) as (url, _):
        yield url


def test_chat_greedy_equals_the_library_with_usage(server, generator):
    reply = client(server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0
    )
    expected = generator.generate(MESSAGES, max_new_tokens=20)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert reply.usage.prompt_tokens == len(generator.encode(MESSAGES))
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_matches_non_streamed_and_reports_usage(server):
    api = client(server)
    whole = api.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0
    )
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_text_completions_streamed_and_not(server, generator):
    api = client(server)
    whole = api.completions.create(model=MODEL, prompt="abc abc abc", max_tokens=16, temperature=0)
    assert (
        whole.choices[0].text
        == generator.generate("abc abc abc", max_new_tokens=16, chat=False).text
    )
    pieces = [
        c.choices[0].text
        for c in api.completions.create(
            model=MODEL, prompt="abc abc abc", max_tokens=16, temperature=0, stream=True
        )
    ]
    assert "".join(pieces) == whole.choices[0].text


def test_stop_strings_cut_the_text(server):
    api = client(server)
    free = (
        api.completions.create(model=MODEL, prompt="hello", max_tokens=40, temperature=0)
        .choices[0]
        .text
    )
    stop = free[10:12]
    cut = api.completions.create(
        model=MODEL, prompt="hello", max_tokens=40, temperature=0, stop=[stop]
    )
    assert (
        cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    )


def test_seeded_sampling_is_reproducible(server):
    api = client(server)

    def once(seed):
        return (
            api.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=24,
                temperature=1.0,
                top_p=0.95,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    assert once(7) == once(7)
    assert len({once(s) for s in range(4)}) > 1


def test_models_health_and_metrics(server):
    assert [m.id for m in client(server).models.list().data] == [MODEL]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    client(server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0
    )
    metrics = httpx.get(server + "/metrics").text
    for name in (
        "tokentree_requests_total",
        "tokentree_generated_tokens_total",
        "tokentree_queue_depth",
        "tokentree_request_latency_seconds_bucket",
        "tokentree_accepted_tokens_per_step_count",
    ):
        assert name in metrics


def test_tokentree_options_in_the_extra_body(server, generator):
    reply = client(server).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        extra_body={"tokentree": {"drafter": "stand", "budget": 4}},
    )
    assert reply.choices[0].message.content == generator.generate(MESSAGES, max_new_tokens=12).text


BAD_BODIES = [
    ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ({"messages": MESSAGES, "temperature": 2.5}, "temperature"),
    ({"messages": MESSAGES, "top_p": 0}, "top_p"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "n": 2}, "n > 1 needs a server started with --max-batch"),
    ({"messages": MESSAGES, "n": 17}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": "hello"}, "messages"),
    ({"messages": MESSAGES, "stop": [""]}, "stop"),
    ({"messages": MESSAGES, "tokentree": {"drafter": "magic"}}, "unknown drafter"),
    ({"messages": MESSAGES, "tokentree": {"drafter": "sequoia"}}, "needs a draft model"),
    ({"messages": MESSAGES, "tokentree": {"budget": -1}}, "budget"),
    ({"messages": MESSAGES, "tokentree": {"colour": "red"}}, "colour"),
    ({"messages": [{"role": "user", "content": "x" * 600}]}, "context"),
    ({"messages": MESSAGES, "max_tokens": 100000}, "context"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, needle):
    response = httpx.post(server + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert (
        client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2).choices
    )


@pytest.mark.parametrize(
    "body,param",
    [
        ({"tokentree": {"budget": 300}}, "tokentree.budget"),
        ({"tokentree": {"budget": -1}}, "tokentree.budget"),
        ({"tokentree": {"drafter": "magic"}}, "tokentree.drafter"),
        ({"tokentree": {"drafter": "sequoia"}}, "tokentree.drafter"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"model": "other"}, "model"),
    ],
)
def test_refusals_name_the_field_as_the_body_spells_it(server, body, param):
    response = httpx.post(server + "/v1/chat/completions", json={"messages": MESSAGES} | body)
    assert response.status_code in (400, 404) and response.json()["error"]["param"] == param


def test_malformed_json_and_unknown_routes(server):
    bad = httpx.post(
        server + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and "error" in bad.json()
    missing = httpx.get(server + "/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model=MODEL, prompt="", max_tokens=2)


def test_api_key_is_required_when_set(generator):
    with running_server(generator, api_key="sesame") as (url, _):
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert httpx.get(url + "/v1/models").status_code == 401
        assert client(url, api_key="sesame").models.list().data[0].id == MODEL


def test_disconnect_mid_stream_frees_the_worker():
    with running_server(tiny_generator(SlowDrafter(0.02)), request_timeout=60) as (url, server):
        body = {"messages": MESSAGES, "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
            next(response.iter_lines())  # the role chunk: generation has started
        worker = server.config.app.state.worker
        deadline = time.monotonic() + 5  # 400 steps would take 8 s
        # the cancelled job leaves the queue count at once; the worker drops it at its next step
        while httpx.get(url + "/health").json()["queue_depth"] or worker.running is not None:
            assert time.monotonic() < deadline, "the abandoned generation kept running"
            time.sleep(0.05)
        assert (
            client(url)
            .chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
            .choices
        )


def test_queue_full_gets_429_with_retry_after():
    with running_server(tiny_generator(SlowDrafter(0.05)), max_queue=1) as (url, server):
        body = {"messages": MESSAGES, "max_tokens": 60, "temperature": 0}

        def post(_):
            return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)

        worker = server.config.app.state.worker
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, None)
            deadline = time.monotonic() + 10
            while worker.running is None:  # the first job left the queue: one slot is free again
                assert time.monotonic() < deadline, "the first request never started"
                time.sleep(0.01)
            others = list(pool.map(post, range(3)))
            responses = [first.result(), *others]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 429, 429], codes  # one running, one queued, two turned away
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "queue_full"
        assert all(
            r.json()["choices"][0]["message"]["content"] is not None
            for r in responses
            if r.status_code == 200
        )


def test_request_timeout_aborts_the_generation():
    with running_server(tiny_generator(SlowDrafter(0.05)), request_timeout=0.5) as (url, _):
        body = {"messages": MESSAGES, "max_tokens": 200, "temperature": 0}
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 504 and "longer than" in response.json()["error"]["message"]
        lines = [
            ln
            for ln in httpx.post(
                url + "/v1/chat/completions", json=body | {"stream": True}, timeout=30
            ).text.splitlines()
            if ln.startswith("data: ")
        ]
        assert lines[-1] == "data: [DONE]" and "error" in json.loads(lines[-2][6:])


def test_shutdown_lets_an_in_flight_stream_finish():
    with running_server(tiny_generator(SlowDrafter(0.02)), shutdown_grace=10) as (url, server):
        body = {"messages": MESSAGES, "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            next(lines)
            server.should_exit = True  # as on Ctrl-C: stop accepting, let this request finish
            rest = [ln for ln in lines if ln.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_concurrent_load_every_response_complete(generator, capsys):
    clients, per_client = 8, 10
    with running_server(generator) as (url, _):
        api = client(url)

        def one(i):
            start = time.perf_counter()
            if i % 2:
                chunks = list(
                    api.chat.completions.create(
                        model=MODEL,
                        messages=MESSAGES,
                        max_tokens=16,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                assert chunks[-1].usage.completion_tokens >= 1
                tokens = chunks[-1].usage.completion_tokens
                assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in (
                    "stop",
                    "length",
                )
            else:
                reply = api.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0
                )
                assert (
                    reply.choices[0].finish_reason in ("stop", "length")
                    and reply.choices[0].message.content
                )
                tokens = reply.usage.completion_tokens
            return time.perf_counter() - start, tokens

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients * per_client)))
        wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    assert len(results) == clients * per_client and wall < 120
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    with capsys.disabled():
        print(
            f"\nload: {len(results)} requests, 0 errors, p50 "
            f"{statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, {sum(r[1] for r in results) / wall:.0f} tokens/s"
        )


# ---------------------------------------------------------------- hardening (one request never
# stalls the others)


def _post(url: str, body=None, path="/v1/chat/completions", **kwargs) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=kwargs.pop("timeout", 30), **kwargs)


def _wait_idle(url: str, seconds: float = 5.0, headers=None) -> None:
    deadline = time.monotonic() + seconds
    while httpx.get(url + "/health", headers=headers).json()["queue_depth"]:
        assert time.monotonic() < deadline, "the abandoned generation kept its place"
        time.sleep(0.05)


def test_stop_strings_have_a_count_and_length_limit(server):
    for stop in (["x" * 257], ["a"] * 17):
        response = _post(server, {"messages": MESSAGES, "stop": stop})
        assert response.status_code == 400 and response.json()["error"]["param"] == "stop"
    assert (
        _post(server, {"messages": MESSAGES, "max_tokens": 3, "stop": ["x" * 256] * 16}).status_code
        == 200
    )


def test_a_non_streaming_client_that_disconnects_is_cancelled():
    with running_server(tiny_generator(SlowDrafter(0.02)), request_timeout=60) as (url, server):
        body = {"messages": MESSAGES, "max_tokens": 400, "temperature": 0}  # 400 steps: 8 s
        with pytest.raises(httpx.ReadTimeout):
            _post(url, body, timeout=0.5)
        _wait_idle(url)
        metrics = httpx.get(url + "/metrics").text
        assert 'endpoint="generation",status="200"' not in metrics  # never counted as served


def test_the_api_key_and_the_body_limit_are_checked_before_the_body_is_read(generator):
    with running_server(generator, api_key="sesame", max_body_bytes=2000) as (url, _):
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert _post(url, big, headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = _post(url, big, headers={"Authorization": "Bearer sesame"})
        assert (
            response.status_code == 413 and "max-body-bytes" in response.json()["error"]["message"]
        )
        chunked = httpx.post(
            url + "/v1/chat/completions",
            content=iter([b"{" + b" " * 1500, b" " * 1500 + b"}"]),
            headers={"Authorization": "Bearer sesame", "content-type": "application/json"},
        )
        assert (
            chunked.status_code == 413
        )  # no Content-Length: cut off at the limit while it arrives
        ok = _post(
            url, {"messages": MESSAGES, "max_tokens": 2}, headers={"Authorization": "bearer sesame"}
        )
        assert ok.status_code == 200  # the scheme in any case


class SlowTokenizing(Generator):
    """Tokenizes in ``delay`` seconds: a huge prompt."""

    delay = 1.5

    def encode(self, prompt, chat=None, special_in_content=False, tools=None):
        time.sleep(self.delay)
        return super().encode(prompt, chat, special_in_content, tools)


def test_tokenizing_a_long_prompt_does_not_hold_up_other_clients():
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), MODEL)
    with running_server(SlowTokenizing(target, make_drafter("pld"))) as (url, _):
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(_post, url, {"messages": MESSAGES, "max_tokens": 2})
            time.sleep(0.3)
            start = time.monotonic()
            assert httpx.get(url + "/health").status_code == 200
            assert time.monotonic() - start < 1.0  # not behind the 1.5 s of tokenization
            assert slow.result().status_code == 200


def test_clients_that_leave_the_queue_give_their_slots_back():
    with running_server(tiny_generator(SlowDrafter(0.05)), max_queue=2, request_timeout=60) as (
        url,
        server,
    ):
        worker = server.config.app.state.worker
        body = {
            "messages": MESSAGES,
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
        }  # 20 s of work
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as running:
            lines = running.iter_lines()  # kept: a collected line iterator closes the connection
            next(lines)
            while worker.running is None:
                time.sleep(0.01)
            first = worker.running
            for _ in range(2):  # two streaming clients queue behind it, then go away
                with httpx.stream(
                    "POST", url + "/v1/chat/completions", json=body, timeout=30
                ) as response:
                    next(response.iter_lines())
            deadline = time.monotonic() + 2
            while worker.depth > 1:
                assert time.monotonic() < deadline, "abandoned jobs kept their queue slots"
                time.sleep(0.05)
            with httpx.Client(timeout=30) as http:  # both slots are free again: neither gets 429
                waiting = [
                    http.send(
                        http.build_request("POST", url + "/v1/chat/completions", json=body),
                        stream=True,
                    )
                    for _ in range(2)
                ]
                assert [r.status_code for r in waiting] == [200, 200]
                assert (
                    worker.running is first and worker.depth == 3
                )  # the first client is still served
                for response in waiting:
                    response.close()


@pytest.mark.parametrize(
    "body,path",
    [
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "/v1/chat/completions"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "/v1/chat/completions",
        ),
        ({"messages": MESSAGES, "model": "\ud800"}, "/v1/chat/completions"),
        ({"messages": MESSAGES, "stop": ["\ud800"]}, "/v1/chat/completions"),
        ({"prompt": "hi \ud800"}, "/v1/completions"),
    ],
)
def test_lone_surrogates_get_400(server, body, path):
    response = httpx.post(
        server + path,
        content=json.dumps(body).encode(),  # json.dumps escapes them as \\ud800
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]


def test_metrics_labels_are_routes_not_raw_paths(server):
    for i in range(30):
        assert httpx.get(f"{server}/random/{i}").status_code == 404
    metrics = httpx.get(server + "/metrics").text
    assert "/random/" not in metrics and 'endpoint="unmatched",status="404"' in metrics


@pytest.mark.parametrize(
    "field,value",
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "xml"}),
        ("logit_bias", {"50": 10}),
        ("best_of", 2),
        ("top_logprobs", 2),
        ("prompt_logprobs", 21),
        ("frequency_penalty", 0.5),
        ("audio", {"voice": "alloy"}),
    ],
)
def test_parameters_that_would_be_ignored_get_400(server, field, value):
    response = _post(server, {"messages": MESSAGES, field: value})
    assert response.status_code == 400 and field in response.json()["error"]["message"]


def test_neutral_values_explicit_nulls_and_tiny_temperatures_are_served(server):
    neutral = {
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logit_bias": {},
        "best_of": 1,
        "n": 1,
        "temperature": None,
        "top_p": None,
        "max_tokens": None,
        "stop": None,
        "seed": None,
        "stream": None,
        "user": "someone",
        "unknown_extension": 1,
    }
    assert _post(server, {"messages": MESSAGES, **neutral} | {"max_tokens": 3}).status_code == 200
    for temperature in (5e-324, 1e-40):  # logits / T would overflow: decoded greedily, T's limit
        reply = _post(server, {"messages": MESSAGES, "max_tokens": 6, "temperature": temperature})
        greedy = _post(server, {"messages": MESSAGES, "max_tokens": 6, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["choices"] == greedy.json()["choices"]
    suffix = _post(server, {"prompt": "a", "suffix": "b"}, path="/v1/completions")
    assert suffix.status_code == 400 and "suffix" in suffix.json()["error"]["message"]


def test_strict_types_models_routes_and_protocol_details(server):
    for value in (True, "3", 3.0):
        assert _post(server, {"messages": MESSAGES, "max_tokens": value}).status_code == 400
    wrong = _post(server, {"messages": MESSAGES, "model": "gpt-9"})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server}/v1/models/{MODEL}").json()["id"] == MODEL
    assert httpx.get(f"{server}/v1/models/gpt-9").status_code == 404
    not_allowed = httpx.delete(server + "/v1/chat/completions")
    assert not_allowed.status_code == 405 and "POST" in not_allowed.headers["allow"]
    assert httpx.head(server + "/health").status_code == 200
    as_text = httpx.post(
        server + "/v1/chat/completions",
        content=b'{"messages": []}',
        headers={"content-type": "text/plain"},
    )
    assert (
        as_text.status_code == 400
        and "Content-Type: application/json" in as_text.json()["error"]["message"]
    )
    bad = httpx.post(
        server + "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert (
        "malformed JSON" in bad.json()["error"]["message"] and bad.json()["error"]["param"] is None
    )
    body = {"messages": MESSAGES, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body) as response:
        assert response.headers["cache-control"] == "no-cache"


def test_the_api_key_from_a_file_or_the_environment_guards_all_but_health(
    generator, tmp_path, monkeypatch
):
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    with running_server(generator, api_key_file=str(key_file)) as (url, _):
        for route in ("/metrics", "/v1/models", "/openapi.json", "/docs"):
            assert httpx.get(url + route).status_code == 401, route
        assert (
            httpx.get(url + "/metrics", headers={"Authorization": "Bearer from-a-file"}).status_code
            == 200
        )
        assert httpx.get(url + "/health").status_code == 200
    monkeypatch.setenv("TOKENTREE_API_KEY", "from-the-env")
    with running_server(generator) as (url, _):
        assert client(url, api_key="from-the-env").models.list().data[0].id == MODEL
        assert httpx.get(url + "/v1/models").status_code == 401


def test_shutdown_past_the_grace_period_answers_everyone():
    with running_server(
        tiny_generator(SlowDrafter(0.05)), shutdown_grace=1.5, request_timeout=60
    ) as (url, server):
        worker = server.config.app.state.worker
        with ThreadPoolExecutor(1) as pool:
            body = {"messages": MESSAGES, "max_tokens": 400, "temperature": 0, "stream": True}
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json=body, timeout=30
            ) as stream:
                lines = stream.iter_lines()
                next(lines)
                while worker.running is None:
                    time.sleep(0.01)
                queued = pool.submit(_post, url, {"messages": MESSAGES, "max_tokens": 5})
                while worker.depth < 2:
                    time.sleep(0.01)
                # the running stream needs 20 s: more than the grace period
                server.should_exit = True
                rest = [ln for ln in lines if ln.startswith("data: ")]
            answer = queued.result()
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "server_error"
    assert (
        rest[-1] == "data: [DONE]"
        and "shutting down" in json.loads(rest[-2][6:])["error"]["message"]
    )
