"""The operator's admin key: ``LLMAAS_ADMIN_KEY``, else generated once into ``<data_dir>/admin_key`` (0600)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from gateway.private_files import read_or_create_secret


class AdminKeySettings(Protocol):
    """What the admin key is read from (``GatewaySettings`` has both)."""

    @property
    def admin_key(self) -> SecretStr | None: ...

    @property
    def data_dir(self) -> Path: ...


def admin_key_path(data_dir: Path) -> Path:
    return data_dir / "admin_key"


def load_or_create_admin_key(settings: AdminKeySettings) -> tuple[str, bool]:
    """The admin key, and whether it was generated just now (then the caller shows it once)."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value(), False
    return read_or_create_secret(admin_key_path(settings.data_dir), lambda: "sk-admin-" + secrets.token_urlsafe(32))
