"""A circuit breaker for one S3 endpoint's manifest reads.

While an endpoint is down, every sub-task's manifest read still comes due on its own backoff:
at 1,000 TaskFineTunes x 10 that was ~40 failing boto3 calls a second, and their CPU (request
building, signing, the exception) most of what an outage cost the operator on two cores. After
`threshold` reads in a row found the endpoint unavailable, the reads due in the next `cooldown`
seconds fail at once without calling it; then one read goes through (the probe). Any answer,
a 404 or a 403 included, closes the breaker; another unavailability opens it again.

A held read fails like a sent one: its sub-task's backoff grows and its status says why, so
nothing else changes; the endpoint is tried at least every `cooldown` seconds, and the first
answer lets the reads that come due after it through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Breaker:
    def __init__(self, endpoint: str, threshold: int = 5, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint or "the S3 endpoint"
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0  # unavailable reads in a row
        self._last = ""  # what the last of them raised (its type: the message names another object)
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def hold(self) -> str | None:
        """None: send this read (the breaker is closed, or this read is the probe). Otherwise
        the error to fail it with, unsent."""
        with self._lock:
            if self._failures < self.threshold:
                return None
            if self._clock() >= self._open_until and not self._probing:
                self._probing = True
                return None
            return self._error()

    def error(self) -> str | None:
        """While open, the error every read of this endpoint shows, sent or held: one text per
        outage (up to its numbers), so a sub-task's status changes once, not at each probe."""
        with self._lock:
            return self._error() if self._failures >= self.threshold else None

    def _error(self) -> str:
        return (f"StorageUnavailableError: {self.endpoint} failed {self._failures} reads in a row "
                f"(the last: {self._last}); not sent while it does (one read tries it every {self.cooldown:g}s)")

    def answered(self) -> bool:
        """The endpoint answered (the object, or an error about it). True: the breaker was open."""
        with self._lock:
            was_open = self._failures >= self.threshold
            self._failures, self._probing = 0, False
            return was_open

    def unavailable(self, error_type: str) -> bool:
        """A sent read found the endpoint unavailable. True: the breaker opened now (was closed)."""
        with self._lock:
            self._failures += 1
            self._last, self._probing = error_type, False
            if self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown
            return self._failures == self.threshold
