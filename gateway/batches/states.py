"""A batch's and a batch request's statuses, the lease a batch runner holds, and the endpoints a batch may
target with the request body each one takes."""

from __future__ import annotations

from enum import StrEnum

from adapters.leases import Lease
from gateway.db import Batch
from gateway.inference.api_types import ChatCompletionRequest, CompletionRequest
from gateway.inference.embeddings import EmbeddingRequest


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class RequestStatus(StrEnum):
    PENDING = "pending"
    """Not run yet, or run but its result not stored (a runner that died): the runner's to do."""
    COMPLETED = "completed"
    """Answered with a 200: a line of the output file."""
    FAILED = "failed"
    """Answered with an error, or not run (cancelled, expired): a line of the error file."""


UNFINISHED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
"""Batches whose requests still count against ``max_enqueued_batch_tokens``."""
RUNNING = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
"""A runner owns a batch in these; one whose runner stopped heartbeating is taken over."""

BATCH_LEASE = Lease.on(Batch, owner=Batch.runner_id)
"""A batch is leased by the runner executing it (``runner_id``, ``heartbeat_at``)."""

BatchBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
ENDPOINT_BODIES: dict[str, type[BatchBody]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
"""The endpoints a batch may target, and the request body each line's ``body`` must be."""
COMPLETION_WINDOW = "24h"
