"""Credentials never reach a log line.

At debug level botocore logs every request's headers, and `Authorization` names the
access key id; other libraries may echo their configuration. Every record that reaches
a handler of the root logger is scrubbed of the values of credential variables in the
environment, and botocore's wire-level debug logging is capped at INFO."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

CREDENTIAL_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|API_KEY)", re.IGNORECASE)
REDACTED = "[redacted]"
MIN_LENGTH = 6  # shorter values would scrub ordinary words


def credential_values(env: Mapping[str, str]) -> list[str]:
    values = {v for k, v in env.items() if CREDENTIAL_NAME.search(k) and len(v) >= MIN_LENGTH}
    return sorted(values, key=lambda v: (-len(v), v))  # longest first: no partial leftovers


class RedactCredentials(logging.Filter):
    def __init__(self, values: list[str]) -> None:
        super().__init__()
        self.values = values

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        scrubbed = text
        for value in self.values:
            scrubbed = scrubbed.replace(value, REDACTED)
        if scrubbed != text:
            record.msg, record.args = scrubbed, ()
        if record.exc_text:
            for value in self.values:
                record.exc_text = record.exc_text.replace(value, REDACTED)
        return True


def protect_credentials(env: Mapping[str, str] | None = None) -> None:
    """Install the filter on every root handler (call after logging is configured)."""
    values = credential_values(os.environ if env is None else env)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactCredentials) for f in handler.filters):
            handler.addFilter(RedactCredentials(values))
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
