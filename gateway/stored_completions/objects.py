"""What the stored-completion routes take and answer, in OpenAI's shapes: a stored ``chat.completion`` (with its
``metadata``), the list of them, a completion's input messages (``{completion id}-{index}`` ids), the metadata
update and the deletion; and our extension's export request (an SFT or a DPO fine-tuning file)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.pagination import CursorPage
from gateway import bounds
from gateway.bounds import Metadata
from gateway.inference.request_fields import ModelId
from gateway.inference.schemas import ChatCompletion

COMPLETION_ID_MAX = 64
COMPLETION_ID_PATTERN = r"^chatcmpl-[A-Za-z0-9]{1,55}$"
MESSAGE_ID_PATTERN = r"^chatcmpl-[A-Za-z0-9]{1,55}-[0-9]{1,6}$"
MAX_EXPORTED = 1000
"""Stored completions one export may read (and DPO pairs one export may name)."""

CompletionId = Annotated[str, Field(max_length=COMPLETION_ID_MAX, pattern=COMPLETION_ID_PATTERN)]


class StoredChatCompletion(ChatCompletion):
    """A stored completion as it was answered, with the metadata it carries now."""

    metadata: dict[str, str] | None = None


class StoredCompletionList(CursorPage[StoredChatCompletion, str]):
    """A page of the tenant's stored completions."""


class StoredMessage(BaseModel):
    """One message of a stored completion's request."""

    id: str
    role: str
    content: str | None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    content_parts: list[dict[str, Any]] | None = None
    """The message's parts, where it was sent as parts (else null)."""


class StoredMessageList(CursorPage[StoredMessage, str]):
    """A page of a stored completion's messages."""


class CompletionDeleted(BaseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: Literal[True] = True


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CompletionUpdate(_Body):
    """Only ``metadata`` changes (null: none)."""

    metadata: Metadata | None


class CompletionFilter(_Body):
    """Which stored completions: all of these that are given (none given: every one), newest first."""

    model: ModelId | None = None
    metadata: Metadata | None = None
    ids: Annotated[list[CompletionId], Field(min_length=1, max_length=MAX_EXPORTED)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_EXPORTED)] = MAX_EXPORTED


class SftExport(_Body):
    """Chat examples: each completion's messages, then its first choice's answer."""

    type: Literal["sft"]
    filter: CompletionFilter = Field(default_factory=CompletionFilter)
    filename: Annotated[str, Field(min_length=1, max_length=bounds.FILENAME)] = "stored-completions-sft.jsonl"


class PreferencePair(_Body):
    preferred: CompletionId
    non_preferred: CompletionId


class DpoExport(_Body):
    """Preference pairs: two stored completions of the same input, the preferred one's answer first."""

    type: Literal["dpo"]
    pairs: Annotated[list[PreferencePair], Field(min_length=1, max_length=MAX_EXPORTED)]
    filename: Annotated[str, Field(min_length=1, max_length=bounds.FILENAME)] = "stored-completions-dpo.jsonl"


ExportRequest = Annotated[SftExport | DpoExport, Field(discriminator="type")]
