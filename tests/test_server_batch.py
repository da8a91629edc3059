"""``tokentree serve --max-batch N`` on llama.cpp (SmolLM2 GGUF): concurrent requests are decoded
together, each answer equals the library's, and a client that leaves frees its slot."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_llamacpp import generator, gguf  # noqa: F401 - the SmolLM2 fixtures
from test_server import client, running_server

pytestmark = pytest.mark.slow

PROMPTS = [
    "def fibonacci(n):",
    "The three primary colors are",
    "List the days of the week: Monday,",
    "import numpy as np\n\ndef mean(xs):",
    "Once upon a time, in a small village,",
]


def _complete(url: str, prompt: str, tokens: int, drafter: str = "none"):
    return client(url).completions.create(
        model="m",
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        extra_body={"tokentree": {"drafter": drafter}},
    )


@pytest.fixture(scope="module", autouse=True)
def profiled(generator):  # noqa: F811 - measured before the servers start (it takes a while once)
    generator.cost_profile()


def test_concurrent_requests_share_forwards_and_get_their_own_answers(generator):  # noqa: F811
    want = [
        generator.generate(p, max_new_tokens=16, chat=False, drafter="none").text for p in PROMPTS
    ]
    with running_server(generator, max_batch=3, served_model_name="m") as (url, server):
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            replies = list(pool.map(lambda p: _complete(url, p, 16), PROMPTS))
        worker = server.config.app.state.worker
        assert [r.choices[0].text for r in replies] == want
        assert 2 <= worker.peak_batch <= 3  # decoded together, never more than --max-batch
        metrics = httpx.get(url + "/metrics").text
        assert "tokentree_batch_size 0" in metrics  # all done
        waits = [
            line
            for line in metrics.splitlines()
            if line.startswith("tokentree_queue_wait_seconds_count")
        ]
        assert waits == [f"tokentree_queue_wait_seconds_count {len(PROMPTS)}"]
        planned = _complete(
            url, PROMPTS[0], 12, drafter="auto"
        )  # the default drafter, trees planned together
        assert (
            planned.choices[0].finish_reason in ("stop", "length")
            and planned.usage.completion_tokens > 0
        )


def test_a_client_that_leaves_a_batch_frees_its_slot(generator):  # noqa: F811
    with running_server(generator, max_batch=2, served_model_name="m") as (url, server):
        worker = server.config.app.state.worker
        body = {
            "model": "m",
            "prompt": PROMPTS[1],
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
            "tokentree": {"drafter": "none"},
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk: it is running
        deadline = time.monotonic() + 10
        while (
            worker.depth or worker.batched
        ) and time.monotonic() < deadline:  # the worker drops it between steps
            time.sleep(0.05)
        assert worker.depth == 0 and not worker.batched
        assert _complete(url, PROMPTS[0], 8).choices[0].finish_reason in ("stop", "length")


def test_n_choices_are_the_seeded_samples_whole_and_streamed(generator):  # noqa: F811
    want = [
        generator.generate(
            PROMPTS[2], max_new_tokens=10, chat=False, temperature=0.8, seed=5 + i, drafter="none"
        ).text
        for i in range(3)
    ]
    with running_server(generator, max_batch=2, served_model_name="m") as (url, _):
        reply = client(url).completions.create(
            model="m",
            prompt=PROMPTS[2],
            max_tokens=10,
            temperature=0.8,
            seed=5,
            n=3,
            extra_body={"tokentree": {"drafter": "stand"}},
        )
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert [
            c.text for c in reply.choices
        ] == want  # choice i is seed 5 + i, with 2 decoded at a time
        assert reply.usage.completion_tokens == sum(
            len(
                generator.generate(
                    PROMPTS[2],
                    max_new_tokens=10,
                    chat=False,
                    temperature=0.8,
                    seed=5 + i,
                    drafter="none",
                ).token_ids
            )
            for i in range(3)
        )
        chunks = list(
            client(url).completions.create(
                model="m",
                prompt=PROMPTS[2],
                max_tokens=10,
                temperature=0.8,
                seed=5,
                n=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        texts, finished = ["", ""], set()
        for chunk in chunks:
            for choice in chunk.choices:
                texts[choice.index] += choice.text
                if choice.finish_reason:
                    finished.add(choice.index)
        assert texts == want[:2] and finished == {0, 1} and chunks[-1].usage.completion_tokens > 0
