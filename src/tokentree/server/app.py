"""The FastAPI application: OpenAI routes, SSE streaming, auth, errors, health and metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import Generator
from ..drafters import DRAFTERS
from ..errors import TokentreeError
from .config import ServeConfig
from .gate import Gate
from .metrics import Metrics
from .protocol import ChatRequest, CompletionRequest, GenerationRequest, error_body
from .state_keeper import StateKeeper
from .worker import SHUTTING_DOWN, Job, QueueFull, Result, ShuttingDown, Worker

POLL_S = 0.25  # how often a waiting request checks its client and its deadlines
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}  # no proxy may buffer a stream


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type, self.headers = (
            status,
            message,
            param,
            code,
            type_,
            headers,
        )


def create_app(generator: Generator, config: ServeConfig, state_path: str | None = None) -> FastAPI:
    """The OpenAI-compatible app; with ``state_path`` the default drafter's learned state is saved
    there every ``config.save_every`` seconds and at shutdown."""
    model_name = config.served_model_name or default_model_name(generator.target.source)
    worker = Worker(generator, config.max_queue, config.max_batch)
    keeper = (
        None
        if state_path is None
        else StateKeeper(generator, worker, state_path, config.save_every)
    )
    metrics = Metrics()
    context_limit = generator.target.context_limit or 1 << 30
    prompt_limit = min(context_limit, config.max_prompt_tokens or context_limit)
    new_token_limit = min(context_limit, config.max_tokens_limit or context_limit)
    prompt_limit_name = (
        "the model's context" if prompt_limit == context_limit else "--max-prompt-tokens"
    )
    new_token_limit_name = (
        "the model's context" if new_token_limit == context_limit else "--max-tokens-limit"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        if keeper is not None:
            keeper.start()
        yield
        worker.stop()
        if keeper is not None:
            keeper.stop()  # the last save, once nothing learns any more

    app = FastAPI(title="tokentree", lifespan=lifespan)
    app.state.worker, app.state.metrics, app.state.keeper = worker, metrics, keeper
    install_error_handlers(app)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {
            "status": "shutting_down" if worker.stopping else "ok",
            "model": model_name,
            "queue_depth": worker.depth,
            "batch_size": worker.batch_size,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text():
        metrics.set_queue_depth(worker.depth, worker.batch_size)
        return metrics.render()

    model_card = {"id": model_name, "object": "model", "created": 0, "owned_by": "tokentree"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != model_name:
            raise unknown_model(model)
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        special = config.allow_special_in_content
        ids = await encode(lambda: generator.encode(messages, True, special), "messages")
        return await generate(request, body, ids, "messages", chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        ids = await encode(lambda: generator.encode(body.prompt, chat=False), "prompt")
        return await generate(request, body, ids, "prompt", chat=False)

    def unknown_model(name: str) -> APIError:
        return APIError(
            404,
            f"the model '{name}' does not exist: this server serves '{model_name}'",
            param="model",
            code="model_not_found",
        )

    async def encode(fn, param: str) -> list[int]:
        """Tokenize in a thread: a long prompt must not hold up the event loop (and every other
        client)."""
        try:
            ids = await run_in_threadpool(fn)
        except TokentreeError as exc:
            raise APIError(400, str(exc), param=param) from None
        if len(ids) > prompt_limit:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens, over {prompt_limit_name} of {prompt_limit} "
                "tokens",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    async def generate(
        request: Request,
        body: ChatRequest | CompletionRequest,
        ids: list[int],
        param: str,
        chat: bool,
    ):
        choices = body.n or 1
        if choices > 1 and config.max_batch < 2:
            raise APIError(
                400, "n > 1 needs a server started with --max-batch 2 or more", param="n"
            )
        if choices > config.max_queue:  # it could never be queued: a 429 would be retried forever
            raise APIError(
                400,
                f"n = {choices} can never be served: this server queues at most "
                f"{config.max_queue} requests (--max-queue)",
                param="n",
            )
        jobs = make_jobs(body, ids, param, choices)
        try:
            worker.submit(*jobs)
        except QueueFull:
            raise APIError(
                429,
                f"the server is busy ({config.max_queue} requests queued); retry shortly",
                type_="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise APIError(*SHUTTING_DOWN, type_="server_error") from None
        started = time.monotonic()
        reply = Reply(model_name, chat, len(ids))
        if body.stream:  # (None = false)
            return StreamingResponse(
                stream_events(request, jobs, reply, body.include_usage, started),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        pieces: list[list[str]] = [[] for _ in jobs]
        results: dict[int, Result] = {}
        async for index, kind, value in events(request, jobs, started):
            if kind == "text":
                pieces[index].append(value)
            elif kind == "done":
                results[index] = value
                metrics.generation_done(len(ids), value.completion_tokens, _hist(value.stats))
                metrics.waited(jobs[index].started_at - jobs[index].queued_at)
            else:
                status, message = value
                raise APIError(
                    status,
                    message,
                    type_="server_error" if status >= 500 else "invalid_request_error",
                )
        if len(results) < len(jobs):  # the client left
            return None
        metrics.request_done("generation", 200, time.monotonic() - started)
        return reply.whole(["".join(p) for p in pieces], [results[i] for i in range(len(jobs))])

    def make_jobs(body: GenerationRequest, ids: list[int], param: str, choices: int) -> list[Job]:
        """The request's ``choices`` jobs, sharing one event queue; choice i is seeded seed + i."""
        first = make_job(body, ids, param)
        jobs = [first]
        for index in range(1, choices):
            seed = first.options["seed"]
            options = first.options | {"seed": None if seed is None else seed + index}
            jobs.append(Job(ids, options, first.drafter, first.loop, first.events, index))
        return jobs

    def make_job(body: GenerationRequest, ids: list[int], param: str) -> Job:
        if body.model is not None and body.model != model_name:
            raise unknown_model(body.model)
        stops = body.stops
        if len(stops) > config.max_stops or any(
            not 0 < len(stop) <= config.max_stop_length for stop in stops
        ):
            raise APIError(
                400,
                f"give at most {config.max_stops} stop strings of 1 to {config.max_stop_length} "
                "characters",
                param="stop",
            )
        if body.token_limit is not None and body.token_limit > new_token_limit:
            raise APIError(
                400,
                f"max_tokens {body.token_limit} is over {new_token_limit_name} of "
                f"{new_token_limit} tokens",
                param="max_tokens",
            )
        extra = body.tokentree
        drafter = extra.drafter if extra else None
        if drafter is not None and drafter not in DRAFTERS:
            raise APIError(
                400,
                f"unknown drafter '{drafter}': choose one of {', '.join(DRAFTERS)}",
                param="tokentree.drafter",
            )
        if drafter is not None and DRAFTERS[drafter].needs_draft and generator.draft is None:
            raise APIError(
                400,
                f"drafter '{drafter}' needs a draft model; start the server with --draft",
                param="tokentree.drafter",
            )
        room = context_limit - len(ids)
        max_new = body.token_limit or min(config.default_max_tokens, new_token_limit, room)
        if max_new > room or room < 1:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens and asks for {max_new} more, over the model's "
                f"context of {context_limit} tokens",
                param=param,
                code="context_length_exceeded",
            )
        options = dict(
            max_new_tokens=max_new,
            stop=stops,
            budget=extra.budget if extra else None,
            **body.sampling(),
        )
        return Job(ids, options, drafter, asyncio.get_running_loop())

    async def events(request: Request, jobs: list[Job], started: float) -> AsyncIterator[tuple]:
        """(index, kind, value) events of the request's jobs until every one is done or one fails;
        cancels them on disconnect, timeout or the end of a shutdown's grace period. The client's
        connection is checked every POLL_S seconds, also while text keeps coming (a non-streaming
        client that left would otherwise go unnoticed)."""
        deadline = started + config.request_timeout
        checked = time.monotonic()
        queue, running = jobs[0].events, len(jobs)
        try:
            while True:
                now = time.monotonic()
                if now > deadline:
                    yield (
                        0,
                        "error",
                        (504, f"the request took longer than {config.request_timeout:g} s"),
                    )
                    return
                if worker.deadline is not None and now > worker.deadline:
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
        request: Request, jobs: list[Job], reply: "Reply", include_usage: bool, started: float
    ) -> AsyncIterator[str]:
        for job in jobs:
            yield sse(reply.chunk(job.index, role=True))
        results: list[Result] = []
        async for index, kind, value in events(request, jobs, started):
            if kind == "text":
                yield sse(reply.chunk(index, text=value))
            elif kind == "done":
                results.append(value)
                metrics.generation_done(
                    reply.prompt_tokens, value.completion_tokens, _hist(value.stats)
                )
                metrics.waited(jobs[index].started_at - jobs[index].queued_at)
                yield sse(reply.chunk(index, finish=value))
                if len(results) == len(jobs):
                    metrics.request_done("generation", 200, time.monotonic() - started)
                    if include_usage:
                        yield sse(reply.usage_chunk(results))
            else:
                status, message = value
                yield sse(
                    error_body(
                        message,
                        "server_error" if status >= 500 else "invalid_request_error",
                        code=str(status),
                    )
                )
        yield "data: [DONE]\n\n"

    routes = frozenset(
        {
            "/health",
            "/metrics",
            "/v1/models",
            "/v1/models/{model}",
            "/v1/chat/completions",
            "/v1/completions",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
            "/openapi.json",
        }
    )
    app.add_middleware(
        Gate,
        metrics=metrics,
        routes=routes,
        api_key=config.resolved_api_key(),
        max_body_bytes=config.max_body_bytes,
        read_timeout=config.read_timeout,
    )
    return app


def default_model_name(source: str) -> str:
    """A local path's directory or file stem; a hub id or embedded name as given."""
    path = Path(source)
    return path.stem if path.exists() else source


def _hist(stats: dict) -> dict[int, int]:
    return {int(k): v for k, v in stats.get("accepted_hist", {}).items()}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class Reply:
    """Builds OpenAI response bodies and stream chunks for one request."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int):
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage(self, results: list[Result]) -> dict:
        completion = sum(result.completion_tokens for result in results)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _choice(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        role: bool = False,
        whole: bool = False,
    ) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        if whole:
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        delta = ({"role": "assistant", "content": ""} if role else {}) | (
            {"content": text} if text else {}
        )
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

    def whole(self, texts: list[str], results: list[Result]) -> dict:
        """The whole response: choice i is ``texts[i]``; tokentree's statistics are the first
        choice's."""
        choices = [
            self._choice(i, text, result.finish_reason, whole=True)
            for i, (text, result) in enumerate(zip(texts, results))
        ]
        return self._envelope(choices, chunk=False) | {
            "usage": self._usage(results),
            "tokentree": results[0].stats,
        }

    def chunk(
        self, index: int, text: str | None = None, role: bool = False, finish: Result | None = None
    ) -> dict:
        choice = self._choice(index, text, finish.finish_reason if finish else None, role=role)
        body = self._envelope([choice], chunk=True)
        return body | ({"tokentree": finish.stats} if finish else {})

    def usage_chunk(self, results: list[Result]) -> dict:
        return self._envelope([], chunk=True) | {"usage": self._usage(results)}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI-style JSON with a 4xx (or, for a bug, 500) status."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(
            error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, where = validation_message(exc.errors())
        return JSONResponse(
            error_body(f"{where}: {message}" if where else message, param=where or None), 400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(
            error_body(str(exc.detail), code=str(exc.status_code)),
            exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        return JSONResponse(error_body("internal error (see the server log)", "server_error"), 500)


def _union_tag(part) -> bool:
    """pydantic names the member of a union in an error's location ('str', 'list[TextPart]',
    ...)."""
    return isinstance(part, str) and (
        "[" in part or part in ("str", "int", "float", "bool", "dict", "list")
    )


def validation_message(errors: list[dict]) -> tuple[str, str]:
    """(message, the field it is about or "") for pydantic's first error, in a client's words."""
    first = next(
        (e for e in errors if e.get("type") == "value_error"),
        errors[0]
        if errors
        # our checks first
        else {"loc": (), "msg": "invalid request", "type": ""},
    )
    loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _union_tag(part)]
    if first.get("type") == "json_invalid":  # loc is (body, character position)
        error = first.get("ctx", {}).get("error", "")
        return f"malformed JSON at character {loc[0] if loc else '?'}" + (
            f": {error}" if error else ""
        ), ""
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the body must be a JSON object (send it with Content-Type: application/json)", ""
    return first.get("msg", "invalid request").removeprefix("Value error, "), ".".join(loc)
