"""The server keeps what its drafters learned, holds every limit, and cuts slow clients."""

import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import tiny_model, tiny_tokenizer
from test_server import MESSAGES, SlowDrafter, running_server

from tokentree.api import Generator
from tokentree.drafters import make_drafter
from tokentree.drafters.state import load_state, save_state
from tokentree.errors import TokentreeError
from tokentree.models import LoadedModel
from tokentree.server.run import redact_query_secrets
from tokentree.server.state_keeper import prepare_state_file

MODEL = "tiny"


def stand_generator() -> Generator:
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), MODEL)
    return Generator(target, make_drafter("stand"))


def chat(url: str, **body) -> httpx.Response:
    body = {"messages": MESSAGES, "temperature": 0} | body
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def stand_entries(path) -> int:
    document = json.loads(gzip.decompress(path.read_bytes()))
    return len(document["state"]["table"])


# ------------------------------------------------------------------ learned state survives
def test_state_is_saved_periodically_and_at_shutdown(tmp_path):
    path = tmp_path / "stand.state"
    gen = stand_generator()
    with running_server(gen, save_every=0.2, state_path=str(path)) as (url, server):
        assert chat(url, max_tokens=24).status_code == 200
        deadline = time.monotonic() + 10
        while not path.exists() or stand_entries(path) == 0:
            assert time.monotonic() < deadline, "no periodic save with what the request taught"
            time.sleep(0.05)
        keeper = server.config.app.state.keeper
        periodic = keeper.saves
    assert keeper.saves == periodic + 1  # and once more at shutdown
    fresh = make_drafter("stand")
    load_state(fresh, path, gen.vocab_signature, gen.backend.vocab_size)
    assert fresh.state_dict()["table"] == gen.drafter.state_dict()["table"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_cleanly_saves_the_state_and_exits_0(saved_tiny_model, tmp_path, sig):
    path = tmp_path / "auto.state"
    port = free_port()
    command = [sys.executable, "-m", "tokentree.cli", "serve", "--target", str(saved_tiny_model)]
    command += ["--dtype", "float32", "--drafter", "stand", "--drafter-state", str(path)]
    command += ["--port", str(port), "--save-every", "0"]  # saved only at shutdown
    cache = tmp_path / "cache"  # no profile yet: measured before the server listens
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ | {"TOKENTREE_CACHE": str(cache)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        assert len(list((cache / "profiles").glob("*.json"))) == 1  # ready: no request pays
        assert chat(url, max_tokens=16).status_code == 200
        assert not path.exists()
        server.send_signal(sig)
        code = server.wait(timeout=30)
    finally:
        server.kill()
    output = server.stdout.read().decode()
    assert code == 0, output
    assert path.exists() and stand_entries(path) > 0
    assert "Traceback" not in output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_malformed_state_files_get_one_line_and_are_left_alone(tmp_path):
    gen = stand_generator()
    for name, state in (("missing", None), ("list", [1, 2])):
        path = tmp_path / name
        document = {"format": "tokentree-drafter-state", "version": 1, "drafter": "stand"}
        document |= {"vocab": gen.vocab_signature}
        if state is not None:
            document["state"] = state
        path.write_bytes(gzip.compress(json.dumps(document).encode()))
        before = path.read_bytes()
        with pytest.raises(TokentreeError, match="malformed"):
            load_state(make_drafter("stand"), path, gen.vocab_signature, 96)
        assert path.read_bytes() == before


def test_the_cli_refuses_a_malformed_state_file_with_exit_2(saved_tiny_model, tmp_path):
    path = tmp_path / "bad.state"
    document = {"format": "tokentree-drafter-state", "version": 1, "drafter": "stand"}
    gen = stand_generator()
    document |= {"vocab": gen.vocab_signature, "state": []}
    path.write_bytes(gzip.compress(json.dumps(document).encode()))
    command = [sys.executable, "-m", "tokentree.cli", "generate", "hi", "--target"]
    command += [str(saved_tiny_model), "--dtype", "float32", "--drafter", "stand"]
    command += ["--drafter-state", str(path), "--max-new-tokens", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "malformed" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unusable_state_path_is_refused_at_start(tmp_path):
    with pytest.raises(TokentreeError, match="does not exist"):
        prepare_state_file(tmp_path / "missing" / "x.state")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TokentreeError, match="--drafter-state"):
        prepare_state_file(blocker / "x.state")


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    path = tmp_path / "s.state"
    save_state(make_drafter("stand"), path, "v")
    stale = [tmp_path / "s.state.abc123.tmp", tmp_path / "s.state.zz.tmp"]
    for f in stale:
        f.write_bytes(b"half a save")
    other = tmp_path / "other.state.q.tmp"
    other.write_bytes(b"someone else's")
    prepare_state_file(path)
    assert not any(f.exists() for f in stale) and other.exists() and path.exists()


# ------------------------------------------------------------------ limits
def test_the_default_max_tokens_respects_the_limit():
    with running_server(stand_generator(), max_tokens_limit=4) as (url, _):
        response = chat(url)  # no max_tokens: the default (512) would pass the limit
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] <= 4
        assert chat(url, max_tokens=5).status_code == 400


def test_n_beyond_the_queue_is_a_400_not_a_429():
    with running_server(stand_generator(), max_batch=2, max_queue=2) as (url, _):
        response = chat(url, n=3, max_tokens=2)
        assert response.status_code == 400 and "--max-queue" in response.json()["error"]["message"]
        assert chat(url, n=2, max_tokens=2).status_code == 200


def test_a_key_in_the_query_string_never_reaches_the_access_log():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/models?api_key=sesame&x=1", "1.1", 401), None,
    )  # fmt: skip
    assert redact_query_secrets(record)
    assert "sesame" not in record.getMessage() and "x=1" in record.getMessage()


# ------------------------------------------------------------------ slow clients
def test_slow_headers_slow_bodies_and_idle_connections_are_cut():
    with running_server(stand_generator(), read_timeout=0.5) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never ends
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100\r\n\r\n{"
        )  # 1 of 100 bytes
        idle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        health = [httpx.get(url + "/health").elapsed.total_seconds() for _ in range(20)]
        assert max(health) < 0.25
        for sock in (trickle, body, idle):
            sock.settimeout(5)
            reply = b""
            while chunk := sock.recv(4096):  # b"" once the server closes the connection
                reply += chunk
            if sock is body:
                assert b" 408 " in reply.split(b"\r\n")[0]
            sock.close()
        assert time.monotonic() - started < 3


def test_slow_clients_do_not_stall_a_generation():
    with running_server(tiny_generator_slow(), read_timeout=0.3) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        for sock in clients:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert chat(url, max_tokens=8).status_code == 200
        for sock in clients:
            sock.close()


def tiny_generator_slow() -> Generator:
    target = LoadedModel(tiny_model("llama", seed=5), tiny_tokenizer(), MODEL)
    return Generator(target, SlowDrafter(0.01))
