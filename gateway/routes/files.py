"""``/v1/files``: upload (multipart), list, retrieve, download and delete a tenant's files."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from gateway.errors import InvalidRequestError
from gateway.files import FileStore
from gateway.quota import QuotaDep

router = APIRouter()
_CHUNK = 1024 * 1024


def _store(request: Request) -> FileStore:
    return request.app.state.files  # type: ignore[no-any-return]


@router.post("/v1/files")
async def upload_file(
    request: Request,
    quota: QuotaDep,
    file: Annotated[UploadFile, File(description="The file (JSONL for fine-tuning)")],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    limit: int = request.app.state.settings.max_upload_bytes
    data = bytearray()
    while chunk := await file.read(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise InvalidRequestError(
                f"The file is larger than this server's limit of {limit} bytes.", param="file", code="file_too_large"
            )
    return await run_in_threadpool(
        _store(request).create, quota.principal.tenant_id, file.filename or "upload", purpose, bytes(data)
    )


@router.get("/v1/files")
async def list_files(
    request: Request,
    quota: QuotaDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    return await run_in_threadpool(_store(request).list, quota.principal.tenant_id, purpose, limit, order, after)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request, quota: QuotaDep) -> dict[str, Any]:
    return await run_in_threadpool(_store(request).get, quota.principal.tenant_id, file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request, quota: QuotaDep) -> Response:
    data = await run_in_threadpool(_store(request).content, quota.principal.tenant_id, file_id)
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request, quota: QuotaDep) -> dict[str, Any]:
    return await run_in_threadpool(_store(request).delete, quota.principal.tenant_id, file_id)
