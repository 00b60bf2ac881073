"""Credential values are scrubbed from every log record that reaches a root handler."""

from __future__ import annotations

import logging

import pytest

from anytasktune.redact import RedactCredentials, credential_values, protect_credentials

ENV = {"AWS_ACCESS_KEY_ID": "AKIAMARKER123", "AWS_SECRET_ACCESS_KEY": "s3cr3t-marker-value", "AWS_REGION": "us-east-1",
       "OPENAI_API_KEY": "sk-marker-key", "SHORT_TOKEN": "abc", "HOME": "/root"}


def test_credential_values_are_picked_by_name() -> None:
    assert credential_values(ENV) == ["s3cr3t-marker-value", "AKIAMARKER123", "sk-marker-key"]  # longest first, then by value


def test_records_are_scrubbed_args_exceptions_and_all(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    handler = logging.StreamHandler()
    handler.addFilter(RedactCredentials(credential_values(ENV)))
    record = logger.makeRecord("test.redact", logging.DEBUG, __file__, 1,
                               "headers %s", ({"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAMARKER123/20261125"},), None)
    handler.filter(record)
    assert "AKIAMARKER123" not in record.getMessage() and "[redacted]" in record.getMessage()


def test_protect_credentials_caps_botocore_wire_logs() -> None:
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    try:
        protect_credentials(ENV)
        assert any(isinstance(f, RedactCredentials) for f in handler.filters)
        assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
    finally:
        root.removeHandler(handler)
