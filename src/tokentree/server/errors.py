"""Errors as OpenAI returns them: :class:`APIError`, the error body, and the handlers that turn
every failure (ours, pydantic's, Starlette's, a bug's) into one."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    """The JSON body OpenAI returns with a 4xx/5xx status."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


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
