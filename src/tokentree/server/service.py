"""The server's service: one object holding the generator, its worker, limits and metrics, whose
methods answer the routes (see :data:`tokentree.server.app.ROUTES`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..api import Generator
from ..api.rollouts import Rollout, RolloutTree
from ..errors import TokentreeError
from ..request import RequestError
from ..toolcalls import has_marker_tokens
from .config import ServeConfig
from .errors import APIError, error_body
from .limits import Limits
from .metrics import Metrics
from .protocol import ChatRequest, CompletionRequest, GenerationRequest, ToolPlan, openai_param
from .reply import Reply, sse
from .rollout_protocol import RolloutRequest
from .state_keeper import StateKeeper
from .worker import SHUTTING_DOWN, Job, QueueFull, Result, ShuttingDown, Worker

POLL_S = 0.25  # how often a waiting request checks its client and its deadlines
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}  # no proxy may buffer a stream


class Service:
    """The OpenAI-compatible service over one generator; with ``state_path`` the default drafter's
    learned state is saved there every ``config.save_every`` seconds and at shutdown."""

    def __init__(self, generator: Generator, config: ServeConfig, state_path: str | None = None):
        self.generator, self.config = generator, config
        self.model_name = config.served_model_name or default_model_name(generator.target.source)
        self.worker = Worker(generator, config.max_queue, config.max_batch)
        self.keeper = (
            None
            if state_path is None
            else StateKeeper(generator, self.worker, state_path, config.save_every)
        )
        self.metrics = Metrics()
        self.limits = Limits.of(config, generator.target.context_limit)
        self.model_card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "tokentree",
        }

    def start(self) -> None:
        self.worker.start()
        if self.keeper is not None:
            self.keeper.start()

    def stop(self) -> None:
        self.worker.stop()
        if self.keeper is not None:
            self.keeper.stop()  # the last save, once nothing learns any more

    # ------------------------------------------------------------------ routes
    async def health(self):
        worker = self.worker
        return {
            "status": "shutting_down" if worker.stopping else "ok",
            "model": self.model_name,
            "queue_depth": worker.depth,
            "batch_size": worker.batch_size,
        }

    async def metrics_text(self):
        self.metrics.set_queue_depth(self.worker.depth, self.worker.batch_size)
        return self.metrics.render()

    async def models(self):
        return {"object": "list", "data": [self.model_card]}

    async def model(self, model: str):
        if model != self.model_name:
            raise self.unknown_model(model)
        return self.model_card

    async def chat_completions(self, body: ChatRequest, request: Request):
        special = self.config.allow_special_in_content
        messages = body.messages_as_dicts()
        plan = body.tool_plan(has_marker_tokens(self.generator.tokenizer))
        tools = plan.rendered
        ids = await self.encode(
            lambda: self.generator.encode(messages, True, special, tools), "messages"
        )
        return await self.generate(request, body, ids, "messages", chat=True, plan=plan)

    async def completions(self, body: CompletionRequest, request: Request):
        ids = await self.encode(lambda: self.generator.encode(body.prompt, chat=False), "prompt")
        return await self.generate(request, body, ids, "prompt", chat=False)

    async def rollouts(self, body: RolloutRequest, request: Request):
        """A tree of sampled trajectories (tokentree's extension): its branches are sequences of
        the worker's batch, decoded beside the other requests."""
        if body.model is not None and body.model != self.model_name:
            raise self.unknown_model(body.model)
        chat, param = body.messages is not None, "messages" if body.messages else "prompt"
        prompt = [m.as_dict() for m in body.messages] if chat else body.prompt
        ids = await self.encode(lambda: self.generator.encode(prompt, chat), param)
        rollout = self.make_rollout(body, ids, param)
        job = Job(ids, rollout.request, asyncio.get_running_loop(), rollout=rollout)
        self.submit([job])
        started, tree = time.monotonic(), None
        async for _, kind, value in self.events(request, [job], started):
            if kind == "done":
                tree = value
            elif kind == "error":
                status, message = value
                raise APIError(status, message, type_="server_error" if status >= 500 else
                               "invalid_request_error")  # fmt: skip
        if tree is None:  # the client left
            return None
        self.metrics.request_done("rollout", 200, time.monotonic() - started)
        self.metrics.generation_done(len(ids), tree.new_tokens, {})
        return self.rollout_body(tree)

    def make_rollout(self, body: RolloutRequest, ids: list[int], param: str) -> Rollout:
        """The rollout the body asks for, on the worker's batch; APIError 400 when impossible."""
        request = body.to_request(self.limits, len(ids), param)
        policy = body.rollout_policy()
        if self.worker.session is None:
            raise APIError(400, "rollouts decode their branches together: start the server with "
                           f"--max-batch {policy.slots} or more", param="policy")  # fmt: skip
        try:
            self.generator.check(request)
            rollout = Rollout(self.generator, ids, request, policy, self.worker.session)
            rollout.check_room()
        except RequestError as exc:
            raise APIError(400, str(exc), param=openai_param(exc.field)) from None
        except TokentreeError as exc:
            raise APIError(400, str(exc), param="policy") from None
        return rollout

    def rollout_body(self, tree: RolloutTree) -> dict:
        decode = self.generator.tokenizer.decode
        return {
            "object": "tokentree.rollout",
            "created": int(time.time()),
            "model": self.model_name,
            "tree": tree.to_dict(),
            "texts": [decode(t.completion_ids) for t in tree.trajectories],
            "usage": {
                "prompt_tokens": len(tree.prompt_ids),
                "completion_tokens": tree.new_tokens,
                "total_tokens": len(tree.prompt_ids) + tree.new_tokens,
            },
        }

    # ------------------------------------------------------------------ a generation
    def unknown_model(self, name: str) -> APIError:
        return APIError(
            404,
            f"the model '{name}' does not exist: this server serves '{self.model_name}'",
            param="model",
            code="model_not_found",
        )

    async def encode(self, fn, param: str) -> list[int]:
        """Tokenize in a thread: a long prompt must not hold up the event loop (and every other
        client)."""
        try:
            ids = await run_in_threadpool(fn)
        except TokentreeError as exc:
            raise APIError(400, str(exc), param=param) from None
        self.limits.check_prompt(len(ids), param)
        return ids

    async def generate(
        self,
        request: Request,
        body: GenerationRequest,
        ids: list[int],
        param: str,
        chat: bool,
        plan: ToolPlan | None = None,
    ):
        """Queue the request's jobs and answer them (streamed or whole); ``plan``: a chat
        request's tools (their calls are parsed from the text) and tool-choice constraint."""
        jobs = self.make_jobs(body, ids, param, plan.constraint if plan else None)
        self.submit(jobs)
        started = time.monotonic()
        tools, decode = bool(plan and plan.tools), self.generator.tokenizer.decode
        reply = Reply(self.model_name, chat, len(ids), tools=tools, decode=decode)
        if body.stream:  # (None = false)
            return StreamingResponse(
                self.stream_events(request, jobs, reply, body.include_usage, started),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        pieces: list[list[str]] = [[] for _ in jobs]
        results: dict[int, Result] = {}
        async for index, kind, value in self.events(request, jobs, started):
            if kind == "text":
                pieces[index].append(value)
            elif kind == "logprobs":
                continue  # the result carries them all
            elif kind == "done":
                results[index] = value
                self.job_done(jobs[index], reply.prompt_tokens, value)
            else:
                status, message = value
                raise APIError(
                    status,
                    message,
                    type_="server_error" if status >= 500 else "invalid_request_error",
                )
        if len(results) < len(jobs):  # the client left
            return None
        self.metrics.request_done("generation", 200, time.monotonic() - started)
        return reply.whole(["".join(p) for p in pieces], [results[i] for i in range(len(jobs))])

    def make_jobs(
        self, body: GenerationRequest, ids: list[int], param: str, tool_constraint=None
    ) -> list[Job]:
        """The request's ``n`` jobs, sharing one event queue; choice i is seeded seed + i."""
        if body.model is not None and body.model != self.model_name:
            raise self.unknown_model(body.model)
        choices = body.n or 1
        self.limits.check_choices(choices)
        request = body.to_request(self.limits, len(ids), param, tool_constraint)
        try:
            self.generator.check(request)
        except RequestError as exc:
            raise APIError(400, str(exc), param=openai_param(exc.field)) from None
        first = Job(ids, request, asyncio.get_running_loop())
        jobs = [first]
        for index in range(1, choices):
            seed = None if request.seed is None else request.seed + index
            jobs.append(Job(ids, request.replace(seed=seed), first.loop, first.events, index))
        return jobs

    def submit(self, jobs: list[Job]) -> None:
        try:
            self.worker.submit(*jobs)
        except QueueFull:
            raise APIError(
                429,
                f"the server is busy ({self.config.max_queue} requests queued); retry shortly",
                type_="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise APIError(*SHUTTING_DOWN, type_="server_error") from None

    def job_done(self, job: Job, prompt_tokens: int, result: Result) -> None:
        self.metrics.generation_done(prompt_tokens, result.completion_tokens, _hist(result.stats),
                                     result.stats.get("cached_prompt_tokens", 0))  # fmt: skip
        self.metrics.waited(job.started_at - job.queued_at)

    async def events(self, request: Request, jobs: list[Job], started: float) -> AsyncIterator:
        """(index, kind, value) events of the request's jobs until every one is done or one fails;
        cancels them on disconnect, timeout or the end of a shutdown's grace period. The client's
        connection is checked every POLL_S seconds, also while text keeps coming (a non-streaming
        client that left would otherwise go unnoticed)."""
        timeout = self.config.request_timeout
        deadline, checked = started + timeout, time.monotonic()
        queue, running = jobs[0].events, len(jobs)
        try:
            while True:
                now = time.monotonic()
                if now > deadline:
                    yield 0, "error", (504, f"the request took longer than {timeout:g} s")
                    return
                if self.worker.deadline is not None and now > self.worker.deadline:
                    yield 0, "error", SHUTTING_DOWN  # the shutdown's grace period is over
                    return
                if now - checked >= POLL_S:
                    checked = now
                    if await request.is_disconnected():
                        return
                try:
                    index, kind, value = await asyncio.wait_for(queue.get(), timeout=POLL_S)
                except asyncio.TimeoutError:
                    continue
                yield index, kind, value
                running -= kind == "done"
                if kind == "error" or not running:
                    return
        finally:
            for job in jobs:
                job.cancel()  # no-op when finished; frees the worker at the next step otherwise

    async def stream_events(
        self, request: Request, jobs: list[Job], reply: Reply, include_usage: bool, started: float
    ) -> AsyncIterator[str]:
        for job in jobs:
            yield sse(reply.chunk(job.index, role=True))
        results: list[Result] = []
        async for index, kind, value in self.events(request, jobs, started):
            if kind == "text":
                for chunk in reply.text_chunks(index, value):
                    yield sse(chunk)
            elif kind == "logprobs":
                reply.add_logprobs(index, value)
            elif kind == "done":
                results.append(value)
                self.job_done(jobs[index], reply.prompt_tokens, value)
                for chunk in reply.finish_chunks(index, value):
                    yield sse(chunk)
                if len(results) == len(jobs):
                    self.metrics.request_done("generation", 200, time.monotonic() - started)
                    if include_usage:
                        yield sse(reply.usage_chunk(results))
            else:
                status, message = value
                kind = "server_error" if status >= 500 else "invalid_request_error"
                yield sse(error_body(message, kind, code=str(status)))
        yield "data: [DONE]\n\n"


def default_model_name(source: str) -> str:
    """A local path's directory or file stem; a hub id or embedded name as given."""
    path = Path(source)
    return path.stem if path.exists() else source


def _hist(stats: dict) -> dict[int, int]:
    return {int(k): v for k, v in stats.get("accepted_hist", {}).items()}
