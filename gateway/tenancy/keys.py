"""API key material: generation, the stored hash, the display prefix. Plaintext keys are never stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-"
DISPLAY_CHARS = 12


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(36)


def key_hash(key: str) -> str:
    """SHA-256 of the key. Keys carry 288 random bits, so a fast hash is safe (no dictionary to attack)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_CHARS]


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}"
