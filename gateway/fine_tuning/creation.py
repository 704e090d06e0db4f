"""Creating a fine-tuning job, the domain side of ``POST /v1/fine_tuning/jobs``: check the model (trainable
here, served, allowed to the key) and the LoRA shape, check that the files hold the examples the method trains on
(preference pairs for DPO), read the training file once to count its examples and estimate its tokens, choose
every "auto" from that, reserve the estimate against the tenant's budget, and record the job with its recipe and
lineage; the reservation is given back if the job cannot be recorded.

The model may be one of the tenant's ``ft:`` models (or a checkpoint of one): the job then continues it, training
a copy of its adapter (the same LoRA shape; asking for another is a 400) on the same base model. Another tenant's
``ft:`` model is as unknown as a missing one (404 ``model_not_found``), refused before any file is read."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool

from adapters.datasets import (
    ChatExample,
    DatasetError,
    Example,
    PreferenceExample,
    format_of,
    format_problem,
    iter_examples,
)
from adapters.hyperparameters import choose as choose_hyperparameters
from adapters.job_objects import FineTuningJobOut
from adapters.jobs import JobRequest, JobService, new_job_id
from adapters.lineage import MAX_GENERATIONS, Lineage
from adapters.recipe import LoraShape, TrainingRecipe
from engine.protocol import Tokenizer
from gateway.accounting.admission import Admission
from gateway.clock import utcnow
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.fine_tuning.files import FileStore
from gateway.fine_tuning.models import FineTuningJobCreate
from gateway.inference.catalog import ModelCatalog, ServedModel
from gateway.tenancy.principal import TenantPrincipal

ENCODE_CHARS = 4096
"""Text is encoded this much at a time (cut at a space), so that no single tokenizer call, which holds the GIL,
keeps the event loop waiting: an example may be a megabyte of text."""


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """The tokens of ``text``, encoded a piece at a time (an estimate: a cut may split what would be one token)."""
    total = start = 0
    while start < len(text):
        end = start + ENCODE_CHARS
        cut = text.rfind(" ", start + 1, end) if end < len(text) else -1
        end = cut if cut > start else end
        total += len(tokenizer.encode(text[start:end]))
        start = end
    return total


def estimate_tokens(tokenizer: Tokenizer, examples: Iterable[Example]) -> tuple[int, int]:
    """The examples and the tokens of one pass over them (an estimate for the budget reservation), read as they
    stream in."""
    count = total = 0
    for example in examples:
        count += 1
        if isinstance(example, ChatExample):
            messages = [{"role": m.role, "content": m.content} for m in example.messages]
            total += count_tokens(tokenizer, tokenizer.render_chat(messages))
        elif isinstance(example, PreferenceExample):  # the prompt once, both answers and their end-of-turn tokens
            messages = [{"role": m.role, "content": m.content} for m in example.messages]
            total += count_tokens(tokenizer, tokenizer.render_chat(messages)) + 2
            total += count_tokens(tokenizer, example.preferred) + count_tokens(tokenizer, example.non_preferred)
        else:
            total += count_tokens(tokenizer, example.prompt + example.completion) + 1
    return count, total


@contextmanager
def _training_file(files: FileStore, tenant_id: str, file_id: str, param: str) -> Iterator[BinaryIO]:
    """The tenant's fine-tuning file, open (a 400 naming ``param`` when it is missing or not for fine-tuning)."""
    try:
        purpose = files.purpose_of(tenant_id, file_id)
        if purpose != "fine-tune":
            raise InvalidRequestError(
                f"File '{file_id}' has purpose '{purpose}', not 'fine-tune'.", param=param, code="invalid_file_purpose"
            )
        handle, _ = files.open(tenant_id, file_id)
    except NotFoundError as exc:
        raise InvalidRequestError(f"File '{file_id}' not found.", param=param, code="file_not_found") from exc
    with handle:
        yield handle


def _for_method(examples: Iterator[Example], method: str, file_id: str, param: str) -> Iterator[Example]:
    """``examples``, refused (a 400 naming ``param``) when the first is not of a format ``method`` trains on (the
    rest are of the same format)."""
    for index, example in enumerate(examples):
        problem = format_problem(method, format_of(example)) if index == 0 else None
        if problem:
            message = f"File '{file_id}' cannot train a {method} job: {problem}."
            raise InvalidRequestError(message, param=param, code="invalid_file_format")
        yield example


@contextmanager
def _examples(files: FileStore, tenant_id: str, file_id: str, param: str, method: str) -> Iterator[Iterator[Example]]:
    """The examples of the tenant's fine-tuning file as they are read, for a ``method`` job (a 400 naming
    ``param`` for a line that is not one: the lines were checked on upload, but by the rules of their day)."""
    with _training_file(files, tenant_id, file_id, param) as handle:
        try:
            yield _for_method(iter_examples(handle), method, file_id, param)
        except DatasetError as exc:
            raise InvalidRequestError(f"Invalid file format: {exc}", param=param, code="invalid_file_format") from exc


def _check_files_and_estimate(
    files: FileStore, tenant_id: str, body: FineTuningJobCreate, tokenizer: Tokenizer
) -> tuple[int, int]:
    """Blocking (a worker thread): check the files (the validation file by its first example: its lines were
    checked on upload); the training examples and one epoch's tokens, one example in memory at a time."""
    if body.validation_file:
        with _examples(files, tenant_id, body.validation_file, "validation_file", body.method_type) as examples:
            next(examples)
    with _examples(files, tenant_id, body.training_file, "training_file", body.method_type) as examples:
        return estimate_tokens(tokenizer, examples)


@dataclass(frozen=True)
class _Start:
    """What a job starts from: the served model (a base model, or the ``ft:`` model it continues), its lineage
    and the LoRA shape it trains."""

    model: ServedModel
    lineage: Lineage
    lora: LoraShape


def _same_shape(asked: LoraShape, parent: LoraShape) -> bool:
    """Whether a shape asked for is the parent's ("auto" layers: whatever the parent has)."""
    return (
        asked.rank == parent.rank
        and asked.alpha == parent.alpha
        and sorted(asked.target_modules) == sorted(parent.target_modules)
        and asked.layers in ("auto", parent.layers)
    )


class JobCreator:
    """``trainable``: the base models the worker can train (``adapters.base_models``)."""

    def __init__(
        self,
        jobs: JobService,
        files: FileStore,
        catalog: ModelCatalog,
        admission: Admission,
        trainable: Collection[str],
        max_lora_rank: int,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._catalog = catalog
        self._admission = admission
        self._trainable = trainable
        self._max_lora_rank = max_lora_rank

    def _check_trainable(self, base_model: str) -> None:
        bases = [model for model in self._catalog.base_ids() if model in self._trainable]
        if base_model not in bases:
            raise InvalidRequestError(
                f"That model cannot be fine-tuned here; base models: {', '.join(bases)}.",
                param="model",
                code="model_not_available",
            )

    async def _start(self, tenant: TenantPrincipal, body: FineTuningJobCreate) -> _Start:
        if not body.model.startswith("ft:"):
            self._check_trainable(body.model)
            tenant.check_model(body.model)
            base = await self._catalog.resolve(body.model, tenant.tenant_id)
            return _Start(base, Lineage(base_model=body.model), body.lora.shape())
        tenant.check_model(body.model)
        parent = await self._catalog.resolve(body.model, tenant.tenant_id)  # the tenant's own, or model_not_found
        self._check_trainable(parent.base)
        assert parent.job_id is not None  # a fine-tuned model is made by a job
        lineage, shape = await run_in_threadpool(self._jobs.continuation, tenant.tenant_id, parent.job_id, parent.id)
        if len(lineage.parents) > MAX_GENERATIONS:
            message = f"That model has been continued {MAX_GENERATIONS} times over; continue an earlier one."
            raise InvalidRequestError(message, param="model", code="model_not_available")
        if "lora" in body.model_fields_set and not _same_shape(body.lora.shape(), shape):
            raise InvalidRequestError(
                f"A job that continues '{parent.id}' trains a copy of its adapter: leave lora out, or give its "
                f"shape (rank {shape.rank}, alpha {shape.alpha}, target_modules {', '.join(shape.target_modules)}, "
                f"layers {shape.layers}).",
                param="lora",
            )
        return _Start(parent, lineage, shape)

    async def create(self, tenant: TenantPrincipal, body: FineTuningJobCreate) -> FineTuningJobOut:
        start = await self._start(tenant, body)
        requested = body.requested_hyperparameters()
        if start.lora.rank > self._max_lora_rank:
            message = f"lora.rank must be at most {self._max_lora_rank} on this server."
            raise InvalidRequestError(message, param="lora.rank")
        examples, per_epoch = await run_in_threadpool(
            _check_files_and_estimate, self._files, tenant.tenant_id, body, start.model.engine.tokenizer
        )
        hyperparameters = choose_hyperparameters(examples, requested, body.method_type)
        job_id, created_at = new_job_id(), utcnow()
        estimated = per_epoch * hyperparameters.n_epochs
        reserved = await self._admission.admit_training(tenant, job_id, body.model, estimated, created_at)
        recipe = TrainingRecipe(
            method=body.method_type,
            hyperparameters=hyperparameters,
            lora=start.lora,
            keep_checkpoint=body.keep_checkpoint,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        )
        request = JobRequest(
            job_id=job_id,
            tenant_id=tenant.tenant_id,
            tenant_name=tenant.identity.tenant_name,
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            recipe=recipe,
            lineage=start.lineage,
            estimated_tokens=reserved.tokens,
            reserved_cost_nanos=reserved.cost_nanos,
            metadata=body.metadata,
            created_at=created_at,
        )
        try:
            return await run_in_threadpool(self._jobs.create, request)
        except Exception:  # not created: give the reservation back (a cancelled request may still have created it)
            await self._admission.release_training(tenant, job_id, reserved)
            raise
