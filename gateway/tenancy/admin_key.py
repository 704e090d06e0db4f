"""The operator's admin key: ``LLMAAS_ADMIN_KEY``, else generated once into ``<data_dir>/admin_key`` (0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr


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
    path = admin_key_path(settings.data_dir)
    if path.exists():
        return path.read_text().strip(), False
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-admin-" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True
