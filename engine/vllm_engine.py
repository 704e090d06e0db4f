"""The in-process backend: one model served by vLLM's async engine (``AsyncLLM``), whose engine core
(scheduler, PagedAttention KV cache, continuous batching) runs in its own process. ``VLLMBackend`` owns that
process (start, shutdown, load, health); ``VLLMEngine`` is the model behind the per-model engine interface.
This is the only module that runs ``vllm`` (imported when the backend starts, so the gateway's other paths
never pay for it)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from engine.backend import BackendStatus, EngineLoad, ModelOffer
from engine.hardware import choose_layout, detect, resolve_dtype
from engine.model_prep import resolve_model_dir
from engine.protocol import AdapterRef, CompletionDelta, EngineError, RequestRejected, SamplingOptions
from engine.settings import EngineSettings
from engine.tokenizer import HFTokenizer
from engine.translate import output_delta, sampling_fields, structured_fields

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase

logger = logging.getLogger(__name__)
IDLE = EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)


class _LoadRecorder:
    """Keeps the scheduler's latest numbers (vLLM calls ``record`` after every engine step)."""

    def __init__(self) -> None:
        self.latest = IDLE

    def factory(self, vllm_config: VllmConfig, engine_index: int = 0) -> StatLoggerBase:
        from vllm.v1.metrics.loggers import StatLoggerBase
        from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats

        recorder = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: SchedulerStats | None,
                iteration_stats: IterationStats | None,
                mm_cache_stats: MultiModalCacheStats | None = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    recorder.latest = EngineLoad(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs,
                        kv_cache_usage=scheduler_stats.kv_cache_usage,
                    )

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


def _engine_args(settings: EngineSettings, model_dir: Path) -> tuple[AsyncEngineArgs, dict[str, str]]:
    """vLLM's arguments for the model, and how it runs (dtype, hardware, threads). Sets the environment that
    vLLM's engine processes, spawned later, read."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    hardware = detect()
    dtype = resolve_dtype(settings.dtype, hardware)
    threads = "GPU"
    if not hardware.gpu:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_space_gib)
        layout = choose_layout(hardware, settings.cpu_worker_process, settings.cpu_reserved_cores)
        os.environ.update(layout.environment())
        threads = layout.describe(hardware.cores)
    # Read by our vLLM plugin (engine/kernels/vllm_plugin.py) in the engine processes vLLM spawns.
    os.environ["LLMAAS_LORA_KERNELS"] = settings.lora_kernels
    args = AsyncEngineArgs(
        model=str(model_dir),
        served_model_name=settings.served_model_name,
        dtype=dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        enable_lora=settings.enable_lora,  # vLLM reads the other LoRA arguments only with it
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=max(settings.max_cpu_loras, settings.max_loras),
    )
    if hardware.gpu:  # on CPU, vLLM's own default stands (the KV cache is sized by VLLM_CPU_KVCACHE_SPACE)
        args.gpu_memory_utilization = settings.gpu_memory_utilization
    return args, {"dtype": dtype, "hardware": hardware.describe(), "threads": threads}


class VLLMEngine:
    """The model ``AsyncLLM`` serves."""

    def __init__(self, llm: AsyncLLM, tokenizer: HFTokenizer, lora_enabled: bool) -> None:
        self._llm = llm
        self._tokenizer = tokenizer
        self._lora_enabled = lora_enabled
        self._max_model_len = int(llm.model_config.max_model_len)

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[CompletionDelta]]:
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        try:
            structured = None
            if options.structured is not None:
                structured = StructuredOutputsParams(**structured_fields(options.structured))
            params = SamplingParams(
                **sampling_fields(options), structured_outputs=structured, output_kind=RequestOutputKind.DELTA
            )
        except ValueError as exc:  # vLLM's own validation (VLLMValidationError is a ValueError)
            raise RequestRejected(str(exc)) from exc
        lora_request = self._lora_request(adapter)
        produced = finished = False
        try:
            # vLLM aborts the request (and frees its KV cache) when this consumer is cancelled or closed.
            async for output in self._llm.generate(
                tokens_input(prompt_token_ids), params, request_id, lora_request=lora_request
            ):
                deltas = [output_delta(completion, options.logprobs) for completion in output.outputs]
                finished = output.finished
                if deltas:
                    produced = True
                    yield deltas
        except ValueError as exc:
            if produced:  # vLLM's own words stay in our log: the client learns only that the engine failed
                logger.error("engine failed during request %s: %s", request_id, exc)
                raise EngineError("The engine failed while generating the answer.") from exc
            raise RequestRejected(str(exc)) from exc
        finally:
            if not finished:
                # A failure may leave the request registered (vLLM only aborts on cancellation, and not when
                # adding the request itself failed): abort it by its id, which is a no-op if it is gone.
                await self._release(request_id)

    async def _release(self, request_id: str) -> None:
        try:
            await self._llm.abort(request_id)
        except Exception:  # the engine is dead or shutting down: nothing left to free
            logger.debug("abort of %s after a failure did not complete", request_id, exc_info=True)

    def _lora_request(self, adapter: AdapterRef | None) -> LoRARequest | None:
        if adapter is None:
            return None
        if not self._lora_enabled:
            raise RequestRejected("this engine runs without LoRA (LLMAAS_ENABLE_LORA=false)")
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.int_id, str(adapter.path))

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        if self._lora_enabled:
            await self._llm.remove_lora(adapter.int_id)


class VLLMBackend:
    """The model of ``settings`` (the default model, prepared once, unless ``model_path`` names one) in this
    process, under ``served_model_name``."""

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._recorder = _LoadRecorder()
        self._info: dict[str, str] = {}
        self._llm: AsyncLLM | None = None
        self._models: dict[str, ModelOffer] = {}

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        model_dir = resolve_model_dir(self._settings)
        args, self._info = _engine_args(self._settings, model_dir)
        logger.info("engine: %s on %s; %s", self._info["dtype"], self._info["hardware"], self._info["threads"])
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._recorder.factory])
        engine = VLLMEngine(self._llm, HFTokenizer(model_dir), self._settings.enable_lora)
        self._models = {self._settings.served_model_name: ModelOffer(engine)}

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()

    def models(self) -> Mapping[str, ModelOffer]:
        return self._models

    def status(self) -> BackendStatus:
        llm = self._llm
        if llm is None:
            return BackendStatus(models={}, load=IDLE, unfinished_requests=0)
        processor = llm.output_processor
        # No request exists: the scheduler's last report (taken mid-step) is stale.
        load = self._recorder.latest if processor.has_unfinished_requests() else IDLE
        unfinished = int(processor.get_num_unfinished_requests())  # type: ignore[no-untyped-call]  # vLLM leaves it unannotated
        return BackendStatus({self._settings.served_model_name: self._info}, load, unfinished)

    async def check_health(self) -> None:
        try:
            if self._llm is None:
                raise RuntimeError("not started")
            await self._llm.check_health()
        except Exception as exc:
            logger.error("engine health check failed: %s", exc)
            raise EngineError("The engine is not healthy.") from exc
