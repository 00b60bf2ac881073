"""The S3 endpoint breaker: after `threshold` unavailable reads in a row, reads are held
(failed unsent) for `cooldown` seconds, then one probe goes through; any answer closes it."""

from __future__ import annotations

import pytest

from anytasktune.storagereads import Breaker
from anytasktune_contract.failures import same_error

# Steps: "send" / "hold" (what hold() must say), "down" (a sent read found it unavailable),
# "up" (a sent read got an answer), "+N" (N seconds pass).
CASES = {
    "closed below the threshold": ["send", "down", "send", "down", "send"],
    "opens at the threshold": ["send", "down", "down", "down", "hold", "hold"],
    "one probe after the cooldown, the others held": ["down", "down", "down", "+5", "send", "hold", "hold"],
    "a failed probe holds for another cooldown": ["down", "down", "down", "+5", "send", "down", "+4", "hold", "+1", "send"],
    "a probe's answer closes it": ["down", "down", "down", "+5", "send", "up", "send", "send", "down", "send"],
    "an answer from a read sent before it opened closes it": ["down", "down", "down", "hold", "up", "send"],
    "an answer resets the count": ["down", "down", "up", "down", "down", "send"],
}


@pytest.mark.parametrize("steps", list(CASES.values()), ids=list(CASES))
def test_the_breaker_holds_reads_after_a_run_of_failures_and_probes_once_a_cooldown(steps: list[str]) -> None:
    now = [0.0]
    breaker = Breaker("http://s3:9000", threshold=3, cooldown=5.0, clock=lambda: now[0])
    for i, step in enumerate(steps):
        if step.startswith("+"):
            now[0] += float(step[1:])
        elif step == "down":
            breaker.unavailable("EndpointConnectionError")
        elif step == "up":
            breaker.answered()
        else:
            held = breaker.hold()
            assert (held is not None) == (step == "hold"), f"step {i} ({step}) of {steps}: {held}"


def test_a_held_read_says_which_endpoint_failed_how_and_the_same_each_time() -> None:
    """The status shows a held read's error: it names the endpoint and the last failure's type
    (not its message: that names another sub-task's object), and stays the same error while
    the count grows, so holding causes no status churn."""
    breaker = Breaker("http://s3:9000", threshold=2, cooldown=5.0, clock=lambda: 0.0)
    for _ in range(2):
        breaker.unavailable("EndpointConnectionError")
    first = breaker.hold()
    breaker.unavailable("EndpointConnectionError")  # a read sent before it opened
    again = breaker.hold()
    assert first is not None and again is not None
    assert first.startswith("StorageUnavailableError: http://s3:9000 failed 2 reads in a row (the last: EndpointConnectionError)")
    assert same_error(first, again) and first != again


def test_opening_and_closing_are_reported_once() -> None:
    breaker = Breaker("", threshold=2, cooldown=5.0, clock=lambda: 0.0)
    assert breaker.endpoint == "the S3 endpoint"
    assert [breaker.unavailable("ReadTimeoutError") for _ in range(4)] == [False, True, False, False]
    assert [breaker.answered(), breaker.answered()] == [True, False]
