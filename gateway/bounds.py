"""What client-supplied values may be: how long each string, how large each number, which dates. One
definition, read both by the API's request types (a value outside it is a 400 naming the param) and by the
database columns that keep it, so whatever the API accepts fits its column by construction."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field

USER = 256
"""The ``user`` field of a request (the tenant's end-user id), kept with each usage record."""
CLIENT_REQUEST_ID = 128
"""A client's own correlation id (``X-Client-Request-Id`` or ``x-request-id``), kept with each usage record."""
CLIENT_REQUEST_ID_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
"""Printable ASCII without spaces: nothing that could split a log line or a header."""
MODEL = 256
"""A model id in a request or the ledger. A served base model's name is at most 96 characters (``engine.settings``),
so ``ft:<base>:<tenant 64>:<suffix 64>:<8 hex>:ckpt-step-<n>`` fits too."""
SUFFIX = 64
"""A fine-tuned model's suffix (OpenAI: up to 64 characters); ``fine_tuning_jobs.suffix`` is as long."""
METADATA_PAIRS = 16
METADATA_KEY = 64
METADATA_VALUE = 512
"""OpenAI's ``metadata``: at most 16 pairs, keys up to 64 characters, values up to 512."""
FILENAME = 256
KEY_NAME = 128
TENANT_NAME = 64
EVAL_NAME = 256
BATCH_CUSTOM_ID = 512
"""A batch input line's ``custom_id``."""
BATCH_LINE_BYTES = 1024 * 1024
"""One line of a batch input file (a request body)."""
"""Names of evals, eval runs and their testing criteria."""
WEBHOOK_URL = 2048
"""A webhook endpoint's URL."""
WEBHOOK_NAME = 256
"""A webhook endpoint's name."""
ALIAS_NAME = 64
ALIAS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A tenant's model alias: no ``:`` (so never an ``ft:`` name) and no ``/``; one a served model has is refused."""
ALIASES_PER_TENANT = 100
ALIAS_HISTORY_KEPT = 50
"""The most aliases a tenant may hold, and the moves of one alias kept (older ones go as new ones come)."""

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
"""Integer columns: quotas kept in ``Integer`` columns stay under ``INT32_MAX``, token and byte counts under
``INT64_MAX``; a request's ``seed`` is an int64 as in OpenAI's API."""


def _naive_utc(moment: datetime) -> datetime:
    """Naive UTC (as stored), refusing what cannot be stored or compared (years before 1970 or past 9999)."""
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError("the date is out of range") from None
    if not 1970 <= moment.year <= 9999:
        raise ValueError("the date must lie between the years 1970 and 9999")
    return moment


UtcDateTime = Annotated[datetime, AfterValidator(_naive_utc)]
"""A client-supplied date and time: any ISO 8601 form or Unix seconds, kept as naive UTC."""


def _metadata_fits(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if len(key) > METADATA_KEY or len(item) > METADATA_VALUE:
            raise ValueError(f"keys may be {METADATA_KEY} characters and values {METADATA_VALUE} at most")
    return value


Metadata = Annotated[dict[str, str], Field(max_length=METADATA_PAIRS), AfterValidator(_metadata_fits)]
"""OpenAI's ``metadata`` of jobs, evals and runs."""

# -- documents tenants send: JSON schemas, eval items and samples, training and eval JSONL lines ---------------------
DOCUMENT_DEPTH = 32
"""Nesting of any JSON value a tenant hands us inside a body or a file line (objects and arrays in objects and
arrays); deeper is a 400, long before a parser or a validator could recurse out of stack."""
SCHEMA_BYTES = 64 * 1024
SCHEMA_NODES = 4_000
"""An eval's item schema: its JSON text and its values (each object, array, string, number counts one)."""
EVAL_ITEM_BYTES = 1024 * 1024
EVAL_ITEM_NODES = 20_000
"""One eval item with its sample: a JSONL line of an items file, or one inline entry."""
EVAL_RUN_ITEMS = 10_000
EVAL_RUN_BYTES = 32 * 1024 * 1024
EVAL_RUN_NODES = 1_000_000
"""A run's items all together (read one at a time and refused as soon as they pass a bound)."""
GRADED_TEXT_CHARS = 32_768
"""A grader's rendered input and reference may each be this long; a longer one is that item's error (fuzzy
matching is quadratic in the text's length)."""
VALIDATION_SECONDS = 10.0
"""Checking a run's items against the eval's item schema, all items together."""
GRADING_SECONDS = 2.0
"""Grading one item by all the eval's testing criteria."""
TRAINING_LINE_BYTES = 1024 * 1024
"""One example of a fine-tuning file; training sees at most a few thousand tokens of it anyway."""
