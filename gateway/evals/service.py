"""Evals, their runs and the runs' items on the database, always scoped to one tenant (another tenant's eval is
simply not found), in OpenAI's object shapes; and what the eval runner needs: claiming a run (compare-and-set,
any gateway; a run whose runner stopped heartbeating is taken over and resumed), its pending items, each
item's sample and grades, and the run's end."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.clock import utcnow
from gateway.db import Database, Eval, EvalRun, EvalRunItem
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.models import EvalCreate, EvalUpdate, RunCreate
from gateway.tenancy.keys import new_id
from gateway.tenancy.service import lock_live_tenant

FINAL = ("completed", "failed", "canceled")
PENDING = "pending"


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def eval_object(row: Eval) -> dict[str, Any]:
    properties: dict[str, Any] = {"item": row.item_schema}
    required = ["item"]
    if row.include_sample_schema:
        properties["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        required.append("sample")
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": {
            "type": "custom",
            "schema": {"type": "object", "properties": properties, "required": required},
        },
        "testing_criteria": row.testing_criteria,
        "created_at": _epoch(row.created_at),
        "metadata": row.user_metadata,
    }


def run_object(row: EvalRun, counts: dict[str, int], per_criteria: list[dict[str, Any]]) -> dict[str, Any]:
    usage = row.usage or {}
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "name": row.name,
        "model": row.model,
        "status": row.status,
        "created_at": _epoch(row.created_at),
        "data_source": row.data_source,
        "error": row.error,
        "result_counts": counts,
        "per_testing_criteria_results": per_criteria,
        "per_model_usage": [
            {
                "model_name": row.model,
                "invocation_count": usage.get("invocation_count", 0),
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
                "cached_tokens": 0,
            }
        ]
        if usage.get("invocation_count")
        else [],
        "report_url": f"/v1/evals/{row.eval_id}/runs/{row.id}",
        "metadata": row.user_metadata,
    }


def output_item_object(row: EvalRunItem, run: EvalRun) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": output_item_id(run.id, row.position),
        "run_id": run.id,
        "eval_id": run.eval_id,
        "created_at": _epoch(row.created_at),
        "status": row.status,
        "datasource_item_id": row.position,
        "datasource_item": row.item,
        "results": row.results or [],
        "sample": row.sample,
    }


def _tally(rows: list[tuple[str, list[dict[str, Any]] | None]], criteria: list[str]) -> tuple[dict[str, int], list]:
    """Result counts and per-criterion passes from (status, results) of a run's graded items."""
    statuses = Counter(status for status, _ in rows)
    counts = {
        "total": sum(statuses.values()),
        "passed": statuses["pass"],
        "failed": statuses["fail"],
        "errored": statuses["error"],
    }
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for _, results in rows:
        for result in results or []:
            (passed if result["passed"] else failed)[result["name"]] += 1
    per_criteria = [{"testing_criteria": name, "passed": passed[name], "failed": failed[name]} for name in criteria]
    return counts, per_criteria


def _page(session: Session, query: Any, key: Any, after: Any, limit: int, descending: bool) -> tuple[list[Any], bool]:
    if after is not None:
        query = query.where(key < after if descending else key > after)
    rows = list(session.scalars(query.order_by(key.desc() if descending else key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


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

    def create(self, tenant_id: str, body: EvalCreate) -> dict[str, Any]:
        row = Eval(
            id=new_id("eval"),
            tenant_id=tenant_id,
            name=body.name or "eval",
            item_schema=body.data_source_config.item_schema,
            include_sample_schema=body.data_source_config.include_sample_schema,
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

    def get(self, tenant_id: str, eval_id: str) -> dict[str, Any]:
        return eval_object(self.definition(tenant_id, eval_id))

    def list(self, tenant_id: str, after: str | None, limit: int, order: str) -> dict[str, Any]:
        with self._db.session() as session:
            cursor = self._own(session, tenant_id, after).created_at if after else None
            query = select(Eval).where(Eval.tenant_id == tenant_id)
            rows, more = _page(session, query, Eval.created_at, cursor, limit, order == "desc")
            return _listing([eval_object(row) for row in rows], more)

    def update(self, tenant_id: str, eval_id: str, body: EvalUpdate) -> dict[str, Any]:
        with self._db.session() as session:
            row = self._own(session, tenant_id, eval_id)
            if body.name is not None:
                row.name = body.name
            if "metadata" in body.model_fields_set:
                row.user_metadata = body.metadata
            session.flush()
            return eval_object(row)

    def delete(self, tenant_id: str, eval_id: str, actor: audit.Actor) -> dict[str, Any]:
        """The eval, its runs and their items (the tenant's content: items and samples)."""
        with self._db.session() as session:
            self._own(session, tenant_id, eval_id)
            runs = select(EvalRun.id).where(EvalRun.eval_id == eval_id)
            session.execute(delete(EvalRunItem).where(EvalRunItem.run_id.in_(runs)))
            session.execute(delete(EvalRun).where(EvalRun.eval_id == eval_id))
            session.execute(delete(Eval).where(Eval.id == eval_id))
            audit.record(session, actor, "eval.delete", "eval", eval_id, tenant_id)
        return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}

    # -- runs ------------------------------------------------------------------------------------------------------
    def create_run(
        self,
        tenant_id: str,
        key_id: str,
        eval_id: str,
        body: RunCreate,
        model: str,
        items: list[tuple[dict[str, Any], dict[str, Any] | None]],
    ) -> dict[str, Any]:
        now = utcnow()
        run = EvalRun(
            id=new_id("evalrun"),
            eval_id=eval_id,
            tenant_id=tenant_id,
            key_id=key_id,
            name=body.name or f"{model} run",
            model=model,
            data_source=body.data_source.model_dump(exclude={"source"}) | {"source": _source_summary(body)},
            status="queued",
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
                EvalRunItem.__table__.insert(),
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

    def _run_object(self, session: Session, run: EvalRun) -> dict[str, Any]:
        if run.status in FINAL and run.per_criteria:
            return run_object(run, run.result_counts, run.per_criteria)
        criteria = [c["name"] for c in session.get(Eval, run.eval_id).testing_criteria]  # type: ignore[union-attr]
        graded = session.execute(
            select(EvalRunItem.status, EvalRunItem.results).where(
                EvalRunItem.run_id == run.id, EvalRunItem.status != PENDING
            )
        ).all()
        counts, per_criteria = _tally([(status, results) for status, results in graded], criteria)
        counts["total"] = run.result_counts.get("total", counts["total"])
        return run_object(run, counts, per_criteria)

    def get_run(self, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
        with self._db.session() as session:
            return self._run_object(session, self._own_run(session, tenant_id, eval_id, run_id))

    def list_runs(
        self, tenant_id: str, eval_id: str, after: str | None, limit: int, order: str, status: str | None
    ) -> dict[str, Any]:
        with self._db.session() as session:
            self._own(session, tenant_id, eval_id)
            cursor = self._own_run(session, tenant_id, eval_id, after).created_at if after else None
            query = select(EvalRun).where(EvalRun.eval_id == eval_id)
            if status:
                query = query.where(EvalRun.status == status)
            rows, more = _page(session, query, EvalRun.created_at, cursor, limit, order == "desc")
            return _listing([self._run_object(session, row) for row in rows], more)

    def cancel_run(self, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            if run.status in FINAL:
                raise InvalidRequestError(f"The run has already {run.status}.", param="run_id")
            session.execute(
                update(EvalRun)
                .where(EvalRun.id == run_id, EvalRun.status.in_(("queued", "in_progress")))
                .values(status="canceled", finished_at=utcnow())
            )
            session.refresh(run)
            return self._run_object(session, run)

    def delete_run(self, tenant_id: str, eval_id: str, run_id: str, actor: audit.Actor) -> dict[str, Any]:
        """The run and its items (with their samples)."""
        with self._db.session() as session:
            self._own_run(session, tenant_id, eval_id, run_id)
            session.execute(delete(EvalRunItem).where(EvalRunItem.run_id == run_id))
            session.execute(delete(EvalRun).where(EvalRun.id == run_id))
            audit.record(session, actor, "eval_run.delete", "eval_run", run_id, tenant_id, {"eval_id": eval_id})
        return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}

    def output_items(
        self,
        tenant_id: str,
        eval_id: str,
        run_id: str,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> dict[str, Any]:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            query = select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.status != PENDING)
            if status:
                query = query.where(EvalRunItem.status == status)
            cursor = _item_position(after, run_id, "after") if after else None
            rows, more = _page(session, query, EvalRunItem.position, cursor, limit, order == "desc")
            return _listing([output_item_object(row, run) for row in rows], more)

    def output_item(self, tenant_id: str, eval_id: str, run_id: str, item_id: str) -> dict[str, Any]:
        with self._db.session() as session:
            run = self._own_run(session, tenant_id, eval_id, run_id)
            position = _item_position(item_id, run_id, "output_item_id")
            row = session.scalar(
                select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.position == position)
            )
            if row is None or row.status == PENDING:
                raise NotFoundError(f"No output item found with id '{item_id}'.", param="output_item_id")
            return output_item_object(row, run)

    # -- the runner ------------------------------------------------------------------------------------------------
    def claim(self, runner_id: str, stale_after: float) -> str | None:
        """A queued run, or one whose runner stopped heartbeating, now this runner's (compare-and-set)."""
        now = utcnow()
        stale = now - timedelta(seconds=stale_after)
        waiting = or_(EvalRun.status == "queued", (EvalRun.status == "in_progress") & (EvalRun.heartbeat_at < stale))
        with self._db.session() as session:
            candidates = session.scalars(select(EvalRun.id).where(waiting).order_by(EvalRun.created_at).limit(5)).all()
            for run_id in candidates:
                taken = session.execute(
                    update(EvalRun)
                    .where(EvalRun.id == run_id, waiting)
                    .values(status="in_progress", runner_id=runner_id, heartbeat_at=now, started_at=now)
                )
                if taken.rowcount:
                    return run_id
        return None

    def run_for_runner(self, run_id: str) -> tuple[EvalRun, Eval]:
        with self._db.session() as session:
            run = session.get(EvalRun, run_id)
            definition = session.get(Eval, run.eval_id) if run else None
            if run is None or definition is None:
                raise NotFoundError(f"No run found with id '{run_id}'.")
            session.expunge_all()
            return run, definition

    def heartbeat(self, run_id: str, runner_id: str) -> bool:
        """Still this runner's and still running (False once cancelled, deleted or taken over)."""
        with self._db.session() as session:
            beat = session.execute(
                update(EvalRun)
                .where(EvalRun.id == run_id, EvalRun.runner_id == runner_id, EvalRun.status == "in_progress")
                .values(heartbeat_at=utcnow())
            )
            return bool(beat.rowcount)

    def pending(self, run_id: str) -> list[EvalRunItem]:
        with self._db.session() as session:
            rows = list(
                session.scalars(
                    select(EvalRunItem)
                    .where(EvalRunItem.run_id == run_id, EvalRunItem.status == PENDING)
                    .order_by(EvalRunItem.position)
                )
            )
            session.expunge_all()
            return rows

    def record(self, item_id: int, status: str, sample: dict[str, Any], results: list[dict[str, Any]]) -> None:
        with self._db.session() as session:
            session.execute(
                update(EvalRunItem)
                .where(EvalRunItem.id == item_id, EvalRunItem.status == PENDING)
                .values(status=status, sample=sample, results=results, created_at=utcnow())
            )

    def finish(self, run_id: str, runner_id: str, status: str, error: dict[str, str] | None) -> None:
        """End the run (if still this runner's and running) with its tallies and usage, counted from its items."""
        with self._db.session() as session:
            run = session.get(EvalRun, run_id)
            definition = session.get(Eval, run.eval_id) if run else None
            if run is None or definition is None:
                return
            graded = session.execute(
                select(EvalRunItem.status, EvalRunItem.results, EvalRunItem.sample).where(
                    EvalRunItem.run_id == run_id, EvalRunItem.status != PENDING
                )
            ).all()
            total = session.scalar(select(func.count()).where(EvalRunItem.run_id == run_id))
            counts, per_criteria = _tally(
                [(s, r) for s, r, _ in graded], [c["name"] for c in definition.testing_criteria]
            )
            counts["total"] = int(total or 0)
            usage = Counter[str]()
            for _, _, sample in graded:
                if sample and sample.get("usage"):
                    usage["invocation_count"] += 1
                    usage["prompt_tokens"] += sample["usage"]["prompt_tokens"]
                    usage["completion_tokens"] += sample["usage"]["completion_tokens"]
            session.execute(
                update(EvalRun)
                .where(EvalRun.id == run_id, EvalRun.runner_id == runner_id, EvalRun.status == "in_progress")
                .values(
                    status=status,
                    error=error,
                    result_counts=counts,
                    per_criteria=per_criteria,
                    usage=dict(usage),
                    finished_at=utcnow(),
                )
            )


_TAG_BYTES = 12
_OUTPUT_ITEM_ID = re.compile(rf"outputitem_([0-9a-f]{{{2 * _TAG_BYTES}}})([0-9a-f]{{1,8}})")


def output_item_id(run_id: str, position: int) -> str:
    """An output item's id: its position in its run under a tag only the run's own (random) id yields, so it is as
    unguessable as the run's id and tells nothing of other runs or tenants (no global sequence)."""
    return f"outputitem_{_tag(run_id, position)}{position:x}"


def _tag(run_id: str, position: int) -> str:
    return hashlib.blake2b(f"{run_id}/{position}".encode(), digest_size=_TAG_BYTES).hexdigest()


def _item_position(value: str, run_id: str, param: str) -> int:
    """The position an output item id of this run names; any other id is a 404 (``after``: a 400)."""
    match = _OUTPUT_ITEM_ID.fullmatch(value)
    if match is None or match.group(1) != _tag(run_id, int(match.group(2), 16)):
        error = NotFoundError if param == "output_item_id" else InvalidRequestError
        raise error(f"No output item of this run has the id '{value[:60]}'.", param=param)
    return int(match.group(2), 16)


def _source_summary(body: RunCreate) -> dict[str, Any]:
    """The run's source as its object shows it (inline content is summarized, not echoed back whole)."""
    source = body.data_source.source
    if source.type == "file_id":
        return {"type": "file_id", "id": source.id}
    return {"type": "file_content", "items": len(source.content)}
