"""A batch in OpenAI's shape (``openai.types.Batch``): its row, with its request counts and token usage summed
from its requests' rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.api_objects import Epoch, RowObject
from adapters.pagination import CursorPage
from gateway.batches.states import RequestStatus
from gateway.db import Batch, BatchRequest


class BatchError(BaseModel):
    code: str | None
    message: str | None
    param: str | None
    line: int | None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class BatchOut(RowObject):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: Epoch
    in_progress_at: Epoch | None
    expires_at: Epoch | None
    finalizing_at: Epoch | None
    completed_at: Epoch | None
    failed_at: Epoch | None
    expired_at: Epoch | None
    cancelling_at: Epoch | None
    cancelled_at: Epoch | None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None


class BatchList(CursorPage[BatchOut, str]):
    """A page of batches (``GET /v1/batches``), newest first."""


@dataclass
class _Tally:
    total: int = 0
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def batch_objects(session: Session, rows: Sequence[Batch]) -> list[BatchOut]:
    """The rows as API objects, their requests tallied in one query."""
    tallies = {row.id: _Tally() for row in rows}
    grouped = session.execute(
        select(
            BatchRequest.batch_id,
            BatchRequest.status,
            func.count(),
            func.coalesce(func.sum(BatchRequest.prompt_tokens), 0),
            func.coalesce(func.sum(BatchRequest.completion_tokens), 0),
        )
        .where(BatchRequest.batch_id.in_(list(tallies)))
        .group_by(BatchRequest.batch_id, BatchRequest.status)
    ).all()
    for batch_id, status, count, prompt, completion in grouped:
        tally = tallies[batch_id]
        tally.total += count
        if status == RequestStatus.COMPLETED:
            tally.completed += count
        elif status == RequestStatus.FAILED:
            tally.failed += count
        tally.prompt_tokens += int(prompt)
        tally.completion_tokens += int(completion)
    return [_object(row, tallies[row.id]) for row in rows]


def _object(row: Batch, tally: _Tally) -> BatchOut:
    fields: dict[str, Any] = {name: getattr(row, name) for name in BatchOut.model_fields if hasattr(row, name)}
    fields["errors"] = {"data": row.errors} if row.errors else None
    fields["metadata"] = row.user_metadata
    fields["request_counts"] = {"total": tally.total, "completed": tally.completed, "failed": tally.failed}
    fields["usage"] = {
        "input_tokens": tally.prompt_tokens,
        "output_tokens": tally.completion_tokens,
        "total_tokens": tally.prompt_tokens + tally.completion_tokens,
    }
    return BatchOut.model_validate(fields)
