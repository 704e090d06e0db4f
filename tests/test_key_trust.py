"""What a tenant's key may do to keys, and when console sessions end, on SQLite and PostgreSQL: a key never makes
a key broader than itself, only key managers revoke other keys, and sign-out, key revocation, tenant suspension
and deletion end sessions server-side (each audited in the same transaction). Also the sign-in throttle's
failure windows, in process and in Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.registry import AdapterRegistry
from gateway.accounting.pricing import PriceBook
from gateway.audit import OPERATOR, Actor
from gateway.clock import utcnow
from gateway.db import AuditEntry, Database
from gateway.errors import NotFoundError, PermissionDenied, RateLimited
from gateway.fine_tuning.files import FileStore
from gateway.tenancy.console_sessions import ConsoleSessions
from gateway.tenancy.keys import key_hash
from gateway.tenancy.models import KeyCreate, TenantCreate, TenantUpdate
from gateway.tenancy.principal import CONSOLE_OPERATOR
from gateway.tenancy.service import TenancyService
from gateway.tenancy.sign_in_throttle import MemoryFailures, RedisFailures, SignInThrottle
from gateway.tenant_data.erasure import TenantEraser

ADMIN_KEY = "sk-admin-trust-0123456789"
TENANT_ACTOR = Actor("key_x", "ten_x", "req_1", "203.0.113.9")


@pytest.fixture
def service(database: Database) -> TenancyService:
    return TenancyService(database)


def audit(database: Database, action: str) -> list[AuditEntry]:
    with database.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def test_a_key_makes_no_key_broader_than_itself(service: TenancyService, database: Database) -> None:
    service.create_tenant(TenantCreate(name="acme"))
    limited = service.create_key("acme", KeyCreate(allowed_models=["m1", "m2"], expires_in_days=1))
    inherited = service.create_key("acme", KeyCreate(name="child"), actor=TENANT_ACTOR, by_key=limited.id)
    assert inherited.allowed_models == ["m1", "m2"]  # unasked: the creator's models and expiry
    assert inherited.expires_at == limited.expires_at
    assert not inherited.key_manager
    narrower = service.create_key(
        "acme", KeyCreate(allowed_models=["m2"], expires_in_days=0.5), actor=TENANT_ACTOR, by_key=limited.id
    )
    assert narrower.allowed_models == ["m2"] and narrower.expires_at is not None
    assert limited.expires_at is not None and narrower.expires_at < limited.expires_at
    for broader, param in (
        (KeyCreate(allowed_models=["m1", "m3"]), "allowed_models"),
        (KeyCreate(expires_in_days=2), "expires_at"),
        (KeyCreate(expires_at=limited.expires_at + timedelta(seconds=1)), "expires_at"),
        (KeyCreate(key_manager=True), "key_manager"),
    ):
        with pytest.raises(PermissionDenied) as refused:
            service.create_key("acme", broader, actor=TENANT_ACTOR, by_key=limited.id)
        assert refused.value.param == param and refused.value.status_code == 403
    assert len(service.list_keys("acme")) == 3  # nothing was made by the refused requests

    unlimited = service.create_key("acme", KeyCreate())
    free = service.create_key("acme", KeyCreate(allowed_models=["m9"]), by_key=unlimited.id)
    assert free.allowed_models == ["m9"] and free.expires_at is None
    manager = service.create_key("acme", KeyCreate(key_manager=True))
    assert manager.key_manager
    assert service.create_key("acme", KeyCreate(key_manager=True), by_key=manager.id).key_manager

    service.update_tenant("acme", TenantUpdate(status="suspended"))
    with pytest.raises(PermissionDenied):  # nor does a suspended tenant's key
        service.create_key("acme", KeyCreate(), by_key=unlimited.id)
    service.update_tenant("acme", TenantUpdate(status="active"))
    service.revoke_key("acme", limited.id)
    with pytest.raises(PermissionDenied):  # a revoked key makes nothing more
        service.create_key("acme", KeyCreate(), by_key=limited.id)
    service.create_tenant(TenantCreate(name="other"))
    with pytest.raises(PermissionDenied):  # nor does a key of another tenant
        service.create_key("other", KeyCreate(), by_key=unlimited.id)

    entries = [e for e in audit(database, "key.create") if e.target_id == inherited.id]
    assert len(entries) == 1
    assert (entries[0].actor, entries[0].actor_tenant_id, entries[0].request_id) == ("key_x", "ten_x", "req_1")
    assert entries[0].details is not None and entries[0].details["by_key"] == limited.id
    assert inherited.key not in str([e.details for e in audit(database, "key.create")])  # never the secret


def test_only_key_managers_revoke_other_keys(service: TenancyService, database: Database) -> None:
    service.create_tenant(TenantCreate(name="acme"))
    plain = service.create_key("acme", KeyCreate(name="plain"))
    sibling = service.create_key("acme", KeyCreate(name="sibling"))
    manager = service.create_key("acme", KeyCreate(name="manager", key_manager=True))
    with pytest.raises(PermissionDenied) as refused:
        service.revoke_key("acme", sibling.id, by_key=plain.id)
    assert refused.value.code == "key_manager_required"
    assert service.revoke_key("acme", sibling.id, by_key=manager.id).status == "revoked"
    assert service.revoke_key("acme", plain.id, by_key=plain.id).status == "revoked"  # a key may revoke itself
    other = service.create_tenant(TenantCreate(name="other"))
    stranger = service.create_key("other", KeyCreate(key_manager=True))
    with pytest.raises(NotFoundError):  # another tenant's key is absent, whoever asks
        service.revoke_key(other.id, manager.id, by_key=stranger.id)
    assert service.revoke_key("acme", manager.id, actor=Actor(OPERATOR)).status == "revoked"  # the operator may
    revoked = audit(database, "key.revoke")
    assert [e.target_id for e in revoked] == [sibling.id, plain.id, manager.id]
    assert revoked[-1].actor == OPERATOR


def test_revoking_a_key_revokes_the_keys_it_made(service: TenancyService, database: Database) -> None:
    service.create_tenant(TenantCreate(name="acme"))
    parent = service.create_key("acme", KeyCreate(name="parent", key_manager=True))
    child = service.create_key("acme", KeyCreate(name="child", key_manager=True), by_key=parent.id)
    grandchild = service.create_key("acme", KeyCreate(name="grandchild"), by_key=child.id)
    bystander = service.create_key("acme", KeyCreate(name="bystander"))
    assert (child.created_by_key_id, grandchild.created_by_key_id) == (parent.id, child.id)
    assert bystander.created_by_key_id is None
    service.revoke_key("acme", parent.id, actor=Actor(OPERATOR))
    status = {key.id: key.status for key in service.list_keys("acme")}
    assert [status[k.id] for k in (parent, child, grandchild, bystander)] == ["revoked", "revoked", "revoked", "active"]
    identity = service.identify(key_hash(grandchild.key))
    assert identity is not None and identity.revoked
    entries = {e.target_id: e.details for e in audit(database, "key.revoke")}
    assert entries[grandchild.id] == {"by_key": None, "made_by_revoked": parent.id}
    assert bystander.id not in entries


def test_sessions_end_at_sign_out_revocation_suspension_and_deletion(
    service: TenancyService, database: Database, tmp_path: Path
) -> None:
    sessions = ConsoleSessions(database, ADMIN_KEY)
    acme = service.create_tenant(TenantCreate(name="acme"))
    first = service.create_key("acme", KeyCreate())
    second = service.create_key("acme", KeyCreate(expires_in_days=1))
    other = service.create_tenant(TenantCreate(name="other"))
    stranger = service.create_key("other", KeyCreate())

    async def scenario() -> None:
        tenant_actor = Actor(first.id, acme.id, "req_s", "198.51.100.4")
        signed_out, session = await sessions.start(first.id, acme.id, None, tenant_actor)
        assert await sessions.check(signed_out) == session and not session.is_operator
        await sessions.end(session, tenant_actor)
        assert await sessions.check(signed_out) is None

        by_first, _ = await sessions.start(first.id, acme.id, None, tenant_actor)
        by_second, _ = await sessions.start(second.id, acme.id, second.expires_at, tenant_actor)
        by_stranger, _ = await sessions.start(stranger.id, other.id, None, tenant_actor)
        by_operator, operator = await sessions.start(CONSOLE_OPERATOR, None, None, Actor(OPERATOR))
        assert operator.is_operator
        assert await ConsoleSessions(database, "sk-admin-another-key-0123").check(by_first) is None  # new admin key

        service.revoke_key("acme", first.id, actor=Actor(OPERATOR))
        assert await sessions.check(by_first) is None
        assert await sessions.check(by_second) is not None
        service.update_tenant("acme", TenantUpdate(status="suspended"), actor=Actor(OPERATOR))
        assert await sessions.check(by_second) is None
        service.update_tenant("acme", TenantUpdate(status="active"))
        assert await sessions.check(by_second) is None  # resuming does not bring an ended session back
        files, registry = FileStore(database, tmp_path / "files"), AdapterRegistry(database.sessions, tmp_path)
        TenantEraser(database, files, registry, PriceBook({})).erase("other", Actor(OPERATOR))
        assert await sessions.check(by_stranger) is None
        assert await sessions.check(by_operator) is not None  # the operator's session is the operator's
        assert await sessions.check("forged") is None

    asyncio.run(scenario())
    started = audit(database, "session.start")
    assert len(started) == 5 and started[0].client_address == "198.51.100.4" and started[0].tenant_id == acme.id
    reasons = [(e.details or {}).get("reason") for e in audit(database, "session.end")]
    assert reasons == ["sign_out", "key_revoked", "tenant_suspended", "tenant_deleted"]


def test_a_session_ends_no_later_than_its_key(service: TenancyService, database: Database) -> None:
    sessions = ConsoleSessions(database, ADMIN_KEY)
    acme = service.create_tenant(TenantCreate(name="acme"))
    key = service.create_key("acme", KeyCreate())
    cookie, _ = asyncio.run(sessions.start(key.id, acme.id, utcnow() - timedelta(seconds=1), Actor(key.id)))
    assert asyncio.run(sessions.check(cookie)) is None


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_failed_sign_ins_are_throttled_per_address_never_per_key(store: str) -> None:
    async def scenario() -> None:
        failures = MemoryFailures() if store == "memory" else RedisFailures("redis://127.0.0.1:6379/0")
        throttle = SignInThrottle(failures, per_address=3)
        address = f"203.0.113.{uuid.uuid4().hex[:6]}"
        for _ in range(3):
            await throttle.check(address)
            await throttle.failed(address)
        with pytest.raises(RateLimited) as refused:
            await throttle.check(address)
        assert refused.value.code == "sign_in_throttled" and 1 <= int(refused.value.headers["retry-after"]) <= 60
        await throttle.check(f"{address}-b")  # another address: unaffected
        await throttle.close()

    asyncio.run(scenario())
