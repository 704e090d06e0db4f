"""API key material: generation, the stored hash, the display prefix (plaintext keys are never stored); and the
shape of the ids we mint."""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "sk-"
DISPLAY_CHARS = 12
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_-]{48}")
_ID_SHAPE = re.compile(r"[a-z]+[_-][0-9a-f]{16,}")
"""What the ids we mint look like (``ten_`` + 24 hex, ``ftjob-`` + 24 hex, ``req_`` + 32 hex, ...)."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(36)


def has_key_shape(token: str) -> bool:
    """Whether ``token`` could be a key we issued: anything else is refused without a database lookup."""
    return _KEY_SHAPE.fullmatch(token) is not None


def key_hash(key: str) -> str:
    """SHA-256 of the key. Keys carry 288 random bits, so a fast hash is safe (no dictionary to attack)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_CHARS]


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}"


def has_id_shape(text: str) -> bool:
    """Whether ``text`` could be an id we minted (a name of that shape could be taken for another's id)."""
    return _ID_SHAPE.fullmatch(text) is not None
