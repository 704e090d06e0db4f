"""``/v1/fine_tuning/jobs``: create (validated and charged against the budget), list, retrieve, cancel,
events and checkpoints. Training itself runs in the worker process (``llmaas worker``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from adapters.datasets import ChatExample, Dataset, parse_jsonl
from adapters.jobs import JobRequest, JobService, new_job_id
from engine.protocol import Tokenizer
from gateway.deps import CatalogDep
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.files import FileStore
from gateway.quota import QuotaDep

router = APIRouter()

DEFAULTS = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Hyperparameters(_Body):
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = "auto"


class Supervised(_Body):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Body):
    type: Literal["supervised"]
    supervised: Supervised = Field(default_factory=Supervised)


class LoraOptions(_Body):
    """Our extension: the LoRA adapter's shape."""

    rank: Annotated[int, Field(ge=1, le=64)] = 8
    alpha: Annotated[int, Field(ge=1, le=1024)] = 16
    target_modules: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]], Field(min_length=1)] = (
        Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    )


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    lora: LoraOptions = Field(default_factory=LoraOptions)
    metadata: dict[str, str] | None = None

    def resolved_hyperparameters(self) -> dict[str, Any]:
        if self.hyperparameters is not None and self.method is not None:
            raise InvalidRequestError("Give hyperparameters or method, not both.", param="hyperparameters")
        chosen = self.method.supervised.hyperparameters if self.method else self.hyperparameters or Hyperparameters()
        return {name: DEFAULTS[name] if value == "auto" else value for name, value in chosen.model_dump().items()}


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _files(request: Request) -> FileStore:
    return request.app.state.files  # type: ignore[no-any-return]


def _load_dataset(files: FileStore, tenant_id: str, file_id: str, param: str) -> Dataset:
    try:
        purpose = files.purpose_of(tenant_id, file_id)
    except NotFoundError as exc:
        raise InvalidRequestError(f"File '{file_id}' not found.", param=param, code="file_not_found") from exc
    if purpose != "fine-tune":
        raise InvalidRequestError(
            f"File '{file_id}' has purpose '{purpose}', not 'fine-tune'.", param=param, code="invalid_file_purpose"
        )
    data = files.read(tenant_id, file_id)
    if data is None:
        raise InvalidRequestError(f"File '{file_id}' not found.", param=param, code="file_not_found")
    return parse_jsonl(data)  # validated on upload


def estimate_tokens(tokenizer: Tokenizer, dataset: Dataset) -> int:
    """Tokens of one pass over the dataset (an upper-bound estimate for the budget reservation)."""
    total = 0
    for example in dataset.examples:
        if isinstance(example, ChatExample):
            messages = [{"role": m.role, "content": m.content} for m in example.messages]
            total += len(tokenizer.encode(tokenizer.render_chat(messages)))
        else:
            total += len(tokenizer.encode(example.prompt + example.completion)) + 1
    return total


@router.post("/v1/fine_tuning/jobs")
async def create_job(
    body: FineTuningJobCreate, request: Request, quota: QuotaDep, catalog: CatalogDep
) -> dict[str, Any]:
    principal = quota.principal
    if body.model not in catalog.base_ids():
        raise InvalidRequestError(
            f"Model '{body.model}' cannot be fine-tuned here; base models: {', '.join(catalog.base_ids())}.",
            param="model",
            code="model_not_available",
        )
    principal.check_model(body.model)
    hyper = body.resolved_hyperparameters()
    max_rank: int = request.app.state.engine_settings.max_lora_rank
    if body.lora.rank > max_rank:
        raise InvalidRequestError(f"lora.rank must be at most {max_rank} on this server.", param="lora.rank")
    files = _files(request)
    tenant_id = principal.tenant_id
    train = await run_in_threadpool(_load_dataset, files, tenant_id, body.training_file, "training_file")
    if body.validation_file:
        await run_in_threadpool(_load_dataset, files, tenant_id, body.validation_file, "validation_file")
    base = await catalog.resolve(body.model, tenant_id)
    estimated = estimate_tokens(base.engine.tokenizer, train) * int(hyper["n_epochs"])
    job_id = new_job_id()
    await quota.admit_training(body.model, job_id, estimated)
    job_request = JobRequest(
        job_id=job_id,
        tenant_id=tenant_id,
        tenant_name=principal.identity.tenant_name,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed,
        n_epochs=int(hyper["n_epochs"]),
        batch_size=int(hyper["batch_size"]),
        learning_rate_multiplier=float(hyper["learning_rate_multiplier"]),
        lora_rank=body.lora.rank,
        lora_alpha=body.lora.alpha,
        lora_target_modules=tuple(body.lora.target_modules),
        estimated_tokens=estimated,
        metadata=body.metadata,
    )
    return await run_in_threadpool(_jobs(request).create, job_request)


Limit = Annotated[int, Query(ge=1, le=100)]


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, quota: QuotaDep, after: str | None = None, limit: Limit = 20) -> dict[str, Any]:
    return await run_in_threadpool(_jobs(request).list, quota.principal.tenant_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, request: Request, quota: QuotaDep) -> dict[str, Any]:
    return await run_in_threadpool(_jobs(request).get, quota.principal.tenant_id, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, quota: QuotaDep) -> dict[str, Any]:
    return await run_in_threadpool(_jobs(request).cancel, quota.principal.tenant_id, job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(
    job_id: str, request: Request, quota: QuotaDep, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    return await run_in_threadpool(_jobs(request).events, quota.principal.tenant_id, job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(
    job_id: str, request: Request, quota: QuotaDep, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    return await run_in_threadpool(_jobs(request).checkpoints, quota.principal.tenant_id, job_id, after, limit)
