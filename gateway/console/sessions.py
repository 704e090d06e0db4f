"""Console sessions: the key pasted at sign-in is exchanged for a signed, expiring cookie (HttpOnly,
SameSite=Strict) that names the key (never holds it) and carries the session's CSRF token.

Cookies are signed with a secret derived from the admin key, so every gateway of a deployment accepts them and
changing the admin key signs everyone out. A tenant's session is checked against its key on every page: a
revoked or expired key, or a suspended tenant, ends it at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.tenancy.principal import CONSOLE_OPERATOR

COOKIE = "llmaas_console"
MAX_AGE_SECONDS = 8 * 3600


@dataclass(frozen=True)
class ConsoleSession:
    subject: str
    """``CONSOLE_OPERATOR``, or the id of the tenant key signed in with."""
    csrf: str

    @property
    def is_operator(self) -> bool:
        return self.subject == CONSOLE_OPERATOR

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionCodec:
    def __init__(self, admin_key: str, max_age_seconds: int = MAX_AGE_SECONDS) -> None:
        secret = hmac.new(admin_key.encode(), b"llmaas console sessions", hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(secret, salt="console-session")
        self.max_age_seconds = max_age_seconds

    def issue(self, subject: str) -> tuple[str, ConsoleSession]:
        """A new session for ``subject``: the cookie's value and the session (with a fresh CSRF token)."""
        session = ConsoleSession(subject, secrets.token_urlsafe(32))
        return self._serializer.dumps({"s": session.subject, "c": session.csrf}), session

    def read(self, cookie: str | None) -> ConsoleSession | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age_seconds)
        except BadSignature:  # also an expired one (SignatureExpired is a BadSignature)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("s"), str) or not isinstance(data.get("c"), str):
            return None
        return ConsoleSession(data["s"], data["c"])
