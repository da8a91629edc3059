"""``tokentree serve --replicas 2`` on a local Ray cluster (127.0.0.1, started and stopped by the
test): the OpenAI client end to end, streamed too; a conversation stays on its replica; what one
replica's drafter learned drafts on the other; a replica killed mid-stream ends that stream with an
error while the other serves, and Ray brings it back. Skipped without Ray, unless
TOKENTREE_REQUIRE_RAY=1 (CI), where that is a failure."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

if importlib.util.find_spec("ray") is None:
    if os.environ.get("TOKENTREE_REQUIRE_RAY") == "1":
        pytest.fail("ray must be installed (pip install -e '.[cluster]')", pytrace=False)
    pytest.skip("ray is not installed (pip install -e '.[cluster]')", allow_module_level=True)

from conftest import tiny_model, tiny_tokenizer  # noqa: E402
from test_server import client  # noqa: E402

REPLICA = "x-tokentree-replica"
START_S = 240  # Ray, two replicas loading torch on two cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The server as a user starts it, in its own process group (Ray's processes included)."""
    port, home = free_port(), tmp_path_factory.mktemp("cluster")
    model, log = home / "tiny-llama", home / "serve.log"
    tiny_model("llama", seed=5).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    env = os.environ | {"TOKENTREE_CACHE": str(home / "cache")}
    command = [sys.executable, "-m", "tokentree.cli", "serve", "--target", str(model),
               "--dtype", "float32", "--drafter", "suffix", "--replicas", "2",
               "--replica-cpus", "0.5", "--share-every", "1", "--max-batch", "2",
               "--port", str(port)]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(replicas_answering(url, 12)) == 2, START_S, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_until(ready, seconds: float, process, log) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the cluster did not come up:\n" + log.read_text()[-3000:])


def ask(url: str, session: str, prompt: str = "abc abc", tokens: int = 8) -> httpx.Response:
    return httpx.post(url + "/v1/completions", timeout=60, headers={"X-Session-ID": session},
                      json={"prompt": prompt, "max_tokens": tokens, "temperature": 0})  # fmt: skip


def replicas_answering(url: str, tries: int) -> set[str]:
    """The replicas that answered ``tries`` probes (before the app runs, Ray's proxy answers)."""
    answers = [ask(url, f"probe-{i}", tokens=1) for i in range(tries)]
    return {a.headers[REPLICA] for a in answers if a.status_code == 200 and REPLICA in a.headers}


def test_the_openai_client_end_to_end_whole_and_streamed(cluster):
    api = client(cluster)
    options = dict(model="tiny-llama", messages=[{"role": "user", "content": "hello"}],
                   max_tokens=8, temperature=0)  # fmt: skip
    whole = api.chat.completions.create(**options)
    chunks = list(api.chat.completions.create(**options, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and whole.usage.completion_tokens == 8
    assert httpx.post(cluster + "/v1/completions", json={"prompt": "a", "max_tokens": 0},
                      timeout=30).status_code == 400  # fmt: skip
    deadline = time.monotonic() + 20  # every replica reports each sharing period
    while (
        httpx.get(cluster + "/metrics", timeout=30).text.count(
            "tokentree_generated_tokens_total{replica="
        )
        < 2
    ):
        assert time.monotonic() < deadline, httpx.get(cluster + "/metrics", timeout=30).text
        time.sleep(0.5)


def test_a_conversation_stays_on_its_replica(cluster):
    for session in ("alice", "bob", "carol"):
        served = {ask(cluster, session).headers[REPLICA] for _ in range(4)}
        assert len(served) == 1, (session, served)


def test_what_one_replica_learned_drafts_on_the_other(cluster):
    """A response learned on one replica (suffix drafter) reaches the other within a few sharing
    periods: the same greedy request there then accepts whole drafts."""
    by_replica: dict[str, str] = {}
    for i in range(40):
        by_replica.setdefault(ask(cluster, f"s{i}", tokens=1).headers[REPLICA], f"s{i}")
    teacher, learner = by_replica.values()
    prompt = "the quick brown fox jumps over the lazy dog " * 2
    cold = ask(cluster, learner, prompt="a different prompt entirely", tokens=48).json()
    taught = ask(cluster, teacher, prompt=prompt, tokens=48).json()
    time.sleep(4)  # two periods: the response stops growing, then it is shared
    learned = ask(cluster, learner, prompt=prompt, tokens=48).json()
    assert learned["choices"][0]["text"] == taught["choices"][0]["text"]
    tau = learned["tokentree"]["tokens_per_step"]
    assert tau > max(2.0, cold["tokentree"]["tokens_per_step"] + 1), (tau, cold["tokentree"])


def test_a_killed_replica_ends_its_stream_and_the_other_serves(cluster):
    """kill -9 a replica while it streams: that stream ends with an error event and [DONE] (no
    hang), the next requests are served by the other replica, and Ray restarts the dead one."""
    session = "victim"
    label = ask(cluster, session, tokens=1).headers[REPLICA]
    pid = int(label.split("/")[1])
    body = {"prompt": "abc abc", "max_tokens": 480, "temperature": 0, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", cluster + "/v1/completions", json=body, timeout=60,
                      headers={"X-Session-ID": session}) as reply:  # fmt: skip
        events = []
        for line in filter(None, reply.iter_lines()):  # (events end with a blank line)
            events.append(line)
            if len(events) == 3:
                os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - started < 60
    assert events[-1] == "data: [DONE]" and any('"error"' in e for e in events[-4:])
    for _ in range(3):  # served by the other at once (a 503 only if Ray had not yet seen it die)
        after = ask(cluster, session, tokens=4)
        if after.status_code == 200:
            break
        time.sleep(1)
    assert after.status_code == 200 and after.headers[REPLICA] != label
    deadline = time.monotonic() + 120
    while len(replicas_answering(cluster, 8)) < 2:  # the dead one restarted
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(2)


def test_a_replica_that_cannot_load_its_model_stops_the_server_loudly(tmp_path):
    """No traffic to a deployment whose replicas fail: the server exits 2 naming the reason."""
    command = [sys.executable, "-m", "tokentree.cli", "serve", "--replicas", "2", "--target",
               str(tmp_path), "--port", str(free_port())]  # fmt: skip
    env = os.environ | {"TOKENTREE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the replicas did not start" in done.stderr and "no config.json" in done.stderr


def test_the_kuberay_builder_takes_the_clis_flags(tmp_path):
    from ray.serve import Application

    from tokentree.cluster.builder import app_builder

    app = app_builder({"flags": f"--replicas 3 --share-every 0 --max-batch 2 --target {tmp_path}"})
    assert isinstance(app, Application)
