"""A batch's answers as files of purpose ``batch_output`` (OpenAI's shapes): the output file has a line per
request answered with a 200, the error file one per request answered with an error or not run, each
``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {code, message} | null}``,
in the input file's order."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.batches.states import RequestStatus
from gateway.db import BatchRequest
from gateway.fine_tuning.files import FileStore

PURPOSE = "batch_output"


@dataclass(frozen=True)
class OutputFiles:
    output_file_id: str | None
    error_file_id: str | None

    @property
    def ids(self) -> list[str]:
        return [file_id for file_id in (self.output_file_id, self.error_file_id) if file_id]


def output_line(row: BatchRequest) -> bytes:
    line = {
        "id": f"batch_req_{row.request_id.removeprefix('req_')}",
        "custom_id": row.custom_id,
        "response": row.response,
        "error": row.error,
    }
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def output_files(files: FileStore, tenant_id: str, batch_id: str, rows: Sequence[BatchRequest]) -> OutputFiles:
    """The files of the batch's finished requests (none where no request belongs in one)."""
    answered = [row for row in rows if row.status == RequestStatus.COMPLETED]
    failed = [row for row in rows if row.status == RequestStatus.FAILED]

    def written(name: str, part: list[BatchRequest]) -> str | None:
        lines: Iterator[bytes] = (output_line(row) for row in part)
        return files.add_generated(tenant_id, f"{batch_id}_{name}.jsonl", PURPOSE, lines) if part else None

    return OutputFiles(written("output", answered), written("error", failed))
