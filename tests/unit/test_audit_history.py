"""The fault tests' reading of the API server's audit log: which objects were created.

A create whose client was SIGKILLed mid-request is answered 504 while the API server's
store finishes it anyway (the finisher in k8s.io/apiserver): seen in a crash trial as a
RayJob that existed, was run and was retried, without a 201 in the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.faults import History


def _e(verb: str, name: str, code: int, resource: str = "rayjobs", subresource: str = "") -> dict[str, Any]:
    ref = {"resource": resource, "name": name, "namespace": "ns", **({"subresource": subresource} if subresource else {})}
    return {"verb": verb, "objectRef": ref, "responseStatus": {"code": code}}


@pytest.mark.parametrize(("events", "created"), [
    ([_e("create", "a-1", 201)], {"a-1": 1}),
    ([_e("create", "a-1", 201), _e("create", "a-1", 409)], {"a-1": 1}),
    ([_e("create", "a-1", 201), _e("create", "a-1", 201)], {"a-1": 2}),  # a duplicate stays visible
    # 504, then the stand-in writes its status: it was stored
    ([_e("create", "a-1", 504), _e("update", "a-1", 200, subresource="status")], {"a-1": 1}),
    # 504, then the restarted operator's create is refused as a duplicate: it was stored
    ([_e("create", "a-1", 504, "configmaps"), _e("create", "a-1", 409, "configmaps")], {}),
    ([_e("create", "a-1", 504), _e("create", "a-1", 409)], {"a-1": 1}),
    # 504, then a 201: the first was not stored
    ([_e("create", "a-1", 504), _e("create", "a-1", 201)], {"a-1": 1}),
    # 504 and nothing after it: no proof it exists
    ([_e("create", "a-1", 504)], {}),
    ([_e("create", "a-1", 422)], {}),
    # writes to another object prove nothing
    ([_e("create", "a-1", 504), _e("update", "a-2", 200, subresource="status")], {}),
])
def test_creates_counts_a_cancelled_create_that_was_stored(events: list[dict[str, Any]], created: dict[str, int]) -> None:
    assert dict(History("ns", events).creates("rayjobs")) == created


def test_creates_of_configmaps_with_a_cancelled_create() -> None:
    events = [_e("create", "a-1", 504, "configmaps"), _e("create", "a-1", 409, "configmaps")]
    assert dict(History("ns", events).creates("configmaps")) == {"a-1": 1}
