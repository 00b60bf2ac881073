"""Failure classes of a trainjob run and how they map to exit codes.

The operator decides whether to retry from the exit code and from the last line
of the output (`anytasktune.trainspec.failure_line`). Everything that can fail
here raises a `TrainJobError` with the right class; `classify` maps any other
exception (torch OOM, Ray worker loss, botocore outages) onto a class.
"""

from __future__ import annotations

from anytasktune.trainspec import EXIT_CODE_FOR_CLASS, FailureClass

GENERIC_EXIT_CODE = 1


class TrainJobError(Exception):
    failure_class: FailureClass = FailureClass.Unknown

    def __init__(self, message: str, failure_class: FailureClass | None = None) -> None:
        super().__init__(message)
        self.message = message
        if failure_class is not None:
            self.failure_class = failure_class

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.failure_class)


class DataContractError(TrainJobError):
    """The dataset violates the data contract: retrying cannot help."""

    failure_class = FailureClass.DataContract


class InvalidSpecError(TrainJobError):
    """The spec points at something that cannot work (missing object, no access)."""

    failure_class = FailureClass.InvalidSpec


class StorageUnavailableError(TrainJobError):
    """S3 kept failing after retries: a retry later may help."""

    failure_class = FailureClass.StorageUnavailable


def exit_code_for(cls: FailureClass) -> int:
    return EXIT_CODE_FOR_CLASS.get(cls, GENERIC_EXIT_CODE)


_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory", "MemoryError")
_PREEMPT_MARKERS = (
    "ActorDiedError",
    "NodeDiedError",
    "WorkerCrashedError",
    "RayActorError",
    "ActorUnavailableError",
    "OwnerDiedError",
    "node was terminated",
    "preempt",
    "SIGTERM",
)
_STORAGE_MARKERS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "SlowDown")


def classify(exc: BaseException) -> tuple[FailureClass, str]:
    """The failure class and a one-paragraph message for any exception."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # look through chained causes
        seen.add(id(cur))
        if isinstance(cur, TrainJobError):
            return cur.failure_class, cur.message
        cur = cur.__cause__ or cur.__context__
    text = f"{type(exc).__name__}: {exc}"
    # a TrainJobError raised inside a Ray worker arrives as text in a WorkerGroupError
    for name, cls in (("DataContractError", FailureClass.DataContract), ("InvalidSpecError", FailureClass.InvalidSpec),
                      ("StorageUnavailableError", FailureClass.StorageUnavailable)):
        if name in text:
            return cls, _short(text)
    if isinstance(exc, MemoryError) or any(m in text for m in _OOM_MARKERS):
        return FailureClass.OutOfMemory, _short(text)
    if any(m in text for m in _STORAGE_MARKERS):
        return FailureClass.StorageUnavailable, _short(text)
    if any(m in text for m in _PREEMPT_MARKERS):
        return FailureClass.Preempted, _short(text)
    return FailureClass.Unknown, _short(text)


def _short(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
