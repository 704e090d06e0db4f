"""The gateway's clock: the current time as the database stores it (naive UTC). A leaf: imports nothing of ours."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)
