"""Stored responses in the database, per tenant, shared by every gateway on it: a response's object as answered
and its input items; the conversation a ``previous_response_id`` continues (the chain of its ancestors, each with
its inputs and outputs); retrieval, deletion, the input items paged by keyset, and the purges of retention and
tenant erasure.

A response of another tenant is never found (404, as an unknown id). A chain ends at a response that was deleted
or expired: the conversation goes on from what is left of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import TypeAdapter
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from adapters.pagination import keyset_page
from gateway.db import Database, ResponseInputItem, StoredResponse, affected_rows
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.responses.objects import InputItemList, InputItemOut, ResponseDeleted, ResponseObject

_ITEMS: TypeAdapter[InputItemOut] = TypeAdapter(InputItemOut)
_BATCH = 500


@dataclass(frozen=True)
class Chain:
    """What a new response continues: the items of its ancestors (each one's input, then its output), oldest
    first, and how many responses the chain holds."""

    depth: int
    items: list[InputItemOut]


NO_CHAIN = Chain(0, [])


class ResponseStore:
    def __init__(self, db: Database, max_chain_depth: int) -> None:
        self._db = db
        self.max_chain_depth = max_chain_depth

    def save(self, tenant_id: str, response: ResponseObject, items: list[InputItemOut], depth: int) -> None:
        """Blocking: the response and its input items, in one transaction."""
        with self._db.session() as session:
            session.add(
                StoredResponse(
                    id=response.id,
                    tenant_id=tenant_id,
                    previous_response_id=response.previous_response_id,
                    depth=depth,
                    body=response.model_dump(mode="json"),
                    created_at=datetime.fromtimestamp(response.created_at, UTC).replace(tzinfo=None),
                )
            )
            session.add_all(
                ResponseInputItem(
                    response_id=response.id, item_id=item.id, position=i, item=item.model_dump(mode="json")
                )
                for i, item in enumerate(items)
            )

    def chain(self, tenant_id: str, previous_id: str) -> Chain:
        """Blocking: the conversation ``previous_id`` ends (a 400 naming ``previous_response_id`` if the tenant has
        no such response, or if continuing it would pass the longest chain allowed)."""
        with self._db.sessions() as session:
            last = _owned(session, tenant_id, previous_id)
            if last is None:
                raise InvalidRequestError(
                    f"Previous response with id '{previous_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            if last.depth >= self.max_chain_depth:
                raise InvalidRequestError(
                    f"Response '{previous_id}' ends a chain of {last.depth} responses; this server continues chains "
                    f"of at most {self.max_chain_depth}. Start a new one, sending the context as input.",
                    param="previous_response_id",
                    code="response_chain_too_long",
                )
            ancestors = [last]
            while (parent_id := ancestors[-1].previous_response_id) is not None and len(ancestors) < last.depth:
                parent = _owned(session, tenant_id, parent_id)
                if parent is None:
                    break
                ancestors.append(parent)
            ids = [row.id for row in ancestors]
            inputs: dict[str, list[dict[str, Any]]] = {row_id: [] for row_id in ids}
            query = select(ResponseInputItem).where(ResponseInputItem.response_id.in_(ids))
            for item in session.scalars(query.order_by(ResponseInputItem.position)):
                inputs[item.response_id].append(item.item)
        items: list[InputItemOut] = []
        for row in reversed(ancestors):
            items.extend(_ITEMS.validate_python(item) for item in inputs[row.id])
            items.extend(_ITEMS.validate_python(item) for item in row.body.get("output", ()))
        return Chain(last.depth, items)

    def get(self, tenant_id: str, response_id: str) -> ResponseObject:
        with self._db.sessions() as session:
            row = _owned(session, tenant_id, response_id)
            if row is None:
                raise _not_found(response_id)
            return ResponseObject.model_validate(row.body)

    def delete(self, tenant_id: str, response_id: str) -> ResponseDeleted:
        with self._db.session() as session:
            gone = session.execute(
                delete(StoredResponse).where(StoredResponse.id == response_id, StoredResponse.tenant_id == tenant_id)
            )
            if not affected_rows(gone):
                raise _not_found(response_id)
            session.execute(delete(ResponseInputItem).where(ResponseInputItem.response_id == response_id))
        return ResponseDeleted(id=response_id)

    def input_items(
        self, tenant_id: str, response_id: str, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> InputItemList:
        with self._db.sessions() as session:
            if _owned(session, tenant_id, response_id) is None:
                raise _not_found(response_id)
            query = select(ResponseInputItem).where(ResponseInputItem.response_id == response_id)
            cursor = None
            if after is not None:
                position = session.scalar(
                    select(ResponseInputItem.position).where(
                        ResponseInputItem.response_id == response_id, ResponseInputItem.item_id == after
                    )
                )
                if position is None:
                    raise NotFoundError(f"No input item with id '{after}' in response '{response_id}'.", param="after")
                cursor = (position,)
            keys = (ResponseInputItem.position,)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
        return InputItemList.of([_ITEMS.validate_python(row.item) for row in rows], more)


def purge_responses(db: Database, before: datetime) -> int:
    """Blocking: responses created before ``before`` (and their items), in batches; how many went. Any number of
    gateways may run it at once (a row is deleted once)."""
    total = 0
    while True:
        with db.session() as session:
            ids = list(
                session.scalars(select(StoredResponse.id).where(StoredResponse.created_at < before).limit(_BATCH))
            )
            if not ids:
                return total
            total += _delete(session, StoredResponse.id.in_(ids), ResponseInputItem.response_id.in_(ids))


def erase_tenant_responses(session: Session, tenant_id: str) -> int:
    """In the caller's transaction: every response of the tenant, with its items; how many responses."""
    owned = select(StoredResponse.id).where(StoredResponse.tenant_id == tenant_id).scalar_subquery()
    return _delete(session, StoredResponse.tenant_id == tenant_id, ResponseInputItem.response_id.in_(owned))


def _delete(session: Session, responses: Any, items: Any) -> int:
    session.execute(delete(ResponseInputItem).where(items).execution_options(synchronize_session=False))
    gone = session.execute(delete(StoredResponse).where(responses).execution_options(synchronize_session=False))
    return affected_rows(gone)


def _owned(session: Session, tenant_id: str, response_id: str) -> StoredResponse | None:
    row = session.get(StoredResponse, response_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def _not_found(response_id: str) -> NotFoundError:
    shown = response_id if len(response_id) <= 64 else response_id[:64] + "..."
    return NotFoundError(f"No response found with id '{shown}'.", param="response_id", code="response_not_found")
