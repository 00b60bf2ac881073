"""How the operator reads run manifests off its passes: a pool that runs at most a few reads
per namespace at once (one tenant's slow storage delays nobody else), and a circuit breaker
per S3 endpoint.

While an endpoint is down, every sub-task's manifest read still comes due on its own backoff:
at 1,000 TaskFineTunes x 10 that was ~40 failing boto3 calls a second, whose CPU (request
building, signing, the exception, the log line) was 18–19% of the operator's (bench/RESULTS.md). After
`threshold` reads in a row found the endpoint unavailable, the reads due in the next `cooldown`
seconds fail at once without calling it; then one read goes through (the probe). Any answer,
a 404 or a 403 included, closes the breaker; another unavailability opens it again.

A held read fails like a sent one: its sub-task's backoff grows and its status says why, so
nothing else changes; the endpoint is tried at least every `cooldown` seconds, and the first
answer lets the reads that come due after it through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("anytasktune")


class Breaker:
    """One S3 endpoint's: closed (reads are sent), open (held), or probing (one sent). Thread-safe."""

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


class TenantReadPool:
    """A thread pool that runs at most `per_namespace` jobs of one namespace at once."""

    def __init__(self, threads: int, per_namespace: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="manifest-read")
        self._per_namespace = per_namespace
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def submit(self, namespace: str, job: Callable[[], None]) -> None:
        with self._lock:
            if self._running.get(namespace, 0) >= self._per_namespace:
                self._waiting.setdefault(namespace, deque()).append(job)
                return
            self._running[namespace] = self._running.get(namespace, 0) + 1
        self._pool.submit(self._run, namespace, job)

    def _run(self, namespace: str, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            except Exception:  # noqa: BLE001 - a read reports its own errors; never lose the slot
                log.exception("manifest read failed unexpectedly")
            with self._lock:
                waiting = self._waiting.get(namespace)
                if not waiting:
                    self._running[namespace] -= 1
                    self._waiting.pop(namespace, None)
                    return
                job = waiting.popleft()

    def shutdown(self) -> None:
        with self._lock:
            self._waiting.clear()  # a running job finishes; nothing queued starts
        self._pool.shutdown(wait=False, cancel_futures=True)
