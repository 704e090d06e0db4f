"""Evals, their runs and the runs' output items on the database, as the API serves them: always scoped to one
tenant (another tenant's eval is simply not found), in OpenAI's object shapes (``gateway.evals.objects``). What
the eval runner does with a run is ``gateway.evals.queue``'s."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from adapters.pagination import keyset_page
from gateway import audit
from gateway.clock import utcnow
from gateway.db import Database, Eval, EvalRun, EvalRunItem
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.models import EvalCreate, EvalUpdate, RunCreate
from gateway.evals.objects import eval_object, item_position, output_item_object, run_object, tally
from gateway.evals.queue import end_run
from gateway.evals.recipe import FINAL, PENDING, RunStatus, data_source_column
from gateway.evals.schemas import (
    EvalDeleted,
    EvalList,
    EvalOut,
    EvalRunOut,
    OutputItemList,
    OutputItemOut,
    RunDeleted,
    RunList,
)
from gateway.evals.stored import STORED_ITEM_SCHEMA
from gateway.tenancy.keys import new_id
from gateway.tenancy.service import lock_live_tenant

__all__ = ["FINAL", "EvalService"]


class EvalService:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- evals -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _own(session: Session, tenant_id: str, eval_id: str) -> Eval:
        row = session.get(Eval, eval_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"No eval found with id '{eval_id}'.", param="eval_id")
        return row

    def create(self, tenant_id: str, body: EvalCreate) -> EvalOut:
        config = body.data_source_config
        row = Eval(
            id=new_id("eval"),
            tenant_id=tenant_id,
            name=body.name or "eval",
            item_schema=config.item_schema if config.type == "custom" else STORED_ITEM_SCHEMA,
            include_sample_schema=config.include_sample_schema if config.type == "custom" else True,
            stored_completions=None if config.type == "custom" else config.model_dump(),
            testing_criteria=[criterion.model_dump() for criterion in body.testing_criteria],
            user_metadata=body.metadata,
            created_at=utcnow(),
        )
        with self._db.session() as session:
            lock_live_tenant(session, tenant_id, "eval")
            session.add(row)
        return eval_object(row)

    def definition(self, tenant_id: str, eval_id: str) -> Eval:
        with self._db.session() as session:
            row = self._own(session, tenant_id, eval_id)
            session.expunge(row)
            return row

    def get(self, tenant_id: str, eval_id: str) -> EvalOut:
        return eval_object(self.definition(tenant_id, eval_id))

    def list(self, tenant_id: str, after: str | None, limit: int, order: str) -> EvalList:
        with self._db.session() as session:
            cursor = (self._own(session, tenant_id, after).created_at,) if after else None
            query = select(Eval).where(Eval.tenant_id == tenant_id)
            rows, more = keyset_page(session, query, (Eval.created_at,), cursor, limit, descending=order == "desc")
            return EvalList.of([eval_object(row) for row in rows], more)

    def update(self, tenant_id: str, eval_id: str, body: EvalUpdate) -> EvalOut:
        with self._db.session() as session:
            row = self._own(session, tenant_id, eval_id)
            if body.name is not None:
                row.name = body.name
            if "metadata" in body.model_fields_set:
                row.user_metadata = body.metadata
            session.flush()
            return eval_object(row)

    def delete(self, tenant_id: str, eval_id: str, actor: audit.Actor) -> EvalDeleted:
        """The eval, its runs and their items (the tenant's content: items and samples)."""
        with self._db.session() as session:
            self._own(session, tenant_id, eval_id)
            runs = select(EvalRun.id).where(EvalRun.eval_id == eval_id)
            session.execute(delete(EvalRunItem).where(EvalRunItem.run_id.in_(runs)))
            session.execute(delete(EvalRun).where(EvalRun.eval_id == eval_id))
            session.execute(delete(Eval).where(Eval.id == eval_id))
            audit.record(session, actor, "eval.delete", "eval", eval_id, tenant_id)
        return EvalDeleted(eval_id=eval_id)

    # -- runs ------------------------------------------------------------------------------------------------------
    def create_run(
        self,
        tenant_id: str,
        key_id: str,
        eval_id: str,
        body: RunCreate,
        model: str,
        items: builtins.list[tuple[dict[str, Any], dict[str, Any] | None]],
    ) -> EvalRunOut:
        now = utcnow()
        run = EvalRun(
            id=new_id("evalrun"),
            eval_id=eval_id,
            tenant_id=tenant_id,
            key_id=key_id,
            name=body.name or f"{model} run",
            model=model,
            data_source=data_source_column(body),
            status=RunStatus.QUEUED,
            result_counts={"total": len(items), "passed": 0, "failed": 0, "errored": 0},
            per_criteria=[],
            usage={},
            user_metadata=body.metadata,
            created_at=now,
        )
        with self._db.session() as session:
            lock_live_tenant(session, tenant_id, "eval_id")
            self._own(session, tenant_id, eval_id)
            session.add(run)
            session.execute(
                insert(EvalRunItem),
                [
                    {
                        "run_id": run.id,
                        "position": index,
                        "item": item,
                        "given_sample": sample,
                        "status": PENDING,
                        "created_at": now,
                    }
                    for index, (item, sample) in enumerate(items)
                ],
            )
            session.flush()
            return self._run_object(session, run)

    def _own_run(self, session: Session, tenant_id: str, eval_id: str, run_id: str) -> EvalRun:
        self._own(session, tenant_id, eval_id)
        run = session.get(EvalRun, run_id)
        if run is None or run.eval_id != eval_id:
            raise NotFoundError(f"No run found with id '{run_id}'.", param="run_id")
        return run

    def _run_object(self, session: Session, run: EvalRun) -> EvalRunOut:
        if run.status in FINAL and run.per_criteria:
            return run_object(run, run.result_counts, run.per_criteria)
        criteria = [c["name"] for c in session.get(Eval, run.eval_id).testing_criteria]  # type: ignore[union-attr]
        graded = session.execute(
            select(EvalRunItem.status, EvalRunItem.results).where(
                EvalRunItem.run_id == run.id, EvalRunItem.status != PENDING
            )
        ).all()
        counts, per_criteria = tally([(status, results) for status, results in graded], criteria)
        counts["total"] = run.result_counts.get("total", counts["total"])
        return run_object(run, counts, per_criteria)

    def get_run(self, tenant_id: str, eval_id: str, run_id: str) -> EvalRunOut:
        with self._db.session() as session:
            return self._run_object(session, self._own_run(session, tenant_id, eval_id, run_id))

    def list_runs(
        self, tenant_id: str, eval_id: str, after: str | None, limit: int, order: str, status: str | None
    ) -> RunList:
        with self._db.session() as session:
            self._own(session, tenant_id, eval_id)
            cursor = (self._own_run(session, tenant_id, eval_id, after).created_at,) if after else None
            query = select(EvalRun).where(EvalRun.eval_id == eval_id)
            if status:
                query = query.where(EvalRun.status == status)
            keys = (EvalRun.created_at,)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
            return RunList.of([self._run_object(session, row) for row in rows], more)

    def cancel_run(self, tenant_id: str, eval_id: str, run_id: str) -> EvalRunOut:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            if run.status in FINAL:
                raise InvalidRequestError(f"The run has already {run.status}.", param="run_id")
            end_run(session, run, RunStatus.CANCELED, expected=(RunStatus.QUEUED, RunStatus.IN_PROGRESS))
            session.refresh(run)
            return self._run_object(session, run)

    def delete_run(self, tenant_id: str, eval_id: str, run_id: str, actor: audit.Actor) -> RunDeleted:
        """The run and its items (with their samples)."""
        with self._db.session() as session:
            self._own_run(session, tenant_id, eval_id, run_id)
            session.execute(delete(EvalRunItem).where(EvalRunItem.run_id == run_id))
            session.execute(delete(EvalRun).where(EvalRun.id == run_id))
            audit.record(session, actor, "eval_run.delete", "eval_run", run_id, tenant_id, {"eval_id": eval_id})
        return RunDeleted(run_id=run_id)

    def output_items(
        self,
        tenant_id: str,
        eval_id: str,
        run_id: str,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> OutputItemList:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            query = select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.status != PENDING)
            if status:
                query = query.where(EvalRunItem.status == status)
            cursor = (item_position(after, run_id, "after"),) if after else None
            keys = (EvalRunItem.position,)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
            return OutputItemList.of([output_item_object(row, run) for row in rows], more)

    def output_item(self, tenant_id: str, eval_id: str, run_id: str, item_id: str) -> OutputItemOut:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            position = item_position(item_id, run_id, "output_item_id")
            row = session.scalar(
                select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.position == position)
            )
            if row is None or row.status == PENDING:
                raise NotFoundError(f"No output item found with id '{item_id}'.", param="output_item_id")
            return output_item_object(row, run)
