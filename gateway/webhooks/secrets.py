"""Signing secrets of webhook endpoints, and the signature of what is sent with them.

A secret is ``whsec_`` and 32 random bytes in base64, shown to the tenant once (at creation or rotation). The
database keeps it encrypted (AES-256-GCM under the gateway's secrets key, the endpoint's id bound in as associated
data so a ciphertext is worth nothing on another row): a copy of the database alone signs nothing. The key is
``LLMAAS_WEBHOOK_SECRETS_KEY``, else generated once into ``<data_dir>/webhook_secrets_key`` (0600); gateways that
share a database share it too.

The signature is Standard Webhooks' (what ``client.webhooks.unwrap`` of the official SDKs verifies): headers
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, one per secret in force, separated by spaces."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from gateway.private_files import read_or_create_secret

PREFIX = "whsec_"
_NONCE = 12


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(32)).decode()


def hint_of(secret: str) -> str:
    """What the API shows of a secret after creation: enough to tell two apart, too little to sign with."""
    return f"{PREFIX}...{secret[-4:]}"


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of one message under one secret."""
    mac = hmac.new(base64.b64decode(secret.removeprefix(PREFIX)), f"{webhook_id}.{timestamp}.".encode(), "sha256")
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


class SecretBox:
    """Encrypts and decrypts endpoints' secrets under the gateway's secrets key."""

    def __init__(self, key: str) -> None:
        self._aead = AESGCM(hashlib.sha256(key.encode()).digest())

    @classmethod
    def of(cls, configured: SecretStr | None, data_dir: Path) -> SecretBox:
        if configured is not None:
            return cls(configured.get_secret_value())
        key, _ = read_or_create_secret(data_dir / "webhook_secrets_key", lambda: secrets.token_urlsafe(32))
        return cls(key)

    def seal(self, endpoint_id: str, secret: str) -> str:
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())).decode()

    def open(self, endpoint_id: str, sealed: str) -> str | None:
        """The secret, or None when it cannot be read (sealed under another key, or not this endpoint's)."""
        try:
            data = base64.b64decode(sealed)
            return self._aead.decrypt(data[:_NONCE], data[_NONCE:], endpoint_id.encode()).decode()
        except (InvalidTag, ValueError):
            return None
