"""What ``/v1/files`` answers, in OpenAI's shapes: a file object, a page of them, and a deletion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from adapters.api_objects import Epoch, RowObject
from adapters.pagination import CursorPage


class FileOut(RowObject):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: Epoch
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: None = None
    expires_at: None = None
    """Files are kept until deleted."""


class FileList(CursorPage[FileOut, str]):
    """A page of files (``GET /v1/files``)."""


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
