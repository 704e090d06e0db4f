"""``/v1/files``: upload (multipart), list, retrieve, download and delete a tenant's files.

An upload is admitted before its body is read (one request of the tenant's RPM window, and room in its storage
quota for the announced ``Content-Length``); its body streams to disk under the size limit; downloads stream
from disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import StreamingResponse

from gateway import storage_quota
from gateway.edge.body_limits import MULTIPART_ALLOWANCE
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.fine_tuning.files import FileStore
from gateway.fine_tuning.schemas import FileDeleted, FileList, FileOut
from gateway.settings import GatewaySettings
from gateway.state import (
    ActorDep,
    AdmissionDep,
    ContextDep,
    FilesDep,
    IdempotentDep,
    RateLimitHeaders,
    SettingsDep,
    TenantDep,
)
from gateway.tenancy.principal import TenantPrincipal

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

FileId = Annotated[str, Path(max_length=40)]
_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL for fine-tuning"},
                        "purpose": {
                            "type": "string",
                            "enum": ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"],
                        },
                    },
                }
            }
        },
    }
}
_CHUNK = 256 * 1024
_BINARY_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.post("/v1/files", response_model=FileOut, openapi_extra=_UPLOAD_SCHEMA)
async def upload_file(
    request: Request,
    context: ContextDep,
    tenant: TenantDep,
    admission: AdmissionDep,
    files: FilesDep,
    settings: SettingsDep,
    idempotent: IdempotentDep,
) -> FileOut | Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("Upload the file as multipart/form-data with 'file' and 'purpose'.", param="file")
    await admission.admit_request(context, tenant)
    return await idempotent.once(lambda: _store_upload(request, tenant, files, settings))


async def _store_upload(
    request: Request, tenant: TenantPrincipal, files: FileStore, settings: GatewaySettings
) -> FileOut:
    """The upload's form read and its file stored, within the tenant's storage quota."""
    quota = storage_quota.quota_of(tenant, settings.default_max_storage_bytes)
    announced = request.headers.get("content-length", "")
    file_bytes_at_least = max(int(announced) - MULTIPART_ALLOWANCE, 0) if announced.isdigit() else 0
    await run_in_threadpool(files.check_room, tenant.tenant_id, quota, file_bytes_at_least)
    async with request.form(max_files=1, max_fields=4, max_part_size=4096) as form:
        unknown = sorted(set(form.keys()) - {"file", "purpose"})
        if unknown:  # e.g. expires_after[anchor]: files are kept until deleted here
            raise InvalidRequestError(
                f"Unrecognized form fields supplied: {', '.join(unknown)}", param=unknown[0], code="unknown_parameter"
            )
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("The form must have a 'file' part with the file's bytes.", param="file")
        if not isinstance(purpose, str):
            raise InvalidRequestError("The form must have a 'purpose' field.", param="purpose")
        return await run_in_threadpool(
            files.create,
            tenant.tenant_id,
            upload.filename or "upload",
            purpose,
            upload.file,
            max_bytes=settings.max_upload_bytes,
            quota=quota,
        )


@router.get("/v1/files")
async def list_files(
    files: FilesDep,
    tenant: TenantDep,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FileList:
    return await run_in_threadpool(files.list, tenant.tenant_id, purpose, limit, order, after)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: FileId, files: FilesDep, tenant: TenantDep) -> FileOut:
    return await run_in_threadpool(files.get, tenant.tenant_id, file_id)


@router.get("/v1/files/{file_id}/content", response_class=StreamingResponse, responses=_BINARY_CONTENT)
async def file_content(file_id: FileId, files: FilesDep, tenant: TenantDep) -> StreamingResponse:
    handle, size = await run_in_threadpool(files.open, tenant.tenant_id, file_id)
    return StreamingResponse(
        iterate_in_threadpool(_chunks(handle)),
        media_type="application/octet-stream",
        headers={"content-length": str(size)},
    )


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: FileId, files: FilesDep, tenant: TenantDep, actor: ActorDep) -> FileDeleted:
    return await run_in_threadpool(files.delete, tenant.tenant_id, file_id, actor)
