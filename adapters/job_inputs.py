"""What a fine-tuning job trains on, as its worker reads it: the job's files, fetched through the gateway's file
store and parsed into datasets; and ``JobFailed``, the failures a tenant sees as they are (a code and a message
of ours, never an exception's own text)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from adapters.datasets import Dataset, DatasetError, format_problem, parse_jsonl
from adapters.store import FineTuningJob

logger = logging.getLogger(__name__)

FileReader = Callable[[str, str], bytes | None]
"""(tenant id, file id) -> the file's bytes, or None when it is gone."""


class JobFailed(Exception):
    """A failure the tenant should see as it is: its ``code`` and ``message`` are ours, written for tenants."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error: dict[str, str | None] = {"code": code, "message": message, "param": param}
        self.message = message


def load_datasets(read_file: FileReader, job: FineTuningJob) -> tuple[Dataset, Dataset | None]:
    """The job's training set and validation set (if it has one); ``JobFailed`` naming the file that is gone or
    cannot be read as training data for the job's method."""

    def load(file_id: str, param: str) -> Dataset:
        data = read_file(job.tenant_id, file_id)
        if data is None:
            raise JobFailed("file_not_found", f"File '{file_id}' no longer exists.", param)
        try:
            dataset = parse_jsonl(data)
        except DatasetError as exc:  # its text is ours: the line and what is wrong with it
            raise JobFailed("invalid_training_file", f"File '{file_id}' is invalid: {exc}", param) from exc
        except Exception as exc:  # a file the parser could not cope with, whatever the reason: logged here
            logger.warning("reading file %s of job %s failed", file_id, job.id, exc_info=True)
            message = f"File '{file_id}' could not be read as training data."
            raise JobFailed("invalid_training_file", message, param) from exc
        problem = format_problem(job.method, dataset.format)
        if problem:
            raise JobFailed("invalid_training_file", f"File '{file_id}' is invalid: {problem}.", param)
        return dataset

    train = load(job.training_file, "training_file")
    validation = load(job.validation_file, "validation_file") if job.validation_file else None
    return train, validation
