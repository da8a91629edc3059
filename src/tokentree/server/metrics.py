"""Prometheus metrics in the text exposition format (counters, gauges, histograms; no
dependency)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ACCEPTED_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:g}",
            f"{name}_count {self.count}",
        ]
        return out


class Metrics:
    """The server's metrics; every method is thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generated_tokens = 0
        self.steps = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.accepted = Histogram(ACCEPTED_BUCKETS)
        self.queue_depth = 0
        self.batch_size = 0
        self.queue_wait = Histogram(LATENCY_BUCKETS)

    def request_done(self, endpoint: str, status: int, latency_s: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if latency_s is not None:
                self.latency.observe(latency_s)

    def generation_done(
        self, prompt_tokens: int, new_tokens: int, accepted_hist: dict[int, int], cached: int = 0
    ) -> None:
        """A finished generation; ``cached``: its prompt tokens found in the cache (not
        forwarded again)."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.cached_prompt_tokens += cached
            self.generated_tokens += new_tokens
            for accepted, steps in accepted_hist.items():
                self.accepted.observe(accepted, steps)
                self.steps += steps

    def set_queue_depth(self, depth: int, batch_size: int = 0) -> None:
        with self._lock:
            self.queue_depth, self.batch_size = depth, batch_size

    def waited(self, seconds: float) -> None:
        """A job started ``seconds`` after it was queued."""
        with self._lock:
            self.queue_wait.observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP tokentree_requests_total HTTP requests by endpoint and status.",
                "# TYPE tokentree_requests_total counter",
            ]
            lines += [
                f'tokentree_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                for (e, s), n in sorted(self.requests.items())
            ]
            lines += [
                "# TYPE tokentree_prompt_tokens_total counter",
                f"tokentree_prompt_tokens_total {self.prompt_tokens}",
                "# HELP tokentree_cached_prompt_tokens_total Prompt tokens found in the cache.",
                "# TYPE tokentree_cached_prompt_tokens_total counter",
                f"tokentree_cached_prompt_tokens_total {self.cached_prompt_tokens}",
                "# TYPE tokentree_generated_tokens_total counter",
                f"tokentree_generated_tokens_total {self.generated_tokens}",
                "# TYPE tokentree_steps_total counter",
                f"tokentree_steps_total {self.steps}",
                "# HELP tokentree_queue_depth Requests waiting or running.",
                "# TYPE tokentree_queue_depth gauge",
                f"tokentree_queue_depth {self.queue_depth}",
                "# HELP tokentree_batch_size Requests decoded together now.",
                "# TYPE tokentree_batch_size gauge",
                f"tokentree_batch_size {self.batch_size}",
                "# HELP tokentree_queue_wait_seconds Time from a request's arrival to its first "
                "step.",
                "# TYPE tokentree_queue_wait_seconds histogram",
            ]
            lines += self.queue_wait.lines("tokentree_queue_wait_seconds")
            lines += [
                "# HELP tokentree_request_latency_seconds Time from request to last byte.",
                "# TYPE tokentree_request_latency_seconds histogram",
            ]
            lines += self.latency.lines("tokentree_request_latency_seconds")
            lines += [
                "# HELP tokentree_accepted_tokens_per_step Drafted tokens accepted per verify "
                "step (tau - 1).",
                "# TYPE tokentree_accepted_tokens_per_step histogram",
            ]
            lines += self.accepted.lines("tokentree_accepted_tokens_per_step")
        return "\n".join(lines) + "\n"
