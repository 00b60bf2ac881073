"""Why a training attempt failed, and whether retrying can help: one vocabulary and
one classifier for the trainjob (which names its failures) and the operator (which
reads them back from the RayJob).

The trainjob ends a failed run with `failure_line(...)` as its LAST output line and a
class-specific exit code. Ray copies the tail of the entrypoint's output into the job
message and KubeRay copies that into `RayJob.status.message`, where the operator
finds the marker again. What never reached the marker (a killed pod, an OOM kill, an
exception outside our code) is classified from its text by the same rules.
"""

from __future__ import annotations

import re
from enum import Enum

FAILURE_MARKER = "ANYTASKTUNE_FAILURE"
GENERIC_EXIT_CODE = 1


class FailureClass(str, Enum):
    DataContract = "DataContract"  # bad dataset: retrying cannot help
    InvalidSpec = "InvalidSpec"  # spec the schema could not catch: retrying cannot help
    OutOfMemory = "OutOfMemory"  # retry, resuming from the last checkpoint
    Preempted = "Preempted"  # node loss / eviction / spot reclaim: retry
    StorageUnavailable = "StorageUnavailable"  # S3 outage after retries: retry
    DeadlineExceeded = "DeadlineExceeded"  # activeDeadlineSeconds hit: retry (resumes)
    Unknown = "Unknown"  # anything else: retry

    @property
    def retryable(self) -> bool:
        return self not in (FailureClass.DataContract, FailureClass.InvalidSpec)

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self, GENERIC_EXIT_CODE)


_EXIT_CODES = {
    FailureClass.DataContract: 3,
    FailureClass.InvalidSpec: 4,
    FailureClass.StorageUnavailable: 5,
    FailureClass.OutOfMemory: 6,
}


class TrainJobError(Exception):
    """A failure the trainjob understood; its class travels to the operator."""

    failure_class: FailureClass = FailureClass.Unknown

    def __init__(self, message: str, failure_class: FailureClass | None = None) -> None:
        super().__init__(message)
        self.message = message
        if failure_class is not None:
            self.failure_class = failure_class

    @property
    def exit_code(self) -> int:
        return self.failure_class.exit_code


class DataContractError(TrainJobError):
    """The dataset violates the data contract: retrying cannot help."""

    failure_class = FailureClass.DataContract


class InvalidSpecError(TrainJobError):
    """The spec points at something that cannot work (missing object, no access)."""

    failure_class = FailureClass.InvalidSpec


class StorageUnavailableError(TrainJobError):
    """S3 kept failing after retries: a retry later may help."""

    failure_class = FailureClass.StorageUnavailable


def failure_line(cls: FailureClass, message: str) -> str:
    """The last line a failing trainjob prints: `ANYTASKTUNE_FAILURE class=X: message`."""
    return f"{FAILURE_MARKER} class={cls.value}: {' '.join(message.split())}"


_MARKER_RE = re.compile(FAILURE_MARKER + r" class=(\w+)")
# Text of failures that never reached the marker line, most specific first. Names of
# our own errors come first: one raised inside a Ray worker arrives as text.
_TEXT_RULES: tuple[tuple[FailureClass, re.Pattern[str]], ...] = (
    (FailureClass.DataContract, re.compile(r"DataContractError")),
    (FailureClass.InvalidSpec, re.compile(r"InvalidSpecError")),
    (FailureClass.StorageUnavailable, re.compile(r"StorageUnavailableError")),
    (FailureClass.OutOfMemory, re.compile(r"OutOfMemoryError|OOMKilled|out of memory|MemoryError", re.IGNORECASE)),
    (FailureClass.StorageUnavailable, re.compile(r"EndpointConnectionError|ConnectTimeoutError|ReadTimeoutError|SlowDown")),
    (FailureClass.Preempted, re.compile(
        r"ActorDiedError|NodeDiedError|WorkerCrashedError|RayActorError|ActorUnavailableError|OwnerDiedError"
        r"|node was terminated|node .* (lost|died)|preempt|evicted|spot|SIGTERM", re.IGNORECASE)),
)


def marked_class(text: str) -> FailureClass | None:
    """The class named by the last marker line in `text`, if any."""
    found = _MARKER_RE.findall(text)
    if not found:
        return None
    try:
        return FailureClass(found[-1])
    except ValueError:
        return FailureClass.Unknown


def classify_text(text: str) -> FailureClass:
    """The failure class of any failure text: the marker line wins, then the rules."""
    marked = marked_class(text)
    if marked is not None:
        return marked
    return next((cls for cls, pattern in _TEXT_RULES if pattern.search(text)), FailureClass.Unknown)


def classify(exc: BaseException) -> tuple[FailureClass, str]:
    """The failure class and a bounded one-line message for any exception."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # look through chained causes
        seen.add(id(cur))
        if isinstance(cur, TrainJobError):
            return cur.failure_class, cur.message
        cur = cur.__cause__ or cur.__context__
    text = f"{type(exc).__name__}: {exc}"
    return classify_text(text), bounded(text, 600)


def bounded(text: str, limit: int = 400) -> str:
    """One line (whitespace squashed) of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def explanation(output: str, limit: int = 400) -> str:
    """What explains a failure in a job's output tail: the marker line, else the last line."""
    lines = [line for line in output.splitlines() if line.strip()]
    marked = [line for line in lines if FAILURE_MARKER in line]
    return bounded(marked[-1] if marked else (lines[-1] if lines else ""), limit)


def same_error(a: str, b: str) -> bool:
    """The same failure, up to the numbers in it (timings, attempt counts, ports)."""
    return re.sub(r"\d+(\.\d+)?", "#", a) == re.sub(r"\d+(\.\d+)?", "#", b)
