"""The record of manifest reads the planner gets between passes: backoff, and an error
text that only changes when the error does (the status shows it; it must not churn)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from anytasktune.executor import ManifestReads
from anytasktune_contract.backoff import Backoff

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
URI = "s3://b/run/manifest.json"


def test_backoff_and_a_stable_error_text() -> None:
    reads = ManifestReads(Backoff(5, 60))
    assert reads.begin(URI) and not reads.begin(URI)  # one read at a time
    first, shown = reads.failed(URI, "EndpointConnectionError: gave up after 0.5s", NOW)
    assert (first.failures, first.next_try, first.in_flight, shown) == (1, NOW + timedelta(seconds=5), False, True)
    second, shown = reads.failed(URI, "EndpointConnectionError: gave up after 0.0s", NOW)
    assert second.error == first.error and second.next_try == NOW + timedelta(seconds=10) and not shown
    third, shown = reads.failed(URI, "AccessDenied: check the credentials", NOW)
    assert third.error == "AccessDenied: check the credentials" and third.failures == 3 and shown
    reads.succeeded(URI, b'{"evaluation": {"lift": {"f1": 0.4}}, "training": {"lossHistory": [1, 2, 3]}}')
    done = reads.snapshot()[URI]
    assert done.manifest == {"evaluation": {"lift": {"f1": 0.4}}} and done.failures == 0 and not done.error
