"""The one backoff policy: retries of failed attempts, of manifest reads and of S3
requests all wait base * 2^(failures-1) seconds, capped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    max_seconds: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (1 = the first)."""
        return min(self.base_seconds * 2 ** max(failures - 1, 0), self.max_seconds)
