"""``build_backend``: the one place that turns the engine settings into the backend that serves the models."""

from __future__ import annotations

import logging

from engine.backend import AdapterStoreAt, Backend
from engine.settings import EngineSettings
from engine.upstream.pool import UpstreamPool
from engine.vllm_engine import VLLMBackend

logger = logging.getLogger(__name__)


def build_backend(settings: EngineSettings, adapter_store: AdapterStoreAt) -> Backend:
    """``engine=vllm``: the model in this process; ``engine=upstream``: the models of the vLLM servers that the
    ``LLMAAS_UPSTREAM_*`` settings name, which load fine-tuned adapters from ``adapter_store`` as they mount it."""
    if settings.engine == "upstream":
        if settings.quantization != "none" or settings.speculation != "off":
            logger.warning(
                "LLMAAS_QUANTIZATION=%s and LLMAAS_SPECULATION=%s apply to engines in this process only: with "
                "engine=upstream, start the vLLM servers with --quantization llmaas_int8 (and LLMAAS_QUANTIZATION in "
                "their environment) or --speculative-config instead",
                settings.quantization,
                settings.speculation,
            )
        upstream = settings.upstream
        return UpstreamPool(upstream, adapter_store(upstream.adapter_root).location_for_replicas)
    return VLLMBackend(settings)
