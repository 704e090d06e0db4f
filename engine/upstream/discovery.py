"""Which replicas exist: the static list plus a JSON file that is re-read whenever it changes.

The file is the seam for dynamic discovery: anything that knows the pods or Ray replicas (a Kubernetes
sidecar watching an EndpointSlice, a Ray Serve deployment hook, a cron job) writes
``{"upstreams": [{"url": "http://10.0.0.7:8000", "api_key": "..."}]}`` atomically (write, then rename),
and the gateway follows within one scrape interval, without a restart."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamSpec:
    url: str
    api_key: str | None = None


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2048)
    api_key: str | None = Field(default=None, max_length=4096)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstreams: list[_Entry]


class Discovery:
    """The current list of replicas; ``current()`` is cheap to call every scrape interval."""

    def __init__(self, static_urls: list[str], file: Path | None, default_api_key: str | None) -> None:
        self._static = [UpstreamSpec(url, default_api_key) for url in static_urls]
        self._file = file
        self._default_key = default_api_key
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[UpstreamSpec] = []

    def current(self) -> list[UpstreamSpec]:
        self._reread_if_changed()
        seen: dict[str, UpstreamSpec] = {}
        for spec in [*self._static, *self._from_file]:
            seen.setdefault(spec.url, spec)
        return list(seen.values())

    def _reread_if_changed(self) -> None:
        if self._file is None:
            return
        try:
            stat = self._file.stat()
        except OSError:
            if self._stamp is not None:
                logger.warning("upstream file %s is gone; keeping its last list", self._file)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            parsed = _File.model_validate(json.loads(self._file.read_text()))
        except (OSError, ValueError, ValidationError) as exc:  # a half-written or wrong file: keep the last good list
            logger.error("upstream file %s is not valid, keeping its last list: %s", self._file, exc)
            return
        self._from_file = [UpstreamSpec(e.url.rstrip("/"), e.api_key or self._default_key) for e in parsed.upstreams]
        logger.info("upstream file %s: %d replicas", self._file, len(self._from_file))
