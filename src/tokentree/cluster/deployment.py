"""The Ray Serve application: ``TokentreeReplica`` (a model, its drafters and batch worker, and the
whole single-machine app run in process for each request) behind ``TokentreeIngress`` (HTTP: reads
a request once, names its conversation, hands it to the replicas' router, streams the answer)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import AsyncIterator

from ray import serve
from ray.serve.config import RequestRouterConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..server.config import ServeConfig
from ..server.errors import error_body
from ..server.gate import bearer_matches
from .asgi import Envelope, call_app
from .config import ClusterConfig
from .knowledge import KnowledgeSharer, KnowledgeStore
from .metrics import merge_metrics
from .router import SessionAffinityRouter
from .session_key import session_key

log = logging.getLogger("tokentree.cluster")
STORE_NAME = "tokentree-knowledge"  # the deployment's knowledge store actor
REPLICA_HEADER = "x-tokentree-replica"  # which replica answered (and its process id)
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
STREAM_FAILED = (
    b'data: {"error": {"message": "the replica serving this stream failed", '
    b'"type": "server_error", "param": null, "code": "503"}}\n\ndata: [DONE]\n\n'
)


class TokentreeReplica:
    """One model replica: what ``tokentree serve`` runs on one machine, answering forwarded
    requests through its own app (gate, limits, errors, streaming, metrics), plus the exchange of
    drafter knowledge through ``store``."""

    service = sharer = None  # (a replica whose model failed to load has neither)

    def __init__(self, args, config: ServeConfig, cluster: ClusterConfig, store):
        from ..cli.flags import drafter_options
        from ..cli.model_flags import load_from_args
        from ..server.app import create_app

        gen = load_from_args(
            args, args.drafter, args.draft, args.budget, args.drafter_state,
            **drafter_options(args),
        )  # fmt: skip
        gen.cost_profile()
        gen.grammar.warm()
        self.app = create_app(gen, config)  # no state saves: replicas share knowledge instead
        self.service = self.app.state.service
        self.service.start()
        self.name = serve.get_replica_context().replica_id.unique_id
        self.label = f"{self.name}/{os.getpid()}"
        if cluster.share_every and store is not None:
            self.sharer = KnowledgeSharer(
                gen.drafter, self.service.worker.between_steps, store, self.name,
                cluster.share_every, self._metrics_text,
            )  # fmt: skip
            self.sharer.start()

    def _metrics_text(self) -> str:
        metrics, worker = self.service.metrics, self.service.worker
        metrics.set_queue_depth(worker.depth, worker.batch_size)
        return metrics.render()

    async def handle(self, envelope: Envelope, session: str | None = None) -> AsyncIterator:
        """The app's answer to ``envelope``: its start (status, headers, this replica named), then
        its body's chunks. ``session`` is read by the router only."""
        async for item in call_app(self.app, envelope):
            if isinstance(item, dict):
                item["headers"].append((REPLICA_HEADER, self.label))
            yield item

    async def check_health(self) -> None:
        if not self.service.worker.alive:
            raise RuntimeError("the replica's model worker stopped")

    def __del__(self) -> None:
        if self.sharer is not None:
            self.sharer.stop()  # its last delta, before the worker stops
        if self.service is not None:
            self.service.stop()


class TokentreeIngress:
    """The HTTP door of the deployment (Ray Serve hands it each request; it answers
    ``GET /metrics`` for the whole deployment and forwards everything else)."""

    def __init__(self, replicas, store, config: ServeConfig, cluster: ClusterConfig):
        self.replicas, self.store, self.config = replicas, store, config
        self.affinity, self.api_key = cluster.affinity, config.resolved_api_key()

    async def __call__(self, request: Request):
        if request.method == "GET" and request.url.path == "/metrics":
            return await self.metrics(request)
        return await self.forward(request)

    async def metrics(self, request: Request):
        """Every replica's metrics, each sample labelled with its replica."""
        if self.api_key and not bearer_matches(request.headers.get("authorization", ""),
                                               self.api_key):  # fmt: skip
            return JSONResponse(error_body("invalid or missing API key", code="invalid_api_key"),
                                status_code=401)  # fmt: skip
        texts = await self.store.all_metrics.remote() if self.store is not None else {}
        return PlainTextResponse(merge_metrics(texts))

    async def forward(self, request: Request):
        body = await self._body(request)
        if body is None:
            limit = self.config.max_body_bytes
            return JSONResponse(error_body(f"the request body exceeds {limit} bytes",
                                           code="body_too_large"), status_code=413)  # fmt: skip
        envelope = {
            "method": request.method, "path": request.url.path, "query": request.url.query,
            "headers": list(request.headers.items()), "body": body,
            "client": (request.client.host, request.client.port) if request.client else None,
        }  # fmt: skip
        session = session_key(envelope["headers"], body) if self.affinity else None
        stream = self.replicas.options(stream=True, method_name="handle").remote(
            envelope, session=session
        )
        try:
            start = await asyncio.wait_for(stream.__anext__(), self.config.request_timeout)
        except Exception as exc:  # noqa: BLE001 - a dead replica, a full deployment, a timeout
            stream.cancel()
            return failure(exc)
        headers = {k: v for k, v in start["headers"] if k.lower() not in HOP_HEADERS}
        sse = headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(rest(stream, sse), status_code=start["status"], headers=headers)

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None once it passes ``max_body_bytes``."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


async def rest(stream, sse: bool) -> AsyncIterator[bytes]:
    """The answer's body; a stream whose replica dies ends with an error event and [DONE]."""
    try:
        async for chunk in stream:
            yield chunk
    except Exception:  # noqa: BLE001 - the replica died mid-answer
        log.exception("a replica failed while streaming")
        if sse:
            yield STREAM_FAILED
    finally:
        stream.cancel()  # the client left: the replica's app sees a disconnect


def failure(exc: Exception) -> JSONResponse:
    """The error a request gets when no replica could answer it."""
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        body = error_body("every replica is busy; retry shortly", "rate_limit_error",
                          code="queue_full")  # fmt: skip
        return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})
    if isinstance(exc, asyncio.TimeoutError):
        return JSONResponse(error_body("no replica answered in time", "server_error"),
                            status_code=504)  # fmt: skip
    log.warning("a request failed at its replica: %r", exc)
    return JSONResponse(error_body("the replica serving this request failed; retry",
                                   "server_error", code="replica_failed"),
                        status_code=503)  # fmt: skip


def build_app(args, config: ServeConfig, cluster: ClusterConfig):
    """The bound Serve application: the store, the replicas (with their resources, router,
    autoscaling and limits) and the ingress."""
    import ray

    if args.threads is None:  # each replica's engine threads: the cores it reserves
        args.threads = max(1, int(cluster.replica_cpus))
    store = None
    if cluster.share_every:  # detached: it outlives whoever built the app (a builder's task)
        store = (
            ray.remote(num_cpus=0)(KnowledgeStore)
            .options(name=STORE_NAME, lifetime="detached", get_if_exists=True)
            .remote()
        )
    router = (RequestRouterConfig(request_router_class=SessionAffinityRouter)
              if cluster.affinity else RequestRouterConfig())  # fmt: skip
    replica = serve.deployment(TokentreeReplica).options(
        name="tokentree-replica",
        num_replicas=None if cluster.autoscaling else cluster.replicas,
        autoscaling_config=cluster.autoscaling,
        ray_actor_options={"num_cpus": cluster.replica_cpus, "num_gpus": cluster.replica_gpus},
        max_ongoing_requests=config.max_batch + 1,  # a full batch and one waiting: then elsewhere
        max_queued_requests=config.max_queue,
        request_router_config=router,
        health_check_period_s=2,
        graceful_shutdown_timeout_s=config.shutdown_grace,
        logging_config={"log_level": "WARNING"},  # not a line per request
    )
    ingress = serve.deployment(TokentreeIngress).options(
        name="tokentree-ingress", ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=config.max_connections, logging_config={"log_level": "WARNING"},
    )  # fmt: skip
    return ingress.bind(replica.bind(args, config, cluster, store), store, config, cluster)
