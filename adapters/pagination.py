"""Keyset pagination, written once: one page of rows after a cursor row (``after`` / ``limit``, and whether more
follow), and the list envelopes OpenAI's list endpoints answer: ``object: "list"`` and ``data``, with
``has_more`` on paged lists and ``first_id`` / ``last_id`` where the endpoint has them.

It lives at the bottom of the layering (``adapters`` imports no gateway module) because the fine-tuning job
store pages with it as the gateway's files, evals and audit log do."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import Session

Row = TypeVar("Row")
Item = TypeVar("Item")
IdT = TypeVar("IdT", str, int)
_id_of = attrgetter("id")


class ListOf(BaseModel, Generic[Item]):
    """A whole list (no paging)."""

    object: Literal["list"] = "list"
    data: list[Item]


class Page(ListOf[Item], Generic[Item]):
    """One page of a list; the next starts ``after`` the last item's id."""

    has_more: bool


class CursorPage(Page[Item], Generic[Item, IdT]):
    """One page with the ids of its first and last item (``null`` on an empty page)."""

    first_id: IdT | None
    last_id: IdT | None

    @classmethod
    def of(cls, data: Sequence[Item], has_more: bool) -> Self:
        """The page of ``data`` (items with an ``id``)."""
        first, last = (_id_of(data[0]), _id_of(data[-1])) if data else (None, None)
        return cls(data=list(data), has_more=has_more, first_id=first, last_id=last)


def keyset_page(
    session: Session,
    query: Select[Row],
    keys: Sequence[Any],
    after: Sequence[Any] | None,
    limit: int,
    *,
    descending: bool = False,
) -> tuple[list[Row], bool]:
    """Up to ``limit`` rows of ``query`` ordered by the columns ``keys``, starting after the cursor whose key
    values are ``after`` (None: from the start), and whether more rows follow."""
    if after is not None:
        query = query.where(_beyond(keys, after, descending))
    order = [key.desc() for key in keys] if descending else list(keys)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _beyond(keys: Sequence[Any], after: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    if len(keys) == 1:  # a plain comparison (``after`` may be a scalar subquery: NULL when the cursor is unknown)
        condition: ColumnElement[bool] = keys[0] < after[0] if descending else keys[0] > after[0]
        return condition
    row, cursor = tuple_(*keys), tuple_(*after)
    return row < cursor if descending else row > cursor
