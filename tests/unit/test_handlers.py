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


def test_kopf_has_no_change_handlers_so_its_change_detection_may_be_off() -> None:
    """handlers.NoChangeDetection empties kopf's diff base: right only while no handler
    reacts to changes (on.create/update/delete/resume/field) or spawns daemons and timers."""
    import kopf

    from anytasktune import handlers
    from anytasktune.spec import GROUP, PLURAL, VERSION

    registry = kopf.get_default_registry()
    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    assert registry._watching.has_handlers(resource=resource)
    assert not registry._changing.has_handlers(resource=resource)
    assert not registry._spawning.has_handlers(resource=resource)
    storage = handlers.NoChangeDetection()
    assert storage.build(body=kopf.Body({"metadata": {"name": "t"}, "spec": {"a": 1}})) == {}
    assert storage.fetch(body=kopf.Body({})) is None
