"""Which TaskFineTune events start a pass: not the echo of the operator's own status write."""

from __future__ import annotations

from typing import Any

import pytest

from anytasktune.handlers import own_status_write


def body(generation: int, observed: int | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "t", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T10:00:00Z"
    return {"metadata": meta, "status": {} if observed is None else {"observedGeneration": observed}}


@pytest.mark.parametrize(
    ("type_", "obj", "skip"),
    [
        ("MODIFIED", body(3, 3), True),  # our own status write
        ("MODIFIED", body(4, 3), False),  # a spec change
        ("MODIFIED", body(1, None), False),  # never reconciled
        ("MODIFIED", body(3, 3, deleting=True), False),
        (None, body(3, 3), False),  # kopf's initial listing (operator start)
        ("ADDED", body(3, 3), False),
    ],
)
def test_own_status_write(type_: str | None, obj: dict[str, Any], skip: bool) -> None:
    assert own_status_write(type_, obj) is skip  # type: ignore[arg-type]


class FakeController:
    def __init__(self) -> None:
        self.remembered: list[dict[str, Any]] = []
        self.queued: list[tuple[str, str]] = []

    def remember(self, namespace: str, name: str, body: Any) -> None:
        self.remembered.append(dict(body))

    def enqueue(self, namespace: str, name: str, exists: bool) -> None:
        self.queued.append((namespace, name))


def test_the_event_kopf_keeps_loses_its_managed_fields() -> None:
    """kopf's per-object worker holds the last raw event until the next one: the handler
    drops its managedFields (over a third of a TaskFineTune's JSON), which nothing here reads."""
    import asyncio

    import kopf

    from anytasktune.handlers import on_taskfinetune

    obj = body(4, 3)
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    event = {"type": "MODIFIED", "object": obj}
    memo = kopf.Memo(controller=FakeController())
    asyncio.run(on_taskfinetune(type="MODIFIED", name="t", namespace="ns", body=kopf.Body(obj), event=event,
                                memo=memo))
    assert "managedFields" not in event["object"]["metadata"]
    assert event["object"]["metadata"]["name"] == "t"  # the rest is kept
    assert memo.controller.queued == [("ns", "t")]
    assert memo.controller.remembered[0]["metadata"]["generation"] == 4
