"""An embedding model (vLLM's pooling runner) behind the per-model ``Embedder`` interface: each input is one
pooling request, all of a call's inputs in flight at once (vLLM batches them), each vector normalised by the
model's own pooler (mean pooling for a sentence-transformers model, as its ``1_Pooling`` config says)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from engine.protocol import EngineError, RequestRejected
from engine.text_encoder import HFTextEncoder
from engine.vllm_setup import release

if TYPE_CHECKING:
    from vllm.pooling_params import PoolingParams
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


class VLLMEmbedder:
    """The pooling model ``AsyncLLM`` serves."""

    def __init__(self, llm: AsyncLLM, tokenizer: HFTextEncoder) -> None:
        self._llm = llm
        self._tokenizer = tokenizer
        self._max_model_len = int(llm.model_config.max_model_len)
        self._matryoshka = bool(llm.model_config.is_matryoshka)

    @property
    def tokenizer(self) -> HFTextEncoder:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def supports_dimensions(self) -> bool:
        return self._matryoshka

    async def embed(
        self, prompts: list[list[int]], request_id: str, dimensions: int | None = None
    ) -> list[list[float]]:
        from vllm.pooling_params import PoolingParams

        params = PoolingParams(task="embed", dimensions=dimensions)
        # A failure cancels the others (each aborted in vLLM); cancelling the call cancels them all.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._one(ids, params, f"{request_id}-{i}")) for i, ids in enumerate(prompts)
                ]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _one(self, prompt: list[int], params: PoolingParams, request_id: str) -> list[float]:
        from vllm.inputs import tokens_input

        finished = False
        try:
            async for output in self._llm.encode(tokens_input(prompt), params, request_id):
                if output.finished:
                    finished = True
                    vector: list[float] = output.outputs.data.tolist()
                    return vector
        except ValueError as exc:  # vLLM's own validation (VLLMValidationError is a ValueError)
            raise RequestRejected(str(exc)) from exc
        finally:
            if not finished:
                await release(self._llm, request_id)
        logger.error("embedding request %s ended without a result", request_id)
        raise EngineError("The engine failed while embedding the input.")
