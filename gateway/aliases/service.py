"""Aliases on the database: create, move, roll back, delete, list and history, for a tenant's key or the operator.

Every change is one transaction, under the tenant's lock (as a model's deletion and the tenant's erasure are), with
its version row and its audit entry, and then this gateway's ``AliasBook`` forgets the tenant's aliases (the other
gateways read them anew within their TTL). The rules:

- a name is the tenant's own (another tenant's alias is as absent as a missing one), never a base model's;
- every target is a model the tenant can call by its own name (a base model or its own ``ft:`` model or
  checkpoint, checked through the catalog when set: never an alias, never another tenant's); a split's targets
  all generate or all embed;
- a move may be gated (``Gate``): refused with a 409 naming the score unless every target's latest completed
  run of the eval that sampled it scores at least ``min_score``; a gate given with a move is kept for the later
  ones, and one the operator set only the operator may change or drop;
- a rollback restores the targets in force before the current version (again and again, back to the creation);
- a tenant's key changes aliases only if it is a key manager, names only aliases its ``allowed_models`` lists,
  and points them only at models it may use; the operator may do anything (``key`` None)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.api_objects import epoch
from adapters.store import Adapter
from gateway import audit, bounds
from gateway.aliases.models import (
    AliasCreate,
    AliasDeleted,
    AliasHistory,
    AliasList,
    AliasOut,
    AliasSetting,
    AliasVersionOut,
    Gate,
)
from gateway.clock import utcnow
from gateway.db import Database, Eval, EvalRun, ModelAlias, ModelAliasVersion, Tenant, affected_rows
from gateway.errors import APIError, ConflictError, InvalidRequestError, NotFoundError, PermissionDenied
from gateway.evals.recipe import CompletionsRecipe, RunStatus, run_recipe
from gateway.inference.aliases import AliasBook
from gateway.inference.catalog import ModelCatalog
from gateway.inference.schemas import AliasTarget
from gateway.tenancy.keys import new_id
from gateway.tenancy.principal import TenantPrincipal

T = TypeVar("T")
_NO_RETRY = {"x-should-retry": "false"}
"""A refusal that retrying cannot change (the SDKs retry a 409 unless told not to)."""


def _alias_out(row: ModelAlias) -> AliasOut:
    return AliasOut(
        id=row.id,
        name=row.name,
        targets=[AliasTarget.model_validate(target) for target in row.targets],
        gate=_gate_of(row),
        version=row.version,
        created_at=epoch(row.created_at),
        updated_at=epoch(row.updated_at),
    )


def _version_out(row: ModelAliasVersion) -> AliasVersionOut:
    return AliasVersionOut.model_validate(
        {
            "version": row.version,
            "action": row.action,
            "targets": row.targets,
            "actor": row.actor,
            "created_at": epoch(row.created_at),
        }
    )


_SET_BY = "set_by"
"""Kept beside a gate in its column: ``operator`` (a tenant's key may not change or drop it) or ``tenant``."""


def _gate_of(row: ModelAlias) -> Gate | None:
    if not row.gate:
        return None
    return Gate.model_validate({k: v for k, v in row.gate.items() if k != _SET_BY})


def _lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise the tenant's alias changes, its models' deletions and its erasure: an UPDATE that changes nothing
    locks the tenant's row on PostgreSQL and takes the write lock on SQLite (where ``FOR UPDATE`` is ignored), so
    what this transaction reads next is what the one before it committed. A tenant gone meanwhile is a 404."""
    locked = session.execute(update(Tenant).where(Tenant.id == tenant_id).values(status=Tenant.status))
    if not affected_rows(locked):
        raise NotFoundError("This organization no longer exists.", param="name")


def _check_still_there(session: Session, tenant_id: str, targets: list[AliasTarget]) -> None:
    """Under the tenant lock: every ``ft:`` target still has its row (a deletion may have committed since the
    targets were checked), so an alias never points at a deleted model."""
    names = {target.model for target in targets if target.model.startswith("ft:")}
    if not names:
        return
    present = set(session.scalars(select(Adapter.name).where(Adapter.tenant_id == tenant_id, Adapter.name.in_(names))))
    for gone in sorted(names - present):
        raise InvalidRequestError(f"The model '{gone}' was deleted meanwhile.", param="targets", code="model_not_found")


def _targets_json(targets: list[AliasTarget]) -> list[dict[str, Any]]:
    return [target.model_dump() for target in targets]


def _own(session: Session, tenant_id: str, name: str, key: TenantPrincipal | None, lock: bool = False) -> ModelAlias:
    """The tenant's alias of this name (one its key may not use: as absent as a missing one)."""
    query = select(ModelAlias).where(ModelAlias.tenant_id == tenant_id, ModelAlias.name == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None or (key is not None and not key.may_use(row.name, [t["model"] for t in row.targets])):
        raise NotFoundError(f"No alias named '{name[: bounds.ALIAS_NAME]}'.", param="name", code="alias_not_found")
    return row


def _check_gate(session: Session, tenant_id: str, gate: Gate, targets: list[AliasTarget], given: bool) -> None:
    """Every target's latest completed run of the gate's eval that sampled it scores at least ``min_score``
    (``given``: the gate came with this request, else it is the alias's kept one)."""
    evaluation = session.get(Eval, gate.eval_id)
    if evaluation is None or evaluation.tenant_id != tenant_id:
        if not given:
            raise ConflictError(
                f"The alias's gate names eval '{gate.eval_id}', which no longer exists; send \"gate\": null or a "
                "new gate with the move.",
                param="gate",
                code="alias_gate_failed",
                headers=_NO_RETRY,
            )
        raise NotFoundError(f"No eval found with id '{gate.eval_id}'.", param="gate.eval_id")
    for target in targets:
        runs = (
            select(EvalRun)
            .where(
                EvalRun.tenant_id == tenant_id,
                EvalRun.eval_id == gate.eval_id,
                EvalRun.model == target.model,
                EvalRun.status == RunStatus.COMPLETED,
            )
            .order_by(EvalRun.finished_at.desc(), EvalRun.created_at.desc())
        )
        # Only a run that sampled the target says anything of it (one over stored completions grades whatever
        # model answered them).
        run = next((run for run in session.scalars(runs) if isinstance(run_recipe(run), CompletionsRecipe)), None)
        refused = f"The gate refuses '{target.model}': "
        if run is None:
            message = (
                f"eval '{gate.eval_id}' has no completed run that sampled it (score: none; min_score {gate.min_score})."
            )
            raise ConflictError(refused + message, param="gate", code="alias_gate_failed", headers=_NO_RETRY)
        total, passed = run.result_counts.get("total", 0), run.result_counts.get("passed", 0)
        score = passed / total if total else 0.0
        if score < gate.min_score:
            message = (
                f"its latest completed run of eval '{gate.eval_id}' ({run.id}) scored {score:.4g} "
                f"({passed}/{total} passed), below min_score {gate.min_score}."
            )
            raise ConflictError(refused + message, param="gate", code="alias_gate_failed", headers=_NO_RETRY)


def _add_version(
    session: Session,
    row: ModelAlias,
    action: str,
    targets: list[dict[str, Any]],
    restores: int | None,
    actor: audit.Actor,
) -> None:
    """Put ``targets`` in force as the alias's next version, and forget the versions past what is kept."""
    now = utcnow()
    row.version += 1
    row.targets = targets
    row.updated_at = now
    version = ModelAliasVersion(
        alias_id=row.id,
        tenant_id=row.tenant_id,
        version=row.version,
        action=action,
        targets=targets,
        restores=restores,
        actor=actor.actor,
        created_at=now,
    )
    session.add(version)
    _flushed(session, row.name)  # a concurrent change's version: a 409, before the prune's autoflush raises it
    kept_from = row.version - bounds.ALIAS_HISTORY_KEPT
    session.execute(
        delete(ModelAliasVersion).where(ModelAliasVersion.alias_id == row.id, ModelAliasVersion.version <= kept_from)
    )
    details = {"name": row.name, "version": row.version, "targets": targets}
    audit.record(session, actor, f"alias.{action}", "model_alias", row.id, row.tenant_id, details)


def _flushed(session: Session, name: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"The alias '{name}' was created or moved meanwhile; try again.", param="name") from exc


class AliasService:
    def __init__(self, db: Database, catalog: ModelCatalog, book: AliasBook) -> None:
        self._db = db
        self._catalog = catalog
        self._book = book

    # -- reads (blocking) -----------------------------------------------------------------------------------------
    def list(self, tenant_id: str, key: TenantPrincipal | None = None) -> AliasList:
        """The tenant's aliases by name (for a key: those it may use)."""
        with self._db.session() as session:
            rows = session.scalars(
                select(ModelAlias).where(ModelAlias.tenant_id == tenant_id).order_by(ModelAlias.name)
            )
            shown = [row for row in rows if key is None or key.may_use(row.name, [t["model"] for t in row.targets])]
            return AliasList(data=[_alias_out(row) for row in shown])

    def get(self, tenant_id: str, name: str, key: TenantPrincipal | None = None) -> AliasOut:
        with self._db.session() as session:
            return _alias_out(_own(session, tenant_id, name, key))

    def history(self, tenant_id: str, name: str, key: TenantPrincipal | None = None) -> AliasHistory:
        """The alias's versions, newest first."""
        with self._db.session() as session:
            row = _own(session, tenant_id, name, key)
            versions = session.scalars(
                select(ModelAliasVersion)
                .where(ModelAliasVersion.alias_id == row.id)
                .order_by(ModelAliasVersion.version.desc())
            )
            return AliasHistory(data=[_version_out(version) for version in versions])

    # -- changes ---------------------------------------------------------------------------------------------------
    async def create(
        self, tenant_id: str, body: AliasCreate, actor: audit.Actor, key: TenantPrincipal | None = None
    ) -> AliasOut:
        _check_may_manage(key, body.name)
        if body.name in self._catalog.reserved_names():
            raise InvalidRequestError(
                f"'{body.name}' is the name of a base model; choose another name.",
                param="name",
                code="alias_name_taken",
            )
        targets = await self._checked_targets(tenant_id, body, key)

        def create() -> AliasOut:
            now = utcnow()
            with self._db.session() as session:
                _lock_tenant(session, tenant_id)
                _check_still_there(session, tenant_id, targets)
                held = session.scalar(
                    select(func.count()).select_from(ModelAlias).where(ModelAlias.tenant_id == tenant_id)
                )
                if (held or 0) >= bounds.ALIASES_PER_TENANT:
                    raise InvalidRequestError(
                        f"An organization may hold {bounds.ALIASES_PER_TENANT} aliases; delete one first.",
                        param="name",
                        code="too_many_aliases",
                    )
                if body.gate is not None:
                    _check_gate(session, tenant_id, body.gate, targets, given=True)
                row = ModelAlias(
                    id=new_id("alias"),
                    tenant_id=tenant_id,
                    name=body.name,
                    targets=[],
                    gate=_gate_json(body.gate, key),
                    version=0,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                try:
                    session.flush()
                except IntegrityError as exc:
                    message = f"An alias named '{body.name}' already exists."
                    raise ConflictError(message, param="name", headers=_NO_RETRY) from exc
                _add_version(session, row, "create", _targets_json(targets), None, actor)
                _flushed(session, body.name)
                return _alias_out(row)

        return await self._changed(tenant_id, create)

    async def move(
        self, tenant_id: str, name: str, body: AliasSetting, actor: audit.Actor, key: TenantPrincipal | None = None
    ) -> AliasOut:
        """Point the alias at ``body``'s targets in one step (gated by the body's gate, or else the kept one)."""
        _check_may_manage(key, name)
        targets = await self._checked_targets(tenant_id, body, key)

        def move() -> AliasOut:
            with self._db.session() as session:
                _lock_tenant(session, tenant_id)
                row = _own(session, tenant_id, name, key, lock=True)
                _check_still_there(session, tenant_id, targets)
                if body.gate_given:
                    _check_may_change_gate(row, key)
                    row.gate = _gate_json(body.gate, key)
                gate = _gate_of(row)
                if gate is not None:
                    _check_gate(session, tenant_id, gate, targets, given=body.gate_given)
                _add_version(session, row, "move", _targets_json(targets), row.version, actor)
                _flushed(session, name)
                return _alias_out(row)

        return await self._changed(tenant_id, move)

    async def rollback(
        self, tenant_id: str, name: str, actor: audit.Actor, key: TenantPrincipal | None = None
    ) -> AliasOut:
        """Restore the targets in force before the current version (not gated: it is the way back)."""
        _check_may_manage(key, name)
        version, previous = await run_in_threadpool(self._previous, tenant_id, name, key)
        restored = [AliasTarget.model_validate(target) for target in previous.targets]
        await self._check_targets(tenant_id, restored, key)

        def rollback() -> AliasOut:
            with self._db.session() as session:
                _lock_tenant(session, tenant_id)
                row = _own(session, tenant_id, name, key, lock=True)
                _check_still_there(session, tenant_id, restored)
                if row.version != version:
                    raise ConflictError(f"The alias '{name}' was moved meanwhile; try again.", param="name")
                _add_version(session, row, "rollback", previous.targets, previous.restores, actor)
                _flushed(session, name)
                return _alias_out(row)

        return await self._changed(tenant_id, rollback)

    async def delete(
        self, tenant_id: str, name: str, actor: audit.Actor, key: TenantPrincipal | None = None
    ) -> AliasDeleted:
        _check_may_manage(key, name)

        def delete_alias() -> AliasDeleted:
            with self._db.session() as session:
                _lock_tenant(session, tenant_id)
                row = _own(session, tenant_id, name, key, lock=True)
                session.execute(delete(ModelAliasVersion).where(ModelAliasVersion.alias_id == row.id))
                session.delete(row)
                audit.record(session, actor, "alias.delete", "model_alias", row.id, tenant_id, {"name": row.name})
                return AliasDeleted(id=row.id, name=row.name)

        return await self._changed(tenant_id, delete_alias)

    @staticmethod
    def refuse_aliased(session: Session, tenant_id: str, models: Collection[str]) -> None:
        """In the caller's transaction (a model's deletion): a 409 if an alias of the tenant points at one of
        ``models``, naming the aliases (deleting the model would break every client that calls them). Under the
        tenant's lock, as every alias change is: a move onto the model either committed before (a 409 here) or
        waits and then finds the model gone (a 400 there)."""
        _lock_tenant(session, tenant_id)
        rows = session.scalars(select(ModelAlias).where(ModelAlias.tenant_id == tenant_id))
        held = sorted({row.name for row in rows if any(target["model"] in models for target in row.targets)})
        if held:
            raise ConflictError(
                f"The alias(es) {', '.join(held)} point at this model; move or delete them first.",
                param="model",
                code="model_in_use",
                headers=_NO_RETRY,
            )

    # -- helpers ---------------------------------------------------------------------------------------------------
    async def _changed(self, tenant_id: str, change: Callable[[], T]) -> T:
        """Run a blocking change, then read the tenant's aliases anew here (the others do within their TTL)."""
        try:
            return await run_in_threadpool(change)
        finally:
            self._book.forget(tenant_id)

    def _previous(self, tenant_id: str, name: str, key: TenantPrincipal | None) -> tuple[int, ModelAliasVersion]:
        """The version in force now and the one a rollback restores."""
        with self._db.session() as session:
            row = _own(session, tenant_id, name, key)
            current = self._version(session, row.id, row.version)
            previous = self._version(session, row.id, current.restores) if current and current.restores else None
            if previous is None:
                raise ConflictError(
                    f"The alias '{name}' has no earlier version to roll back to.",
                    param="name",
                    code="nothing_to_roll_back",
                    headers=_NO_RETRY,
                )
            return row.version, previous

    @staticmethod
    def _version(session: Session, alias_id: str, version: int) -> ModelAliasVersion | None:
        return session.scalar(
            select(ModelAliasVersion).where(
                ModelAliasVersion.alias_id == alias_id, ModelAliasVersion.version == version
            )
        )

    async def _checked_targets(
        self, tenant_id: str, body: AliasSetting, key: TenantPrincipal | None
    ) -> builtins.list[AliasTarget]:
        targets = body.chosen()
        await self._check_targets(tenant_id, targets, key, "model" if body.model is not None else "targets")
        return targets

    async def _check_targets(
        self, tenant_id: str, targets: builtins.list[AliasTarget], key: TenantPrincipal | None, param: str = "targets"
    ) -> None:
        """Each target a model the tenant can call by its own name (and the acting key may use); a split's targets
        all generate or all embed."""
        embeds = set()
        for index, target in enumerate(targets):
            where = param if param == "model" else f"{param}[{index}].model"
            if key is not None and not key.may_use(target.model):
                raise PermissionDenied(
                    f"This API key may not use '{target.model}'.", param=where, code="model_not_allowed"
                )
            if self._catalog.embeds(target.model):
                embeds.add(True)
                continue
            try:
                await self._catalog.resolve_model(target.model, tenant_id)
            except APIError as exc:
                raise InvalidRequestError(exc.message, param=where, code=exc.code) from exc
            embeds.add(False)
        if len(embeds) > 1:
            raise InvalidRequestError(
                "The targets of a split must all generate text or all create embeddings.", param=param
            )


def _gate_json(gate: Gate | None, key: TenantPrincipal | None) -> dict[str, Any] | None:
    if gate is None:
        return None
    return gate.model_dump() | {_SET_BY: "tenant" if key is not None else "operator"}


def _check_may_change_gate(row: ModelAlias, key: TenantPrincipal | None) -> None:
    """A gate the operator set binds the tenant: only the operator changes or drops it."""
    if key is not None and row.gate and row.gate.get(_SET_BY) == "operator":
        raise PermissionDenied(
            "The operator set this alias's gate; only the operator may change or drop it.",
            param="gate",
            code="gate_set_by_operator",
        )


def _check_may_manage(key: TenantPrincipal | None, name: str) -> None:
    if key is None:
        return
    if not key.identity.key_manager:
        raise PermissionDenied(
            "Only a key manager may change the organization's aliases.", param="name", code="key_manager_required"
        )
    if not key.may_use(name):
        raise PermissionDenied(
            "This API key may not use that alias: its allowed_models must name it.",
            param="name",
            code="model_not_allowed",
        )


def erase_tenant_aliases(session: Session, tenant_id: str) -> int:
    """In the caller's transaction (the tenant's erasure): every alias of the tenant with its versions; how many."""
    gone = session.execute(
        delete(ModelAlias).where(ModelAlias.tenant_id == tenant_id).execution_options(synchronize_session=False)
    )
    # The versions after the aliases: a change that held an alias's lock has committed its version row by now.
    session.execute(
        delete(ModelAliasVersion)
        .where(ModelAliasVersion.tenant_id == tenant_id)
        .execution_options(synchronize_session=False)
    )
    return affected_rows(gone)
