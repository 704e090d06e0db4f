"""Console sessions: the key pasted at sign-in is exchanged for a server-side session (a ``console_sessions``
row) and a signed cookie (HttpOnly, SameSite=Strict, ``Secure`` over TLS) that carries the session's random id,
never the key. The session's CSRF token is derived from that id.

Every page and every ``/console/api`` call reads the row: a session signed out, ended by revoking its key or by
suspending or deleting its tenant (``gateway.tenancy.sessions``), or past its lifetime is refused at once, on
every gateway of the deployment. Cookies are signed with a secret derived from the admin key, so changing the
admin key signs everyone out."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from starlette.concurrency import run_in_threadpool

from gateway.audit import Actor, record
from gateway.clock import utcnow
from gateway.db import ConsoleSession as SessionRow
from gateway.db import Database
from gateway.tenancy.principal import CONSOLE_OPERATOR
from gateway.tenancy.sessions import end_sessions, session_hash

COOKIE = "llmaas_console"
MAX_AGE_SECONDS = 8 * 3600
_KEEP_EXPIRED = timedelta(days=1)
"""Rows expired this long ago are deleted when a session starts (the audit log keeps their history)."""


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    """The random session id the cookie carries (its hash keys the row)."""
    subject: str
    """``CONSOLE_OPERATOR``, or the id of the tenant key signed in with."""
    csrf: str

    @property
    def is_operator(self) -> bool:
        return self.subject == CONSOLE_OPERATOR

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class ConsoleSessions:
    def __init__(self, db: Database, admin_key: str, max_age_seconds: int = MAX_AGE_SECONDS) -> None:
        self._db = db
        self._secret = hmac.new(admin_key.encode(), b"llmaas console sessions", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(self._secret.hex(), salt="console-session")
        self.max_age_seconds = max_age_seconds

    def _session(self, session_id: str, subject: str) -> ConsoleSession:
        csrf = hmac.new(self._secret, b"csrf " + session_id.encode(), hashlib.sha256).hexdigest()
        return ConsoleSession(session_id, subject, csrf)

    def _cookie_id(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age_seconds)
        except BadSignature:  # also an expired one (SignatureExpired is a BadSignature)
            return None
        return data if isinstance(data, str) and 0 < len(data) <= 128 else None

    async def start(
        self, subject: str, tenant_id: str | None, expires_at: datetime | None, actor: Actor
    ) -> tuple[str, ConsoleSession]:
        """A new session for ``subject`` (ending no later than ``expires_at``): the cookie's value and the session."""
        session_id = secrets.token_urlsafe(32)
        await run_in_threadpool(self._insert, session_id, subject, tenant_id, expires_at, actor)
        return self._serializer.dumps(session_id), self._session(session_id, subject)

    def _insert(
        self, session_id: str, subject: str, tenant_id: str | None, expires_at: datetime | None, actor: Actor
    ) -> None:
        now = utcnow()
        hashed = session_hash(session_id)
        end = now + timedelta(seconds=self.max_age_seconds)
        with self._db.session() as session:
            session.execute(delete(SessionRow).where(SessionRow.expires_at < now - _KEEP_EXPIRED))
            session.add(
                SessionRow(
                    id=hashed,
                    subject=subject,
                    tenant_id=tenant_id,
                    created_at=now,
                    expires_at=min(end, expires_at) if expires_at else end,
                    client_address=actor.client_address[:64] if actor.client_address else None,
                )
            )
            record(session, actor, "session.start", "console_session", hashed, tenant_id, {"subject": subject})

    async def check(self, cookie: str | None) -> ConsoleSession | None:
        """The session the cookie names, if its row is neither ended nor expired (one primary-key read)."""
        session_id = self._cookie_id(cookie)
        if session_id is None:
            return None
        subject = await run_in_threadpool(self._live_subject, session_id)
        return None if subject is None else self._session(session_id, subject)

    def _live_subject(self, session_id: str) -> str | None:
        with self._db.session() as session:
            row = session.get(SessionRow, session_hash(session_id))
            if row is None or row.ended_at is not None or row.expires_at <= utcnow():
                return None
            return row.subject

    async def end(self, current: ConsoleSession, actor: Actor) -> None:
        """Sign-out: the session ends server-side (a copy of its cookie is refused from now on)."""
        await run_in_threadpool(self._end, session_hash(current.id), actor)

    def _end(self, hashed: str, actor: Actor) -> None:
        with self._db.session() as session:
            end_sessions(session, actor, "sign_out", SessionRow.id == hashed, utcnow())
