"""Errors in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}`` with the status
that OpenAI's clients map to their exception classes (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 413, 500 InternalServerError, 503)."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Raised by the serving code; becomes an OpenAI-style error response."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def error_body(message: str, status: int, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": status,
        }
    }


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


def sse_error(message: str, status: int) -> str:
    """An error inside an SSE stream that already answered 200 (OpenAI's clients raise on it)."""
    return f"data: {json.dumps(error_body(message, status))}\n\n"


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The request body as ``model``, whatever the Content-Type (curl -d sends form-encoded);
    malformed JSON and invalid fields become a 400 naming the field and the value."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors())
        raise APIError(message, param=param) from None


# Names pydantic puts into an error's location for the member of a union that failed.
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "TextContentPart"}


def describe_validation_errors(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line naming the offending field and value, and that field as `param`."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}", None
    # loc is ("body", field, ...) for body fields; union members add their type name, drop those.
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    loc = [
        p for p in loc if p not in _UNION_TAGS and "[" not in p and not p.startswith("function-")
    ]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None or msg.startswith(f"{param}:"):
        return msg, param if param else _param_from_message(msg)
    value = first.get("input")
    shown = json.dumps(value)[:200] if _is_jsonable(value) else repr(value)[:200]
    return f"{param}: {msg} (got {shown})", param


def _param_from_message(msg: str) -> str | None:
    # Our model validators write "field: why"; report that field as `param`.
    head, sep, _ = msg.partition(":")
    return head if sep and head.isidentifier() else None


def _is_jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.message, exc.status, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = describe_validation_errors(exc.errors())
        return error_response(message, HTTPStatus.BAD_REQUEST, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, exc: ValueError):
        # SamplingParams and the tokenizer raise ValueError for bad input: a client error.
        return error_response(str(exc), HTTPStatus.BAD_REQUEST)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception):
        logger.exception("unhandled error while serving a request")
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
