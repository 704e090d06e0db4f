"""Stored completions as fine-tuning files (our extension of the API): a filtered set as chat examples (SFT: each
completion's messages, then its first choice's answer), or pairs of completions of the same input as preference
pairs in OpenAI's DPO line shape (``{"input": {"messages": [..]}, "preferred_output": [..],
"non_preferred_output": [..]}``). The file is written into ``/v1/files`` (``purpose: fine-tune``) as the tenant's
own, refused first when the storage quota has no room for the completions it reads; every SFT line is checked
by the training file validator before it is written.

Only text conversations make training examples: a completion with tool calls or tool messages, or with an empty
answer, is refused by id (400), never silently left out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from adapters.datasets import DatasetError, iter_examples
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.fine_tuning.files import FileStore, clean_filename
from gateway.fine_tuning.schemas import FileOut
from gateway.stored_completions.objects import DpoExport, SftExport
from gateway.stored_completions.store import CompletionStore, Kept, Selection
from gateway.tenancy.principal import TenantPrincipal

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def export(
    store: CompletionStore, files: FileStore, tenant: TenantPrincipal, request: SftExport | DpoExport
) -> FileOut:
    """Blocking: the export written as the tenant's file."""
    tenant_id = tenant.tenant_id
    filename = clean_filename(request.filename)
    if not filename.lower().endswith(".jsonl"):
        raise InvalidRequestError("Fine-tuning files must be .jsonl files.", param="filename")
    lines: Iterable[bytes]
    if isinstance(request, SftExport):
        chosen = request.filter
        selection = Selection(model=chosen.model, metadata=chosen.metadata, ids=chosen.ids, limit=chosen.limit)
        found, size = store.selected(tenant_id, selection)
        if not found:
            raise InvalidRequestError("No stored completion matches the filter.", param="filter")
        _all_found(chosen.ids, found, "filter.ids")
        lines = _sft_lines(store.select(tenant_id, selection))
    else:
        ids = sorted({id_ for pair in request.pairs for id_ in (pair.preferred, pair.non_preferred)})
        found, size = store.selected(tenant_id, Selection(ids=ids, limit=len(ids)))
        _all_found(ids, found, "pairs")
        lines = _dpo_lines(store, tenant_id, request)
    store.check_room(tenant, size, "filter" if isinstance(request, SftExport) else "pairs")
    file_id = files.add_generated(tenant_id, filename, "fine-tune", lines)
    return files.get(tenant_id, file_id)


def _all_found(ids: list[str] | None, found: list[str], param: str) -> None:
    missing = sorted(set(ids or ()) - set(found))
    if missing:
        raise NotFoundError(f"No chat completion found with id '{missing[0]}'.", param=param)


def _dpo_lines(store: CompletionStore, tenant_id: str, request: DpoExport) -> Iterator[bytes]:
    """One pair's two completions in memory at a time."""
    for pair in request.pairs:
        yield _dpo_line(_one(store, tenant_id, pair.preferred), _one(store, tenant_id, pair.non_preferred))


def _one(store: CompletionStore, tenant_id: str, completion_id: str) -> Kept:
    for kept in store.select(tenant_id, Selection(ids=[completion_id], limit=1)):
        return kept
    raise NotFoundError(f"No chat completion found with id '{completion_id}'.", param="pairs")  # deleted meanwhile


def _sft_lines(kept: Iterable[Kept]) -> Iterator[bytes]:
    for each in kept:
        line = _json_line({"messages": [*_input(each, "filter"), *_output(each, "filter")]})
        try:
            for _ in iter_examples([line]):
                pass
        except DatasetError as exc:
            raise InvalidRequestError(
                f"Stored completion '{each.id}' is not a training example: {exc.reason}.", param="filter"
            ) from None
        yield line


def _dpo_line(preferred: Kept, non_preferred: Kept) -> bytes:
    if preferred.request.get("messages") != non_preferred.request.get("messages"):
        raise InvalidRequestError(
            f"Stored completions '{preferred.id}' and '{non_preferred.id}' answer different messages; a preference "
            "pair needs two answers to the same input.",
            param="pairs",
        )
    messages = _input(preferred, "pairs")
    better, worse = _output(preferred, "pairs"), _output(non_preferred, "pairs")
    if messages[-1]["role"] != "user" or better == worse:
        raise InvalidRequestError(
            f"Stored completions '{preferred.id}' and '{non_preferred.id}' make no preference pair: the input must end "
            "with a user message and the two answers must differ.",
            param="pairs",
        )
    return _json_line({"input": {"messages": messages}, "preferred_output": better, "non_preferred_output": worse})


def _input(kept: Kept, param: str) -> list[dict[str, str]]:
    """The request's messages as training messages: text only, ``developer`` as ``system``."""
    messages = []
    for index, message in enumerate(kept.request["messages"]):
        role = _ROLES.get(message["role"])
        if role is None or message.get("tool_calls"):
            raise InvalidRequestError(
                f"Stored completion '{kept.id}' has tool calls or tool messages (messages[{index}]); training "
                "exports take text conversations only.",
                param=param,
            )
        content = message.get("content") or ""
        text = content if isinstance(content, str) else "".join(part["text"] for part in content)
        messages.append({"role": role, "content": text})
    return messages


def _output(kept: Kept, param: str) -> list[dict[str, str]]:
    """The first choice's answer as one assistant message."""
    answer: dict[str, Any] = kept.completion["choices"][0]["message"]
    if answer.get("tool_calls") or not (answer.get("content") or "").strip():
        raise InvalidRequestError(
            f"Stored completion '{kept.id}' answered with tool calls or nothing; training exports take text answers "
            "only.",
            param=param,
        )
    return [{"role": "assistant", "content": answer["content"]}]


def _json_line(line: dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"
