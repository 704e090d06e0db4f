"""How this process starts each of its models on vLLM (vLLM-side): the engine arguments and environment for a
model by its runner (generate: the chat model's settings, LoRA on the primary one; pooling: the model's own context
length, no KV cache to speak of), and the recorder of each engine's scheduler numbers. Every engine core is its own
process; an idle one sleeps on its input queue, so an idle embedding model costs the chat model nothing."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from engine.backend import EngineLoad, SpeculationCounts
from engine.hardware import choose_layout, detect, resolve_dtype
from engine.kernels.vllm_plugin import CPU_FUSED_OPS_ENV, INT8_MAX_ROWS_ENV, QUANTIZATION_ENV, QUANTIZATION_METHOD
from engine.model_prep import ModelPlan
from engine.protocol import EngineError
from engine.settings import EngineSettings
from engine.speculation import describe, speculative_config
from engine.translate import STRUCTURED_OUTPUTS

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase

logger = logging.getLogger(__name__)
IDLE = EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)
POOLING_KV_CACHE_GIB = 1
"""CPU backend: a pooling model's KV cache space (an encoder keeps no KV cache between steps: vLLM's minimum)."""
POOLING_GPU_SHARE = 0.05
"""GPU backend: the share of the GPU's memory a pooling model's engine takes (a small encoder: its weights and
one batch's activations); the generating models split the rest of ``gpu_memory_utilization``."""


class LoadRecorder:
    """Keeps the scheduler's latest numbers, and adds up its speculative decoding's (vLLM calls ``record`` after
    every engine step)."""

    def __init__(self) -> None:
        self.latest = IDLE
        self.speculation = SpeculationCounts()

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
                    if (drafts := scheduler_stats.spec_decoding_stats) is not None:  # this step's, with speculation
                        counts = recorder.speculation
                        recorder.speculation = SpeculationCounts(
                            counts.drafted + drafts.num_draft_tokens, counts.accepted + drafts.num_accepted_tokens
                        )

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


def gpu_memory_shares(plans: list[ModelPlan], utilization: float) -> dict[str, float]:
    """GPU backend: each engine's ``gpu_memory_utilization``, so that all of them fit on the one GPU (vLLM's own
    default takes 0.9 for each)."""
    pooling = sum(plan.runner == "pooling" for plan in plans)
    generating = max(len(plans) - pooling, 1)
    rest = max(utilization - POOLING_GPU_SHARE * pooling, POOLING_GPU_SHARE) / generating
    return {plan.name: POOLING_GPU_SHARE if plan.runner == "pooling" else rest for plan in plans}


def resolve_quantization(requested: str, gpu: bool) -> str:
    """The weights to serve: what was asked, or for "auto" int8 on the CPU where our kernels build, else none."""
    if requested != "auto":
        return requested
    if gpu:
        return "none"
    from engine.kernels import int8

    if int8.available():
        return "int8"
    reason = int8.LIBRARY.load_error()
    logger.warning("quantization auto: the int8 kernels cannot be built here (%s); serving float weights", reason)
    return "none"


def engine_args(settings: EngineSettings, plan: ModelPlan, gpu_share: float) -> tuple[AsyncEngineArgs, dict[str, str]]:
    """vLLM's arguments for the model, and how it runs (dtype, hardware, threads). Sets the environment that
    vLLM's engine process for it, spawned by ``AsyncLLM.from_engine_args`` right after, reads: each model's engine
    is started in turn, so each reads its own."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    hardware = detect()
    dtype = resolve_dtype(settings.dtype, hardware)
    pooling = plan.runner == "pooling"
    threads = "GPU"
    if not hardware.gpu:
        kv_cache_gib = POOLING_KV_CACHE_GIB if pooling else settings.kv_cache_space_gib
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        layout = choose_layout(hardware, settings.cpu_worker_process, settings.cpu_reserved_cores)
        os.environ.update(layout.environment())
        threads = layout.describe(hardware.cores)
    # Read by our vLLM plugin (engine/kernels/vllm_plugin.py) in the engine processes vLLM spawns.
    os.environ["LLMAAS_LORA_KERNELS"] = settings.lora_kernels
    os.environ[CPU_FUSED_OPS_ENV] = "1" if settings.cpu_fused_ops else "0"
    quantization = "none" if pooling else resolve_quantization(settings.quantization, hardware.gpu)
    if quantization != "none" and hardware.gpu:
        raise EngineError(f"quantization={quantization}: our int8 kernels are for the CPU backend; use none on GPU")
    os.environ[QUANTIZATION_ENV] = quantization  # int8 or w8a8, read by engine/kernels/int8_config.py there
    bf16_dot = False  # whether our kernels take bf16 dot products here: int8 then serves more rows in bf16
    if quantization != "none":
        from engine.kernels import int8

        bf16_dot = int8.bf16_dot_products_lead(dynamic_activations=quantization == "w8a8")
    int8_rows = settings.int8_rows(dtype, bf16_dot)
    os.environ[INT8_MAX_ROWS_ENV] = str(int8_rows)
    lora = plan.primary and settings.enable_lora
    args = AsyncEngineArgs(
        model=str(plan.path),
        served_model_name=plan.name,
        runner=plan.runner,
        dtype=dtype,
        max_num_seqs=settings.max_num_seqs + settings.scheduler_burst_seqs,  # the gateway's burst slots
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        enable_lora=lora,  # vLLM reads the other LoRA arguments only with it
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=max(settings.max_cpu_loras, settings.max_loras),
        quantization=None if quantization == "none" else QUANTIZATION_METHOD,
    )
    if not pooling:  # a pooling model keeps its own context length (its positions) and batch size
        args.max_model_len = settings.max_model_len
        args.max_num_batched_tokens = settings.max_num_batched_tokens
        args.structured_outputs_config = StructuredOutputsConfig(**STRUCTURED_OUTPUTS)
        # On: vLLM's default, which turns it on where the model supports it (not for every architecture).
        args.enable_prefix_caching = None if settings.prefix_caching else False
        args.scheduling_policy = "priority"  # the gateway's classes: batch is preempted before interactive
        args.speculative_config = speculative_config(settings)
    if hardware.gpu:  # on CPU, vLLM's own default stands (the KV cache is sized by VLLM_CPU_KVCACHE_SPACE)
        args.gpu_memory_utilization = gpu_share
    info = {
        "dtype": dtype,
        "quantization": quantization,
        "hardware": hardware.describe(),
        "threads": threads,
        "runner": plan.runner,
    }
    if quantization != "none":
        info["int8_max_rows"] = str(int8_rows)
    if not pooling:
        info["speculation"] = describe(settings)
    return args, info


async def release(llm: AsyncLLM, request_id: str) -> None:
    """Abort a request by its id after a failure (vLLM only aborts on cancellation, and not when adding the request
    itself failed); a no-op if it is gone."""
    try:
        await llm.abort(request_id)
    except Exception:  # the engine is dead or shutting down: nothing left to free
        logger.debug("abort of %s after a failure did not complete", request_id, exc_info=True)
