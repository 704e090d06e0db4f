"""A batch's input file read and checked line by line (OpenAI's rules): each line a JSON object with a unique
``custom_id``, ``method`` POST, ``url`` the batch's endpoint and a ``body`` that endpoint accepts (the routes'
own request models and checks, ``stream`` off); all lines name one model of the endpoint's kind (an embedding
model for ``/v1/embeddings``), which the tenant's key may use; no
more lines than the tenant's batch size limit. Each failing line is named (``line``, 1-based) in an error of
OpenAI's ``{code, message, param, line}`` shape; the batch then fails (``errors``).

A line's tokens are bounded from above without tokenizing (its bytes, plus the completion tokens it may ask
for; an embeddings line asks for none): what the tenant's ``max_enqueued_batch_tokens`` counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway import bounds
from gateway.batches.states import ENDPOINT_BODIES, BatchBody
from gateway.documents import DocumentError, check_shape
from gateway.errors import APIError, as_api_error
from gateway.inference.api_types import ChatCompletionRequest
from gateway.inference.embeddings import EmbeddingRequest, embedder_for
from gateway.inference.runs import Serving

MAX_ERRORS = 100
"""Errors kept per batch: a file of a million bad lines is refused with the first hundred named."""
_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
_MAX_NODES = 200_000


@dataclass(frozen=True)
class BatchLine:
    line: int
    custom_id: str
    body: dict[str, Any]
    tokens: int
    """At most this many tokens (prompt and completion) the request can take."""


@dataclass
class CheckedFile:
    lines: list[BatchLine] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None

    @property
    def tokens(self) -> int:
        return sum(line.tokens for line in self.lines)

    def fail(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


class _LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def read_lines(data: bytes, endpoint: str, max_requests: int, max_completion_tokens: int) -> CheckedFile:
    """Every line checked but for its model's access (``check_model``); blocking, for a worker thread.
    ``max_completion_tokens``: what a line that does not bound its completion may generate."""
    checked = CheckedFile()
    seen: set[str] = set()
    models: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(checked.lines) >= max_requests:
            checked.fail(
                "too_many_requests",
                f"The batch holds more than {max_requests} requests, this organization's limit per batch.",
                number,
            )
            break
        try:
            line = _line(raw, number, endpoint, max_completion_tokens)
        except _LineError as exc:
            checked.fail(exc.code, exc.message, number, exc.param)
            continue
        if line.custom_id in seen:
            checked.fail("duplicate_custom_id", f"The custom_id '{line.custom_id}' is used twice.", number, "custom_id")
            continue
        seen.add(line.custom_id)
        models.setdefault(str(line.body["model"]), number)
        checked.lines.append(line)
    if not checked.lines and not checked.errors:
        checked.fail("empty_file", "The input file holds no requests.")
    if len(models) > 1:
        second = sorted(models.items(), key=lambda item: item[1])[1]
        checked.fail("mismatched_model", "Every request of a batch must name the same model.", second[1], "body.model")
    checked.model = next(iter(models), None)
    return checked


async def check_model(checked: CheckedFile, endpoint: str, serving: Serving) -> None:
    """The batch's model exists, serves ``endpoint`` and the tenant's key may use it; else an error naming the
    first line."""
    if checked.model is None or checked.errors:
        return
    try:
        if endpoint == "/v1/embeddings":
            await embedder_for(checked.model, serving)
        else:
            served = await serving.model(checked.model)
            # A split: every target now (else the batch would pass or fail by the draw).
            for target in served.alias.models if served.alias else ():
                await serving.catalog.resolve_model(target, serving.tenant.tenant_id)
    except APIError as exc:
        checked.fail(exc.code or "model_not_found", exc.message, checked.lines[0].line, "body.model")


def _line(raw: bytes, number: int, endpoint: str, max_completion_tokens: int) -> BatchLine:
    if len(raw) > bounds.BATCH_LINE_BYTES:
        raise _LineError("line_too_long", f"The line is longer than {bounds.BATCH_LINE_BYTES} bytes.")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
        check_shape(value, max_nodes=_MAX_NODES, what="The line")
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, DocumentError) else "The line is not valid JSON."
        raise _LineError("invalid_json_line", reason) from None
    if not isinstance(value, dict):
        raise _LineError("invalid_request", "The line must be a JSON object.")
    unknown = sorted(set(value) - _LINE_KEYS)
    if unknown:
        raise _LineError("unknown_parameter", f"Unrecognized field: {unknown[0][:64]}", unknown[0][:64])
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= bounds.BATCH_CUSTOM_ID:
        message = f"custom_id must be a string of 1 to {bounds.BATCH_CUSTOM_ID} characters."
        raise _LineError("invalid_custom_id", message, "custom_id")
    if value.get("method") != "POST":
        raise _LineError("invalid_method", "method must be POST.", "method")
    if value.get("url") != endpoint:
        raise _LineError("invalid_url", f"url must be the batch's endpoint, {endpoint}.", "url")
    body = value.get("body")
    if not isinstance(body, dict):
        raise _LineError("invalid_request", "body must be a JSON object.", "body")
    request = _request(endpoint, body)
    return BatchLine(number, custom_id, body, len(raw) + _completion_tokens(request, max_completion_tokens))


def _request(endpoint: str, body: dict[str, Any]) -> BatchBody:
    """The body as the endpoint's route reads it (a 400 there is this line's error here)."""
    try:
        request = ENDPOINT_BODIES[endpoint].model_validate(body)
        request.check()
    except ValidationError as exc:
        error = as_api_error(RequestValidationError(exc.errors()))
        raise _LineError(error.code or "invalid_request", error.message, _in_body(error.param)) from None
    except APIError as exc:
        raise _LineError(exc.code or "invalid_request", exc.message, _in_body(exc.param)) from None
    if body.get("stream"):
        raise _LineError("invalid_request", "A batch's requests cannot stream.", "body.stream")
    if body.get("store"):
        raise _LineError("invalid_request", "A batch's requests cannot be stored (store).", "body.store")
    return request


def _completion_tokens(request: BatchBody, default: int) -> int:
    if isinstance(request, EmbeddingRequest):
        return 0
    asked = request.requested_max_tokens if isinstance(request, ChatCompletionRequest) else request.max_tokens
    return (asked or default) * request.n


def _in_body(param: str | None) -> str:
    return f"body.{param}" if param else "body"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
