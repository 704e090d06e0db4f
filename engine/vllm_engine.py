"""The vLLM implementation of the engine interface: vLLM's in-process async engine (``AsyncLLM``), whose
engine core (scheduler, PagedAttention KV cache, continuous batching) runs in its own process.
This is the only module that imports ``vllm``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.hardware import choose_layout, detect, resolve_dtype
from engine.protocol import (
    AdapterRef,
    CompletionDelta,
    EngineError,
    EngineLoad,
    RequestRejected,
    SamplingOptions,
    TokenLogprob,
)
from engine.settings import EngineSettings
from engine.tokenizer import HFTokenizer

logger = logging.getLogger(__name__)


class _LoadRecorder:
    """Keeps the scheduler's latest numbers (vLLM calls ``record`` after every engine step)."""

    def __init__(self) -> None:
        self.latest = EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        recorder = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                if scheduler_stats is not None:
                    recorder.latest = EngineLoad(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs,
                        kv_cache_usage=scheduler_stats.kv_cache_usage,
                    )

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


class VLLMEngine:
    """A model served by vLLM's ``AsyncLLM``."""

    def __init__(self, settings: EngineSettings, model_dir: Path) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        hardware = detect()
        on_gpu = hardware.gpu
        dtype = resolve_dtype(settings.dtype, hardware)
        threads = "GPU"
        if not on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_space_gib)
            layout = choose_layout(hardware, settings.cpu_worker_process, settings.cpu_reserved_cores)
            os.environ.update(layout.environment())  # read by vLLM's engine processes, spawned below
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
            **({"gpu_memory_utilization": settings.gpu_memory_utilization} if on_gpu else {}),
            **(
                {
                    "enable_lora": True,
                    "max_loras": settings.max_loras,
                    "max_lora_rank": settings.max_lora_rank,
                    "max_cpu_loras": max(settings.max_cpu_loras, settings.max_loras),
                }
                if settings.enable_lora
                else {}
            ),
        )
        self._info = {"dtype": dtype, "hardware": hardware.describe(), "threads": threads}
        logger.info("engine: %s on %s; %s", dtype, hardware.describe(), threads)
        self._lora_enabled = settings.enable_lora
        self._recorder = _LoadRecorder()
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._recorder.factory])
        self._tokenizer = HFTokenizer(model_dir)
        self._max_model_len = int(self._llm.model_config.max_model_len)

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def info(self) -> dict[str, str]:
        return self._info

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[CompletionDelta]]:
        from vllm.inputs import tokens_input

        try:
            params = self._sampling_params(options)
        except ValueError as exc:  # vLLM's own validation (VLLMValidationError is a ValueError)
            raise RequestRejected(str(exc)) from exc
        lora_request = self._lora_request(adapter)
        produced = finished = False
        try:
            # vLLM aborts the request (and frees its KV cache) when this consumer is cancelled or closed.
            async for output in self._llm.generate(
                tokens_input(prompt_token_ids), params, request_id, lora_request=lora_request
            ):
                deltas = [_delta(completion, options.logprobs) for completion in output.outputs]
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

    @staticmethod
    def _sampling_params(options: SamplingOptions) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            n=options.n,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            stop=list(options.stop) or None,
            seed=options.seed,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            logprobs=options.logprobs,
            ignore_eos=options.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    def _lora_request(self, adapter: AdapterRef | None) -> Any:
        if adapter is None:
            return None
        if not self._lora_enabled:
            raise RequestRejected("this engine runs without LoRA (LLMAAS_ENABLE_LORA=false)")
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.int_id, str(adapter.path))

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        if self._lora_enabled:
            await self._llm.remove_lora(adapter.int_id)

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def load(self) -> EngineLoad:
        if not self._llm.output_processor.has_unfinished_requests():
            # No request exists: the scheduler's last report (taken mid-step) is stale.
            return EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)
        return self._recorder.latest

    def unfinished_requests(self) -> int:
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:
            logger.error("engine health check failed: %s", exc)
            raise EngineError("The engine is not healthy.") from exc

    def shutdown(self) -> None:
        self._llm.shutdown()


def _delta(completion: Any, top_k: int | None) -> CompletionDelta:
    finish = completion.finish_reason
    if finish not in (None, "stop", "length"):
        raise EngineError(f"generation ended unexpectedly ({finish})")
    logprobs: list[TokenLogprob] = []
    for token_id, candidates in zip(completion.token_ids, completion.logprobs or [], strict=False):
        chosen = candidates[token_id]
        # vLLM returns the k most likely tokens plus the sampled one when it ranks lower.
        ranked = sorted((lp for lp in candidates.values() if lp.rank <= (top_k or 0)), key=lambda lp: lp.rank)
        top = [(lp.decoded_token or "", lp.logprob) for lp in ranked]
        logprobs.append(TokenLogprob(token=chosen.decoded_token or "", logprob=chosen.logprob, top=tuple(top)))
    return CompletionDelta(
        index=completion.index,
        text=completion.text,
        token_ids=list(completion.token_ids),
        logprobs=logprobs,
        finish_reason=finish,
    )
