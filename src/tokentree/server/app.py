"""The FastAPI application: OpenAI routes, SSE streaming, auth, errors, health and metrics."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import Generator
from ..drafters import DRAFTERS
from ..errors import TokentreeError
from .config import ServeConfig
from .metrics import Metrics
from .protocol import ChatRequest, CompletionRequest, GenerationRequest, error_body
from .worker import Job, QueueFull, Result, ShuttingDown, Worker


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type, self.headers = (
            status, message, param, code, type_, headers)


def create_app(generator: Generator, config: ServeConfig) -> FastAPI:
    model_name = config.served_model_name or default_model_name(generator.target.source)
    worker = Worker(generator, config.max_queue)
    metrics = Metrics()
    context_limit = generator.target.context_limit or 1 << 30

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="tokentree", lifespan=lifespan)
    app.state.worker, app.state.metrics = worker, metrics
    install_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        metrics.request_done(request.url.path, response.status_code)
        return response

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queue_depth": worker.depth}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text():
        metrics.set_queue_depth(worker.depth)
        return metrics.render()

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "tokentree"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = encode(lambda: generator.encode(messages, chat=True), "messages")
        return await generate(request, body, ids, "messages", chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        ids = encode(lambda: generator.encode(body.prompt, chat=False), "prompt")
        return await generate(request, body, ids, "prompt", chat=False)

    def encode(fn, param: str) -> list[int]:
        try:
            return fn()
        except TokentreeError as exc:
            raise APIError(400, str(exc), param=param) from None

    async def generate(request: Request, body: ChatRequest | CompletionRequest, ids: list[int], param: str,
                       chat: bool):
        job = make_job(body, ids, param)
        try:
            worker.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy ({config.max_queue} requests queued); retry shortly",
                           type_="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise APIError(503, "the server is shutting down", type_="server_error") from None
        started = time.monotonic()
        reply = Reply(model_name, chat, len(ids))
        if body.stream:
            return StreamingResponse(stream_events(request, job, reply, body.include_usage, started),
                                     media_type="text/event-stream")
        pieces = []
        async for kind, value in events(request, job, started):
            if kind == "text":
                pieces.append(value)
            elif kind == "done":
                metrics.request_done("generation", 200, time.monotonic() - started)
                metrics.generation_done(len(ids), value.completion_tokens, _hist(value.stats))
                return reply.whole("".join(pieces), value)
            else:
                status, message = value
                raise APIError(status, message, type_="server_error" if status >= 500 else "invalid_request_error")

    def make_job(body: GenerationRequest, ids: list[int], param: str) -> Job:
        if body.model is not None and body.model != model_name:
            raise APIError(400, f"unknown model '{body.model}': this server serves '{model_name}'", param="model",
                           code="model_not_found")
        extra = body.tokentree
        drafter = extra.drafter if extra else None
        if drafter is not None and drafter not in DRAFTERS:
            raise APIError(400, f"unknown drafter '{drafter}': choose one of {', '.join(DRAFTERS)}",
                           param="tokentree.drafter")
        if drafter is not None and DRAFTERS[drafter].needs_draft and generator.draft is None:
            raise APIError(400, f"drafter '{drafter}' needs a draft model; start the server with --draft",
                           param="tokentree.drafter")
        room = context_limit - len(ids)
        max_new = body.token_limit or min(config.default_max_tokens, room)
        if max_new > room or room < 1:
            raise APIError(400, f"the prompt has {len(ids)} tokens and asks for {max_new} more, over the model's "
                           f"context of {context_limit} tokens", param=param, code="context_length_exceeded")
        options = dict(max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                       min_p=body.min_p, seed=body.seed, stop=body.stop, budget=extra.budget if extra else None)
        return Job(ids, options, drafter, asyncio.get_running_loop())

    async def events(request: Request, job: Job, started: float) -> AsyncIterator[tuple]:
        """The job's events until done or error; cancels the job on disconnect or timeout."""
        deadline = started + config.request_timeout
        try:
            while True:
                if time.monotonic() > deadline:
                    yield "error", (504, f"the request took longer than {config.request_timeout:g} s")
                    return
                try:
                    kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                yield kind, value
                if kind != "text":
                    return
        finally:
            job.cancel()  # no-op when finished; frees the worker at the next step otherwise

    async def stream_events(request: Request, job: Job, reply: "Reply", include_usage: bool,
                            started: float) -> AsyncIterator[str]:
        yield sse(reply.chunk(role=True))
        async for kind, value in events(request, job, started):
            if kind == "text":
                yield sse(reply.chunk(text=value))
            elif kind == "done":
                metrics.request_done("generation", 200, time.monotonic() - started)
                metrics.generation_done(reply.prompt_tokens, value.completion_tokens, _hist(value.stats))
                yield sse(reply.chunk(finish=value))
                if include_usage:
                    yield sse(reply.usage_chunk(value))
            else:
                status, message = value
                yield sse(error_body(message, "server_error" if status >= 500 else "invalid_request_error",
                                     code=str(status)))
        yield "data: [DONE]\n\n"

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
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _usage(self, result: Result) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": self.prompt_tokens + result.completion_tokens}

    def _choice(self, text: str | None, finish: str | None, role: bool = False, whole: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        if whole:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                    "logprobs": None}
        delta = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

    def whole(self, text: str, result: Result) -> dict:
        body = self._envelope([self._choice(text, result.finish_reason, whole=True)], chunk=False)
        return body | {"usage": self._usage(result), "tokentree": result.stats}

    def chunk(self, text: str | None = None, role: bool = False, finish: Result | None = None) -> dict:
        choice = self._choice(text, finish.finish_reason if finish else None, role=role)
        body = self._envelope([choice], chunk=True)
        return body | ({"tokentree": finish.stats} if finish else {})

    def usage_chunk(self, result: Result) -> dict:
        return self._envelope([], chunk=True) | {"usage": self._usage(result)}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI-style JSON with a 4xx (or, for a bug, 500) status."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        where = ".".join(loc)
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        return JSONResponse(error_body(f"{where}: {message}" if where else message, param=where or None), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), exc.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)
