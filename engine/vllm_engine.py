"""The in-process backend: the models of this process, each served by its own vLLM async engine
(``AsyncLLM``), whose engine core (scheduler, PagedAttention KV cache, continuous batching) runs in a process of
its own: the chat model (generate, with its fine-tuned LoRA adapters), the embedding model (pooling) and any local
model dir the operator lists. ``VLLMBackend`` owns those engines (start, shutdown, load, health); ``VLLMEngine``
is a generating model behind the per-model engine interface (``engine.vllm_pooling.VLLMEmbedder`` a pooling one).
vLLM is imported when the backend starts, so the gateway's other paths never pay for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.backend import BackendStatus, EngineLoad, ModelOffer, SpeculationCounts
from engine.model_prep import ModelPlan, served_model_plans
from engine.protocol import (
    AdapterRef,
    CompletionDelta,
    EngineError,
    EngineUnavailable,
    RequestRejected,
    SamplingOptions,
)
from engine.settings import EngineSettings
from engine.text_encoder import HFTextEncoder
from engine.tokenizer import HFTokenizer
from engine.translate import output_delta, sampling_fields, structured_fields
from engine.vllm_pooling import VLLMEmbedder
from engine.vllm_setup import IDLE, LoadRecorder, engine_args, gpu_memory_shares, release

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


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
        *,
        whole: bool = False,
    ) -> AsyncIterator[list[CompletionDelta]]:
        from vllm.exceptions import VLLMServerError
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

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
            prompt = tokens_input(prompt_token_ids, cache_salt=options.cache_salt)
            async for output in self._llm.generate(
                prompt, params, request_id, lora_request=lora_request, priority=options.priority
            ):
                deltas = [output_delta(completion, options.logprobs) for completion in output.outputs]
                finished = output.finished
                if deltas:
                    if not produced:  # known once the prompt is prefilled: before the first output
                        deltas[0].cached_tokens = output.num_cached_tokens or 0
                    produced = True
                    yield deltas
        except EngineDeadError as exc:  # its engine core process died: nothing runs until the engine restarts
            logger.error("engine core died during request %s", request_id)
            raise EngineUnavailable("The engine stopped while generating the answer.") from exc
        except VLLMServerError as exc:  # EngineGenerateError: this request failed inside the engine
            logger.error("engine failed during request %s: %r", request_id, exc.__cause__ or exc)
            raise EngineError("The engine failed while generating the answer.") from exc
        except ValueError as exc:
            if produced:  # vLLM's own words stay in our log: the client learns only that the engine failed
                logger.error("engine failed during request %s: %s", request_id, exc)
                raise EngineError("The engine failed while generating the answer.") from exc
            raise RequestRejected(str(exc)) from exc
        finally:
            if not finished:
                # A failure may leave the request registered (vLLM only aborts on cancellation, and not when
                # adding the request itself failed): abort it by its id, which is a no-op if it is gone.
                await release(self._llm, request_id)

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


@dataclass
class _Running:
    """One model's engine in this process."""

    llm: AsyncLLM
    recorder: LoadRecorder
    info: dict[str, str]
    offer: ModelOffer


class VLLMBackend:
    """The models of ``settings`` in this process: the chat model (the default one, prepared once, unless
    ``model_path`` names one) under ``served_model_name``, the embedding model (``embedding_model``) and the
    ``extra_models``, each under its name. Started one after the other: each engine reads its environment."""

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._running: dict[str, _Running] = {}
        self._models: dict[str, ModelOffer] = {}

    async def start(self) -> None:
        plans = served_model_plans(self._settings)
        shares = gpu_memory_shares(plans, self._settings.gpu_memory_utilization)
        for plan in plans:
            self._running[plan.name] = await self._start(plan, shares[plan.name])
        self._models = {name: running.offer for name, running in self._running.items()}

    async def _start(self, plan: ModelPlan, gpu_share: float) -> _Running:
        from vllm.v1.engine.async_llm import AsyncLLM

        args, info = engine_args(self._settings, plan, gpu_share)
        logger.info(
            "engine %s (%s): %s, quantization %s, on %s; %s; speculation %s",
            plan.name,
            plan.runner,
            info["dtype"],
            info["quantization"],
            info["hardware"],
            info["threads"],
            info.get("speculation", "off"),
        )
        recorder = LoadRecorder()
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[recorder.factory])
        try:
            tasks = await llm.get_supported_tasks()
            offer = ModelOffer(
                engine=VLLMEngine(llm, HFTokenizer(plan.path), plan.primary and self._settings.enable_lora)
                if "generate" in tasks
                else None,
                embedder=VLLMEmbedder(llm, HFTextEncoder(plan.path)) if "embed" in tasks else None,
            )
            if not offer.capabilities:
                raise EngineError(f"model {plan.name} neither generates nor embeds (vLLM: {', '.join(tasks)})")
        except BaseException:
            llm.shutdown()
            raise
        info["runner"] = "generate" if offer.engine is not None else "pooling"
        cache = llm.vllm_config.cache_config  # as vLLM settled it for the model
        info.update(prefix_caching="on" if cache.enable_prefix_caching else "off", kv_block_size=str(cache.block_size))
        return _Running(llm, recorder, info, offer)

    async def close(self) -> None:
        for running in self._running.values():
            running.llm.shutdown()

    def models(self) -> Mapping[str, ModelOffer]:
        return self._models

    def status(self) -> BackendStatus:
        loads: list[EngineLoad] = []
        unfinished = 0
        for running in self._running.values():
            processor = running.llm.output_processor
            # No request exists: the scheduler's last report (taken mid-step) is stale.
            loads.append(running.recorder.latest if processor.has_unfinished_requests() else IDLE)
            unfinished += int(processor.get_num_unfinished_requests())  # type: ignore[no-untyped-call]  # vLLM leaves it unannotated
        load = EngineLoad(
            running=sum(item.running for item in loads),
            waiting=sum(item.waiting for item in loads),
            kv_cache_usage=max((item.kv_cache_usage for item in loads), default=0.0),
        )
        models = {name: running.info for name, running in self._running.items()}
        speculation = None
        if self._settings.speculation != "off":
            counts = [running.recorder.speculation for running in self._running.values()]
            speculation = SpeculationCounts(sum(c.drafted for c in counts), sum(c.accepted for c in counts))
        return BackendStatus(models, load, unfinished, speculation=speculation)

    async def check_health(self) -> None:
        try:
            if not self._running:
                raise RuntimeError("not started")
            for running in self._running.values():
                await running.llm.check_health()
        except Exception as exc:
            logger.error("engine health check failed: %s", exc)
            raise EngineError("The engine is not healthy.") from exc
