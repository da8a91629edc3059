"""A short soak run of `tokentree serve`: mixed requests from concurrent clients (see
docs/server.md).

python benchmarks/soak/soak.py --url http://127.0.0.1:8123 --pid PID --requests 200 --clients 16
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

PROMPTS = [
    "Write a haiku about rain.",
    "What is 17 * 23?",
    "Name three prime numbers.",
    "Translate 'good morning' to French.",
    "def add(a, b):",
]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def one(url: str, i: int, rng: random.Random) -> tuple[str, int, bool]:
    """(kind, status, complete) of one request; complete: a valid answer arrived whole."""
    chat = url + "/v1/chat/completions"
    body = {
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": 8,
        "temperature": 0,
    }
    kind = rng.choices(["plain", "stream", "leave", "invalid", "over"], [40, 30, 10, 10, 10])[0]
    if kind == "plain":
        r = httpx.post(chat, json=body, timeout=300)
        finished = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in (
            "stop",
            "length",
        )
        return kind, r.status_code, finished
    if kind in ("stream", "leave"):
        with httpx.stream("POST", chat, json=body | {"stream": True}, timeout=300) as r:
            lines = r.iter_lines()
            if kind == "leave" or r.status_code != 200:
                next(lines, None)
                return kind, r.status_code, r.status_code != 200 or kind == "leave"
            data = [ln for ln in lines if ln.startswith("data: ")]
            return kind, r.status_code, data[-1] == "data: [DONE]" and "finish_reason" in data[-2]
    if kind == "invalid":
        bad = rng.choice(
            [
                b"{not json",
                json.dumps({"messages": [{"role": "user", "content": "\ud800"}]}).encode(),
                json.dumps(body | {"max_tokens": "8"}).encode(),
                json.dumps(body | {"tools": [{}]}).encode(),
            ]
        )
        r = httpx.post(chat, content=bad, headers={"content-type": "application/json"}, timeout=60)
        return kind, r.status_code, r.status_code == 400
    over = rng.choice(
        [
            body | {"stop": ["x" * 1000]},
            body | {"max_tokens": 10**6},
            {"messages": [{"role": "user", "content": "x" * (5 << 20)}]},
        ]
    )
    r = httpx.post(chat, json=over, timeout=60)
    return kind, r.status_code, r.status_code in (400, 413)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8123")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    before = rss_mb(args.pid)
    health, done = [], threading.Event()

    def probe():
        while not done.is_set():
            start = time.perf_counter()
            httpx.get(args.url + "/health", timeout=30)
            health.append(time.perf_counter() - start)
            time.sleep(0.5)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda i: one(args.url, i, random.Random(i)), range(args.requests)))
    wall = time.perf_counter() - start
    done.set()
    prober.join()
    time.sleep(1)
    after = rss_mb(args.pid)
    statuses = Counter(status for _, status, _ in results)
    kinds = Counter(kind for kind, _, _ in results)
    incomplete = [r for r in results if r[1] != 429 and not r[2]]
    metrics = httpx.get(args.url + "/metrics").text
    served = {
        m.group(1): int(m.group(2))
        for m in re.finditer(
            r'tokentree_requests_total\{endpoint="/v1/chat/completions",status="(\d+)"\} (\d+)',
            metrics,
        )
    }
    report = {
        "requests": args.requests,
        "clients": args.clients,
        "wall_s": round(wall, 1),
        "kinds": dict(kinds),
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "incomplete_or_wrong": len(incomplete),
        "health_p50_ms": round(statistics.median(health) * 1e3, 1),
        "health_max_ms": round(max(health) * 1e3, 1),
        "health_probes": len(health),
        "rss_mb_before": round(before),
        "rss_mb_after": round(after),
        "metrics_chat_by_status": served,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
