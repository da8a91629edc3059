"""Replicas against one server, on this machine: each configuration started as a user starts it
(``tokentree serve ...``), then loaded by concurrent clients.

- ``load``: 16 clients, each sending completions one after another (distinct HumanEval/Spec-Bench
  prompts, greedy): aggregate tokens/s and p50/p99 latency, for one server with 2 threads, 1
  replica with 1 thread and 2 replicas with 1 thread each.
- ``agent``: conversations of the agent suite (four turns each, every turn resending the
  conversation so far), 4 at a time: prompt tokens found in the cache and tokens per step, for one
  server, and 2 replicas with and without affinity.
- ``knowledge``: a conversation's first turns on one replica, its next turn on the other: that
  turn's tokens per step with knowledge sharing, without it, and on the replica that served the
  earlier turns.

    python benchmarks/cluster_load.py --model tiny --scenario load --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from fresh_runs import write_run_json

from tokentree.bench.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
REPLICA = "x-tokentree-replica"


def tiny_model_dir(home: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_model, tiny_tokenizer

    path = home / "tiny-llama"
    tiny_model("llama", seed=5).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@contextmanager
def server(model: list[str], flags: list[str], log: Path):
    """``tokentree serve`` with ``flags`` on a free port, until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tokentree.cli", "serve", *model, *flags, "--port", str(port)]
    with open(log, "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        complete(url, "warm up", 4, {})
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def complete(url: str, prompt, tokens: int, headers: dict) -> dict:
    """One greedy completion (a chat when ``prompt`` is a list of messages): its seconds, tokens,
    stats and replica."""
    route, body = (
        ("/v1/chat/completions", {"messages": prompt})
        if isinstance(prompt, list)
        else ("/v1/completions", {"prompt": prompt})
    )
    started = time.perf_counter()
    reply = httpx.post(url + route, json=body | {"max_tokens": tokens, "temperature": 0},
                       headers=headers, timeout=600)  # fmt: skip
    reply.raise_for_status()
    answer = reply.json()
    choice = answer["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    tokens = answer["usage"]["completion_tokens"]
    return {
        "seconds": time.perf_counter() - started,
        "tokens": tokens,
        "stats": answer["tokentree"],
        "replica": reply.headers.get(REPLICA),
        "text": text,
    }


def load(url: str, prompts: list[str], clients: int, per_client: int, tokens: int) -> dict:
    def client(index: int) -> list[dict]:
        return [complete(url, prompts[(index * per_client + i) % len(prompts)], tokens, {})
                for i in range(per_client)]  # fmt: skip

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        records = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    latency = sorted(r["seconds"] for r in records)
    return {"requests": len(records), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in records) / wall,
            "p50_s": statistics.median(latency), "p99_s": latency[int(0.99 * (len(latency) - 1))],
            "replicas": sorted({r["replica"] for r in records if r["replica"]})}  # fmt: skip


TURN_CHARS = {"tiny": 50, "embedded": None}  # the tiny model's context holds 4 short turns


def conversations(count: int, model: str) -> list[list[str]]:
    return [[t[: TURN_CHARS[model]] for t in p.turns] for p in load_suite("agent")[:count]]


def run_conversation(url: str, turns: list[str], tokens: int, headers: dict) -> list[dict]:
    messages, records = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        record = complete(url, list(messages), tokens, headers)
        messages.append({"role": "assistant", "content": record["text"]})
        records.append(record)
    return records


def agent(url: str, talks: list[list[str]], tokens: int) -> dict:
    with ThreadPoolExecutor(4) as pool:
        records = [r for rs in pool.map(lambda t: run_conversation(url, t, tokens, {}), talks)
                   for r in rs]  # fmt: skip
    prompt = sum(r["stats"]["prompt_tokens"] for r in records)
    cached = sum(r["stats"]["cached_prompt_tokens"] for r in records)
    steps = sum(r["stats"]["steps"] for r in records)
    return {"turns": len(records), "prompt_tokens": prompt, "cached_prompt_tokens": cached,
            "cache_hit": cached / prompt, "tokens_per_step":
            sum(r["stats"]["new_tokens"] for r in records) / max(1, steps)}  # fmt: skip


def session_on_each_replica(url: str) -> list[str]:
    """Session keys that land on two different replicas."""
    found: dict[str, str] = {}
    for i in range(64):
        replica = complete(url, "x", 1, {"X-Session-ID": f"k{i}"})["replica"]
        found.setdefault(replica, f"k{i}")
        if len(found) == 2:
            return list(found.values())
    raise RuntimeError("one replica answered every session")


def knowledge(url: str, talks: list[list[str]], tokens: int, wait_s: float) -> dict:
    """Each conversation's first turns on replica A, the last turn on B (and on A again)."""
    home, away = session_on_each_replica(url)
    taus_away, taus_home = [], []
    for turns in talks:
        earlier = run_conversation(url, turns[:-1], tokens, {"X-Session-ID": home})
        time.sleep(wait_s)
        messages = []
        for turn, record in zip(turns, earlier):
            messages += [{"role": "user", "content": turn},
                         {"role": "assistant", "content": record["text"]}]  # fmt: skip
        messages.append({"role": "user", "content": turns[-1]})
        for session, taus in ((away, taus_away), (home, taus_home)):
            stats = complete(url, messages, tokens, {"X-Session-ID": session})["stats"]
            taus.append(stats["new_tokens"] / max(1, stats["steps"]))
    return {
        "tau_other_replica": statistics.mean(taus_away),
        "tau_same_replica": statistics.mean(taus_home),
        "conversations": len(talks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    parser.add_argument("--scenario", choices=("load", "agent", "knowledge"), default="load")
    parser.add_argument("--requests", type=int, default=4, help="load: per client")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, args)
    home = Path(tempfile.mkdtemp())
    model = (["--target", tiny_model_dir(home), "--dtype", "float32"] if args.model == "tiny"
             else ["--backend", "llamacpp"])  # fmt: skip
    log, results = out / "serve.log", {}
    prompts = [p.turns[0] for p in load_suite("humaneval")] + [
        p.turns[0] for p in load_suite("spec-bench")]  # fmt: skip
    if args.model == "tiny":  # its context is 512 characters-tokens
        prompts = [p[:200] for p in prompts]
    talks = conversations(args.conversations, args.model)
    for name, flags in configurations(args.scenario):
        with server(model, flags, log) as url:
            if args.scenario == "load":
                results[name] = load(url, prompts, args.clients, args.requests, args.max_tokens)
            elif args.scenario == "agent":
                results[name] = agent(url, talks, args.max_tokens)
            else:
                results[name] = knowledge(url, talks, args.max_tokens, 3.0)
        print(name, json.dumps(results[name]), flush=True)
    (out / f"{args.scenario}.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


def configurations(scenario: str) -> list[tuple[str, list[str]]]:
    if scenario == "load":
        return [
            ("one server, 2 threads", ["--threads", "2"]),
            (
                "1 replica, 1 thread",
                ["--min-replicas", "1", "--max-replicas", "1", "--replica-cpus", "1"],
            ),
            ("2 replicas, 1 thread each", ["--replicas", "2", "--replica-cpus", "1"]),
        ]
    if scenario == "agent":
        return [("one server", ["--threads", "2"]),
                ("2 replicas, affinity", ["--replicas", "2", "--replica-cpus", "1"]),
                ("2 replicas, no affinity", ["--replicas", "2", "--replica-cpus", "1",
                                             "--affinity", "false"])]  # fmt: skip
    return [
        ("sharing every 1 s", ["--replicas", "2", "--replica-cpus", "1", "--share-every", "1"]),
        ("no sharing", ["--replicas", "2", "--replica-cpus", "1", "--share-every", "0"]),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
