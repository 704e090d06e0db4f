"""Liveness (``/health``), readiness (``/ready``: the engine is loaded and answers, and the gateway is not
draining) and ``/metrics`` (the admin key or the metrics token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from engine.protocol import EngineError
from gateway.accounting.admission import Draining
from gateway.errors import ServiceUnavailable
from gateway.state import AdmissionDep, CatalogDep, MetricsDep, MetricsReaderDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(catalog: CatalogDep, admission: AdmissionDep) -> dict[str, Any]:
    if admission.draining:
        raise Draining()
    try:
        await catalog.check_health()
    except EngineError as exc:
        raise ServiceUnavailable(str(exc), code="engine_unavailable") from exc
    return {"status": "ready", "models": catalog.base_ids(), "engines": catalog.engines()}


@router.get("/metrics", dependencies=[MetricsReaderDep])
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
