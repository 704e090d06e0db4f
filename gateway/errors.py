"""One exception tree for the OpenAI surface, and the one place it is mapped to HTTP.

    APIError                      -> {"error": {message, type, param, code}} (+ optional headers)
    ├── InvalidRequestError       400 invalid_request_error
    │   └── ContextLengthExceeded 400 code=context_length_exceeded
    │   (engine.protocol.RequestRejected: the engine refused the parameters, also a 400)
    │   (engine.protocol.EngineError: the engine failed, a 500 with code=engine_error)
    │   (adapters.errors.InvalidJobRequest: 400; adapters.errors.NotFound: 404)
    ├── AuthenticationError       401 code=invalid_api_key
    ├── PermissionDenied          403 permission_error
    ├── NotFoundError             404 invalid_request_error
    │   └── ModelNotFound         404 code=model_not_found
    ├── ConflictError             409 invalid_request_error
    ├── RateLimited               429 code=rate_limit_exceeded (retry-after, retry-after-ms)
    ├── QuotaExceeded             429 insufficient_quota (x-should-retry: false)
    └── EngineUnavailable         503 server_error

Request validation errors (bad JSON, wrong types, out-of-range values) are 400s naming the ``param``;
anything unexpected is a 500 in the same shape, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import InvalidJobRequest
from adapters.errors import NotFound as AdapterNotFound
from engine.protocol import EngineError, RequestRejected

logger = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequestError(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    type = "permission_error"


class ConflictError(APIError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimited(APIError):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(APIError):
    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        # The official SDKs retry 429s unless told not to; a spent budget does not come back by retrying.
        super().__init__(message, headers={**(headers or {}), "x-should-retry": "false"})


class NotFoundError(APIError):
    status_code = 404
    type = "invalid_request_error"


class ModelNotFound(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class EngineUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "engine_unavailable"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic adds the union member's type to the location ('str', 'list[int]', 'constrained-int',
    # "literal['auto']"): keep field names and indexes only.
    type_names = {"str", "int", "float", "bool", "list", "dict"}
    parts = [p for p in parts if isinstance(p, int) or (p.isidentifier() and p not in type_names)]
    param = ""
    for part in parts:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request. Send valid JSON.", None
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    if param is None and first.get("type") == "missing":
        return "The request body is missing or not a JSON object.", None
    message = message.removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {message}" if param else message), param


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _fine_tuning_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidJobRequest | AdapterNotFound)
    status = 404 if isinstance(exc, AdapterNotFound) else 400
    return JSONResponse(error_body(exc.message, "invalid_request_error", exc.param, exc.code), status_code=status)


async def _engine_rejected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("engine failed on %s: %s", request.url.path, exc)
    return JSONResponse(error_body(str(exc), "server_error", code="engine_error"), status_code=500)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(
        error_body(str(exc.detail), type_), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(InvalidJobRequest, _fine_tuning_error)
    app.add_exception_handler(AdapterNotFound, _fine_tuning_error)
    app.add_exception_handler(RequestRejected, _engine_rejected)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
