"""``/v1/fine_tuning/jobs``: create (one request of the RPM window, validated and charged against the budget),
list, retrieve, cancel, events and checkpoints. Training itself runs in the worker process (``llmaas worker``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from adapters.datasets import ChatExample, DatasetError, Example, iter_examples
from adapters.hyperparameters import choose as choose_hyperparameters
from adapters.jobs import JobRequest, new_job_id
from adapters.trainable import LoraSpec
from engine.protocol import Tokenizer
from gateway import bounds
from gateway.bounds import Metadata
from gateway.clock import utcnow
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.fine_tuning.files import FileStore
from gateway.inference.api_types import refused_unless
from gateway.state import (
    AdmissionDep,
    CatalogDep,
    ContextDep,
    EngineSettingsDep,
    FilesDep,
    JobsDep,
    RateLimitHeaders,
    TenantDep,
)

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

DEFAULT_TARGET_MODULES = LoraSpec().target_modules
FileRef = Annotated[str, Field(min_length=1, max_length=40)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Hyperparameters(_Body):
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    # Of BASE_LEARNING_RATE (2e-4): up to a rate of 1e-2, above the 3e-3 auto chooses at batch 8.
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=50)] | Literal["auto"] = "auto"


class Supervised(_Body):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Body):
    type: Literal["supervised"]
    supervised: Supervised = Field(default_factory=Supervised)


class LoraOptions(_Body):
    """Our extension: the LoRA adapter's shape."""

    rank: Annotated[int, Field(ge=1, le=64)] = LoraSpec().rank
    alpha: Annotated[int, Field(ge=1, le=1024)] = LoraSpec().alpha
    target_modules: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]], Field(min_length=1, max_length=32)
    ] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    layers: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    """LoRA on this many of the top decoder layers; "auto": the top third."""


class FineTuningJobCreate(_Body):
    model: Annotated[str, Field(min_length=1, max_length=bounds.MODEL)]
    training_file: FileRef
    validation_file: FileRef | None = None
    suffix: Annotated[str, Field(pattern=rf"^[A-Za-z0-9_-]{{1,{bounds.SUFFIX}}}$")] | None = None
    seed: Annotated[int, Field(ge=0, le=bounds.INT32_MAX)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    lora: LoraOptions = Field(default_factory=LoraOptions)
    keep_checkpoint: Literal["best", "last"] = "best"
    """Our extension: with a validation file, the model is the best epoch's checkpoint, or the last one."""
    metadata: Metadata | None = None
    integrations: Annotated[Any, refused_unless([])] = None
    """Weights & Biases reporting: not available here."""

    def requested_hyperparameters(self) -> dict[str, Any]:
        if self.hyperparameters is not None and self.method is not None:
            raise InvalidRequestError("Give hyperparameters or method, not both.", param="hyperparameters")
        chosen = self.method.supervised.hyperparameters if self.method else self.hyperparameters or Hyperparameters()
        return chosen.model_dump()


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
        else:
            total += count_tokens(tokenizer, example.prompt + example.completion) + 1
    return count, total


def _check_files_and_estimate(
    files: FileStore, tenant_id: str, body: FineTuningJobCreate, tokenizer: Tokenizer
) -> tuple[int, int]:
    """Blocking (a worker thread): check the files; the training examples and one epoch's tokens, one example in
    memory at a time."""
    if body.validation_file:
        with _training_file(files, tenant_id, body.validation_file, "validation_file"):
            pass  # it exists and is for fine-tuning; its lines were checked on upload
    with _training_file(files, tenant_id, body.training_file, "training_file") as handle:
        try:
            return estimate_tokens(tokenizer, iter_examples(handle))
        except DatasetError as exc:  # checked on upload, but by the rules of its day
            raise InvalidRequestError(
                f"Invalid file format: {exc}", param="training_file", code="invalid_file_format"
            ) from exc


@router.post("/v1/fine_tuning/jobs")
async def create_job(
    body: FineTuningJobCreate,
    context: ContextDep,
    tenant: TenantDep,
    catalog: CatalogDep,
    admission: AdmissionDep,
    files: FilesDep,
    jobs: JobsDep,
    engine_settings: EngineSettingsDep,
) -> dict[str, Any]:
    await admission.admit_request(context, tenant)  # one unit of the RPM window, before any file is read
    if body.model not in catalog.base_ids():
        raise InvalidRequestError(
            f"That model cannot be fine-tuned here; base models: {', '.join(catalog.base_ids())}.",
            param="model",
            code="model_not_available",
        )
    tenant.check_model(body.model)
    requested = body.requested_hyperparameters()
    if body.lora.rank > engine_settings.max_lora_rank:
        raise InvalidRequestError(
            f"lora.rank must be at most {engine_settings.max_lora_rank} on this server.", param="lora.rank"
        )
    base = await catalog.resolve(body.model, tenant.tenant_id)
    examples, per_epoch = await run_in_threadpool(
        _check_files_and_estimate, files, tenant.tenant_id, body, base.engine.tokenizer
    )
    hyper = choose_hyperparameters(examples, requested)
    estimated = per_epoch * hyper.n_epochs
    job_id, created_at = new_job_id(), utcnow()
    reserved = await admission.admit_training(tenant, job_id, body.model, estimated, created_at)
    job_request = JobRequest(
        job_id=job_id,
        tenant_id=tenant.tenant_id,
        tenant_name=tenant.identity.tenant_name,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed,
        hyperparameters=hyper,
        keep_checkpoint=body.keep_checkpoint,
        lora_rank=body.lora.rank,
        lora_alpha=body.lora.alpha,
        lora_target_modules=tuple(body.lora.target_modules),
        lora_layers=body.lora.layers,
        estimated_tokens=reserved.tokens,
        reserved_cost_nanos=reserved.cost_nanos,
        metadata=body.metadata,
        created_at=created_at,
    )
    try:
        return await run_in_threadpool(jobs.create, job_request)
    except Exception:  # not created: give the reservation back (a cancelled request may still have created it)
        await admission.release_training(tenant, job_id, reserved)
        raise


Limit = Annotated[int, Query(ge=1, le=100)]
JobId = Annotated[str, Path(max_length=40)]
EventCursor = Annotated[str | None, Query(pattern=r"^ftevent-[0-9a-f]{24}$")]
CheckpointCursor = Annotated[str | None, Query(max_length=40)]
JobCursor = Annotated[str | None, Query(max_length=40)]


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(jobs: JobsDep, tenant: TenantDep, after: JobCursor = None, limit: Limit = 20) -> dict[str, Any]:
    return await run_in_threadpool(jobs.list, tenant.tenant_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: JobId, jobs: JobsDep, tenant: TenantDep) -> dict[str, Any]:
    return await run_in_threadpool(jobs.get, tenant.tenant_id, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: JobId, jobs: JobsDep, tenant: TenantDep) -> dict[str, Any]:
    return await run_in_threadpool(jobs.cancel, tenant.tenant_id, job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(
    job_id: JobId, jobs: JobsDep, tenant: TenantDep, after: EventCursor = None, limit: Limit = 20
) -> dict[str, Any]:
    return await run_in_threadpool(jobs.events, tenant.tenant_id, job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(
    job_id: JobId, jobs: JobsDep, tenant: TenantDep, after: CheckpointCursor = None, limit: Limit = 10
) -> dict[str, Any]:
    return await run_in_threadpool(jobs.checkpoints, tenant.tenant_id, job_id, after, limit)
