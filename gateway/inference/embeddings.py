"""Embeddings (``POST /v1/embeddings``): the request body, its inputs to token ids (refused cheaply first: OpenAI's
bounds of 2048 inputs, no empty one, a character cap per input before anything is tokenized, then each input
within the model's context in tokens), one run on the embedding model admitted and settled through
``Admission`` like a generation (its prompt tokens reserved against TPM and budgets at the model's price; the
ledger gets what the client was told) and waiting in the same fair queue for its model (one sequence per input),
and the answer in OpenAI's shape (``float`` vectors, or ``base64`` of their little-endian float32 bytes). A
batch's request (``gateway.batches``) is answered the same way, in the ``batch`` ledger kind and priority class."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from engine.protocol import TextEncoder
from gateway.errors import ContextLengthExceeded, InvalidRequestError
from gateway.inference.catalog import ServedEmbedder
from gateway.inference.generation import Outcome
from gateway.inference.prompts import INLINE_CHARS
from gateway.inference.request_fields import EndUser, ModelId
from gateway.inference.runs import Serving, check_access, unless_gone, wait_for_engine
from gateway.scheduling import PriorityClass

MAX_INPUTS = 2048
"""OpenAI's bound on the inputs of one request."""
CHARS_PER_TOKEN_CAP = 16
"""An input longer than this many characters per token of the model's context is refused before tokenizing."""

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    input: EmbeddingInput
    model: ModelId
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: EndUser | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            items: list[Any] = [value]
        else:
            items = list(value)
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > MAX_INPUTS:
            raise ValueError(f"input holds {len(items)} items; at most {MAX_INPUTS} are allowed")
        if any(len(item) == 0 for item in items):
            raise ValueError("input must not hold an empty string or an empty array of tokens")
        return value

    def check(self) -> None:
        """Nothing beyond the fields' own checks (what a batch's line calls of every request body)."""


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str
    """The vector; a base64 string of its little-endian float32 values with ``encoding_format: "base64"``."""


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _too_long(max_len: int, what: str) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {max_len} tokens, however you requested {what}. "
        "Please reduce your prompt; or completion length.",
        param="input",
    )


async def input_tokens(value: EmbeddingInput, encoder: TextEncoder, max_len: int) -> list[list[int]]:
    """Each input as the token ids the model embeds: text tokenized (off the event loop when long), token ids
    checked against the vocabulary; every input within ``max_len`` tokens."""
    items: list[Any] = [value] if isinstance(value, str) or isinstance(value[0], int) else list(value)
    if isinstance(items[0], str):
        max_chars = CHARS_PER_TOKEN_CAP * max_len
        for index, text in enumerate(items):
            if len(text) > max_chars:
                raise _too_long(max_len, f"input[{index}] of {len(text)} characters (at most {max_chars} are read)")

        def encode() -> list[list[int]]:
            return [encoder.encode(text) for text in items]

        chars = sum(len(text) for text in items)
        prompts = encode() if chars <= INLINE_CHARS else await run_in_threadpool(encode)
    else:
        prompts = items
        vocab = encoder.vocab_size
        if any(not 0 <= token < vocab for ids in prompts for token in ids):
            raise InvalidRequestError(f"input token ids must lie in [0, {vocab})", param="input")
    for index, ids in enumerate(prompts):
        if len(ids) > max_len:
            raise _too_long(
                max_len, f"{len(ids)} tokens ({len(ids)} in your prompt, input[{index}]; 0 for the completion)"
            )
    return prompts


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embedder_for(model: str, serving: Serving) -> ServedEmbedder:
    """The embedding model ``model`` names, if the tenant has it and its key may use it."""
    served = await serving.catalog.resolve_embedder(model, serving.tenant.tenant_id)
    check_access(serving.tenant, served.id, served.alias)
    return served


async def create_embeddings(
    body: EmbeddingRequest, serving: Serving, kind: str = "inference", priority_class: PriorityClass | None = None
) -> dict[str, Any]:
    """The answer to ``body``: checked, admitted, run and settled (the settlement durable before it returns);
    aborted if ``serving.client_gone`` returns first. ``kind``: the ledger's (``batch``: budget-only admission at
    the batch price); ``priority_class``: the class it waits in (None: its key's)."""
    served = await embedder_for(body.model, serving)
    embedder = served.embedder
    if body.dimensions is not None and not embedder.supports_dimensions:
        raise InvalidRequestError("This model does not support specifying dimensions.", param="dimensions")
    prompts = await input_tokens(body.input, embedder.tokenizer, embedder.max_model_len)
    prompt_tokens = sum(len(ids) for ids in prompts)
    # One request (one RPM unit, however many inputs: OpenAI counts requests), its tokens against TPM and budgets.
    reservation = await serving.admission.admit_inference(
        serving.context,
        serving.tenant,
        served.id,
        prompts=1,
        prompt_tokens=prompt_tokens,
        max_completion_tokens=0,
        end_user=body.user,
        kind=kind,
    )
    # Each input is a sequence.
    ticket = await wait_for_engine(serving, served.id, len(prompts), reservation, priority_class)
    outcome: Outcome = "aborted"  # the client left (CancelledError) unless it completes or fails
    started = time.perf_counter()
    try:
        embedding = embedder.embed(prompts, serving.context.id, body.dimensions)
        gone = serving.client_gone
        vectors = await (embedding if gone is None else unless_gone(gone, embedding))
        outcome = "completed"
    except Exception:
        outcome = "failed"
        raise
    finally:
        reservation.settle(prompt_tokens, 0, outcome)  # the settlement first: it must never depend on the metrics
        ticket.release()
        if outcome != "aborted":  # the answer (or its error) goes out once its record is durable
            await reservation.durable()
        serving.metrics.observe_run(
            model=served.id,
            fine_tuned=False,
            outcome=outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            # An embedding's first (and only) output is the whole answer.
            time_to_first_token=time.perf_counter() - started if outcome == "completed" else None,
        )
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": served.id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
