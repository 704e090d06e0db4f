"""A run's items: read from the request or from the tenant's JSONL file one at a time (each line parsed alone),
each item bounded in bytes, depth and values and the run in items, bytes and values, and checked against the
eval's item schema in the worker processes batch by batch while reading. A bad or oversized source is refused
(a 400) at its first offending item, never after parsing all of it; the schema check has a time budget."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydantic_core
from starlette.concurrency import iterate_in_threadpool

from gateway import bounds, documents
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.models import RunCreate
from gateway.fine_tuning.files import FileStore
from gateway.workers import Workers, WorkFailed, WorkTimedOut

Item = tuple[dict[str, Any], dict[str, Any] | None]
BATCH_ITEMS = 512
BATCH_BYTES = 1024 * 1024


@dataclass
class _Entry:
    where: str
    item: dict[str, Any]
    sample: dict[str, Any] | None
    size: int


@dataclass
class _Run:
    """What a run's items add up to, refused as soon as it passes a bound."""

    param: str
    items: int = 0
    size: int = 0
    nodes: int = 0

    def add(self, where: str, entry: Any, size: int) -> None:
        if self.items >= bounds.EVAL_RUN_ITEMS:
            raise InvalidRequestError(f"A run takes at most {bounds.EVAL_RUN_ITEMS} items.", param=self.param)
        if size > bounds.EVAL_ITEM_BYTES:
            raise InvalidRequestError(f"{where} is longer than {bounds.EVAL_ITEM_BYTES} bytes.", param=self.param)
        try:
            nodes = documents.check_shape(entry, max_nodes=bounds.EVAL_ITEM_NODES, what=where)
        except documents.DocumentError as exc:
            raise InvalidRequestError(str(exc), param=self.param) from None
        self.items, self.size, self.nodes = self.items + 1, self.size + size, self.nodes + nodes
        if self.size > bounds.EVAL_RUN_BYTES or self.nodes > bounds.EVAL_RUN_NODES:
            raise InvalidRequestError(
                f"A run's items may hold {bounds.EVAL_RUN_BYTES} bytes and {bounds.EVAL_RUN_NODES} values in all.",
                param=self.param,
            )


def _inline(body: RunCreate, run: _Run) -> Iterator[_Entry]:
    source = body.data_source.source
    assert source.type == "file_content"
    for index, entry in enumerate(source.content):
        where = f"Item {index}"
        whole = {"item": entry.item, "sample": entry.sample}
        run.add(where, whole, len(json.dumps(whole, ensure_ascii=False)))
        yield _Entry(where, entry.item, entry.sample, 0)


def _lines(handle: BinaryIO, run: _Run) -> Iterator[_Entry]:
    """Lines of ``{"item": {...}, "sample": {...}}`` (the sample optional), one line in memory at a time."""
    number = 0
    while line := handle.readline(bounds.EVAL_ITEM_BYTES + 1):
        number += 1
        if not line.strip():
            continue
        where = f"Line {number}"
        if len(line) > bounds.EVAL_ITEM_BYTES:
            raise InvalidRequestError(f"{where} is longer than {bounds.EVAL_ITEM_BYTES} bytes.", param=run.param)
        try:
            entry = pydantic_core.from_json(line, allow_inf_nan=False)  # strict: no lone surrogates, no NaN
        except ValueError:
            raise InvalidRequestError(f"{where} is not valid JSON (or nested too deeply).", param=run.param) from None
        run.add(where, entry, len(line))
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), dict):
            raise InvalidRequestError(f'{where} must be an object with an "item" object.', param=run.param)
        sample = entry.get("sample")
        yield _Entry(where, entry["item"], sample if isinstance(sample, dict) else None, len(line))


def _batches(body: RunCreate, files: FileStore, tenant_id: str, run: _Run) -> Iterator[list[_Entry]]:
    """Blocking (a worker thread): the run's entries, a batch at a time."""
    source = body.data_source.source
    if source.type == "file_content":
        entries = _inline(body, run)
        handle = None
    else:
        assert source.type == "file_id"  # stored completions are read by ``gateway.evals.stored``
        try:
            handle, _ = files.open(tenant_id, source.id)
        except NotFoundError as exc:
            raise InvalidRequestError(f"File '{source.id}' not found.", param=run.param) from exc
        entries = _lines(handle, run)
    try:
        batch: list[_Entry] = []
        size = 0
        for entry in entries:
            batch.append(entry)
            size += entry.size
            if len(batch) >= BATCH_ITEMS or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch
    finally:
        if handle is not None:
            handle.close()


async def checked_schema(workers: Workers, schema: dict[str, Any], param: str) -> dict[str, Any]:
    """``schema`` if ``gateway.documents`` accepts it (checked in a worker: a metaschema check of a large schema
    takes a while), else a 400 naming ``param``."""
    try:
        return await workers.call(documents.check_schema, schema, budget=bounds.VALIDATION_SECONDS)
    except documents.DocumentError as exc:
        raise InvalidRequestError(str(exc), param=param) from None
    except (WorkTimedOut, WorkFailed):
        raise InvalidRequestError("The schema could not be checked.", param=param, code="invalid_schema") from None


async def checked_items(
    body: RunCreate, files: FileStore, workers: Workers, tenant_id: str, item_schema: dict[str, Any]
) -> list[Item]:
    """The run's items (and samples), each checked against the eval's item schema."""
    schema = await checked_schema(workers, item_schema, "eval_id")  # evals stored before these rules too
    param = "data_source.source.id" if body.data_source.source.type == "file_id" else "data_source.source.content"
    deadline = time.monotonic() + bounds.VALIDATION_SECONDS
    items: list[Item] = []
    async for batch in iterate_in_threadpool(_batches(body, files, tenant_id, _Run(param))):
        problem = await _validate(workers, schema, [entry.item for entry in batch], deadline, param)
        if problem is not None:
            index, reason = problem
            raise InvalidRequestError(
                f"{batch[index].where} does not match the eval's item schema: {reason}", param=param
            )
        for entry in batch:
            if body.data_source.type == "jsonl" and not isinstance((entry.sample or {}).get("output_text"), str):
                raise InvalidRequestError(
                    f"{entry.where} has no sample.output_text to grade (a jsonl run grades given samples).",
                    param=param,
                )
            items.append((entry.item, entry.sample))
    return items


async def _validate(
    workers: Workers, schema: dict[str, Any], items: list[Any], deadline: float, param: str
) -> tuple[int, str] | None:
    too_slow = InvalidRequestError(
        f"Checking the items against the eval's item schema took longer than {bounds.VALIDATION_SECONDS:g} "
        "seconds; simplify the schema or send fewer items.",
        param=param,
        code="validation_timeout",
    )
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise too_slow
    try:
        return await workers.call(documents.validate_items, schema, items, remaining, budget=remaining)
    except (documents.BudgetExceeded, WorkTimedOut):
        raise too_slow from None
    except WorkFailed:
        raise InvalidRequestError(
            "The items could not be checked against the eval's item schema.", param=param, code="validation_failed"
        ) from None
