"""The trainjob's S3 client: the contract's `ObjectStore` with a time budget for
retries, so that an S3 outage shorter than the budget is survived by every
transfer (dataset, base model, checkpoints, adapter, manifest) and a longer one
fails the attempt with `StorageUnavailable`."""

from __future__ import annotations

import os

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore, StorageSettings

RETRY_BUDGET_ENV = "ANYTASKTUNE_S3_RETRY_SECONDS"
DEFAULT_RETRY_BUDGET_S = 300.0
MAX_BACKOFF_S = 30.0  # an outage's end is noticed within this
BOTOCORE_ATTEMPTS = 3  # quick retries inside one request (throttling, a dropped connection)


def retry_budget_from_env() -> float:
    raw = os.environ.get(RETRY_BUDGET_ENV, "")
    if not raw:
        return DEFAULT_RETRY_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        raise InvalidSpecError(f"${RETRY_BUDGET_ENV} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise InvalidSpecError(f"${RETRY_BUDGET_ENV} must not be negative, got {raw!r}")
    return value


def open_store(settings: StorageSettings, retry_budget_s: float) -> ObjectStore:
    return ObjectStore(settings, attempts=None, retry_budget_s=retry_budget_s, botocore_attempts=BOTOCORE_ATTEMPTS,
                       max_backoff_s=MAX_BACKOFF_S)
