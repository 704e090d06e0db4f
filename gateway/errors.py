"""One exception tree for the OpenAI surface, and the one place any exception becomes an OpenAI error.

    APIError                      -> {"error": {message, type, param, code}} (+ optional headers)
    ├── InvalidRequestError       400 invalid_request_error
    │   └── ContextLengthExceeded 400 code=context_length_exceeded
    ├── AuthenticationError       401 code=invalid_api_key
    ├── PermissionDenied          403 permission_error
    ├── NotFoundError             404 invalid_request_error
    │   ├── ModelNotFound         404 code=model_not_found
    │   └── UnknownURL            404 code=unknown_url (no route has this path)
    ├── MethodNotAllowed          405 code=method_not_allowed (+ allow)
    ├── RequestTimeout            408 code=request_timeout (the body did not arrive in time)
    ├── ConflictError             409 invalid_request_error
    ├── PayloadTooLarge           413 code=request_too_large
    ├── UnprocessableContent      422 invalid_request_error
    ├── RateLimited               429 code=rate_limit_exceeded (retry-after, retry-after-ms)
    ├── QuotaExceeded             429 insufficient_quota (x-should-retry: false)
    ├── HeadersTooLarge           431 code=request_header_fields_too_large (answered below the app)
    ├── InternalError             500 server_error
    ├── BadGateway                502 server_error (retry-after)
    ├── ServiceUnavailable        503 server_error (retry-after)
    └── GatewayTimeout            504 server_error (x-should-retry: false)

``as_api_error`` maps everything else: the engine's ``RequestRejected`` (400), ``EngineError`` (502,
code=engine_error: the engine or its replicas failed the request; retrying may help), ``EngineUnavailable``
(503, code=engine_unavailable) and ``EngineTimeout`` (504, code=deadline_exceeded), the fine-tuning side's
``InvalidJobRequest`` (400) and ``NotFound`` (404), FastAPI's validation errors (400 naming the ``param``;
unknown fields all named at once, code=unknown_parameter), Starlette's HTTP errors, and anything unexpected (a
500 in the same shape, never a stack trace). JSON responses, SSE error events and the ASGI middleware all use it;
``ERROR_RESPONSES`` documents the shape in OpenAPI.
"""

from __future__ import annotations

import logging
import typing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_core import core_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adapters.errors import InvalidJobRequest
from adapters.errors import NotFound as AdapterNotFound
from engine.protocol import EngineError, EngineTimeout, EngineUnavailable, RequestRejected

logger = logging.getLogger(__name__)
RETRY_SOON = {"retry-after": "1"}
"""What a failure of the engine (a replica lost, none available) tells a client: try again in a second."""


def _shown(text: str, limit: int = 200) -> str:
    """A client's value in a message, cut short."""
    return text if len(text) <= limit else text[:limit] + "..."


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
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class InvalidRequestError(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequestError):
    code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # The code in the words too: LangChain's ChatOpenAI knows an overflow (its ContextOverflowError) by
        # "context_length_exceeded" in the exception's text, where the openai SDK (3.x) puts only the message.
        super().__init__(f"{message} ({self.code})", param=param)


class AuthenticationError(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    type = "permission_error"


class NotFoundError(APIError):
    status_code = 404
    type = "invalid_request_error"


class ModelNotFound(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        message = f"The model '{_shown(model, 100)}' does not exist or you do not have access to it."
        super().__init__(message, param="model")


class UnknownURL(NotFoundError):
    code = "unknown_url"

    def __init__(self, method: str, path: str) -> None:
        # OpenAI's own words ("Invalid URL (POST /v1/foo)"), which clients and people search for, and what they mean.
        super().__init__(f"Invalid URL ({_shown(method, 20)} {_shown(path)}): this server does not serve it.")


class MethodNotAllowed(APIError):
    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: str | None) -> None:
        served = f"serves it with {allowed} only" if allowed else "does not serve it with that method"
        url = f"{_shown(method, 20)} {_shown(path)}"
        super().__init__(f"Invalid method for URL ({url}): this server {served}.", headers={"allow": allowed or ""})


class RequestTimeout(APIError):
    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ConflictError(APIError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnprocessableContent(APIError):
    """Well-formed, but not something this request can be (an ``Idempotency-Key`` reused for another request)."""

    status_code = 422
    type = "invalid_request_error"


class RateLimited(APIError):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"


class HeadersTooLarge(APIError):
    status_code = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class QuotaExceeded(APIError):
    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        # The official SDKs retry 429s unless told not to; a spent budget does not come back by retrying.
        super().__init__(message, param=param, headers={**(headers or {}), "x-should-retry": "false"})


class InternalError(APIError):
    status_code = 500
    type = "server_error"


class BadGateway(APIError):
    status_code = 502
    type = "server_error"
    code = "engine_error"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class GatewayTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "deadline_exceeded"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """What ``APIError.body`` answers, documented."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused (OpenAI's error shape)."},
    "5XX": {"model": ErrorResponse, "description": "The server could not answer (OpenAI's error shape)."},
}
"""Every ``/v1`` and ``/admin/v1`` router documents its errors with this (``APIRouter(responses=...)``)."""


_PYDANTIC_ERROR_TYPES = frozenset(typing.get_args(core_schema.ErrorType))


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


def _validation_error(exc: RequestValidationError) -> InvalidRequestError:
    unknown = [_param_from_loc(tuple(e.get("loc", ()))) for e in exc.errors() if e.get("type") == "extra_forbidden"]
    if unknown:  # named all at once: a client learns every field to drop from one answer
        names = ", ".join(name for name in unknown if name)
        plural = "s" if len(unknown) > 1 else ""
        return InvalidRequestError(
            f"Unrecognized request argument{plural} supplied: {names}", param=unknown[0], code="unknown_parameter"
        )
    errors = exc.errors()
    # A refusal of our own (a validator's ``PydanticCustomError``, its type the code) says more than what the other
    # members of a union reported (``content`` as a string: "Input should be a valid string").
    coded = [e for e in errors if e.get("type") not in _PYDANTIC_ERROR_TYPES]
    first = coded[0] if coded else errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error")
        detail = f" ({reason})" if reason else ""
        return InvalidRequestError(f"We could not parse the JSON body of your request{detail}. Send valid JSON.")
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None and first.get("type") == "missing":
        return InvalidRequestError("The request body is missing or not a JSON object.")
    code = str(first["type"]) if coded else None
    return InvalidRequestError(f"Invalid value for '{param}': {message}" if param else message, param=param, code=code)


def _http_error(exc: StarletteHTTPException) -> APIError:
    error = APIError(str(exc.detail), headers=dict(exc.headers or {}))
    error.status_code = exc.status_code
    error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error


def as_api_error(exc: BaseException) -> APIError:
    """The OpenAI error a client sees for ``exc``: the one mapping, for JSON bodies and stream events alike."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestRejected):
        return InvalidRequestError(str(exc))
    if isinstance(exc, InvalidJobRequest):
        return InvalidRequestError(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, AdapterNotFound):
        return NotFoundError(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_error(exc)
    if isinstance(exc, ClientDisconnect):  # nobody reads the answer (or the body cap cut the body off)
        return InvalidRequestError("The client disconnected before the request body was complete.")
    if isinstance(exc, EngineUnavailable):
        logger.warning("engine unavailable: %s", exc)
        return ServiceUnavailable(str(exc), code="engine_unavailable", headers=dict(RETRY_SOON))
    if isinstance(exc, EngineTimeout):  # the same request would run as long again
        logger.warning("engine deadline: %s", exc)
        return GatewayTimeout(str(exc), headers={"x-should-retry": "false"})
    if isinstance(exc, EngineError):  # a failure of ours, of no fault of the request: another try may succeed
        logger.error("engine failed: %s", exc)
        return BadGateway(str(exc), headers=dict(RETRY_SOON))
    logger.error("unhandled error", exc_info=exc)
    return InternalError("The server had an error while processing your request.")


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return as_api_error(exc).response()


def install_error_handlers(app: FastAPI) -> None:
    # Named classes are answered inside the app; ``Exception`` by Starlette's outermost handler (which logs it).
    expected = (APIError, RequestValidationError, StarletteHTTPException, ClientDisconnect)
    for kind in (*expected, RequestRejected, EngineError, InvalidJobRequest, AdapterNotFound, Exception):
        app.add_exception_handler(kind, _handle)
