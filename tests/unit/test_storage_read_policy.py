"""The operator reads a run's manifest.json (with its own credentials) only where the
installer's storage read policy allows that namespace, endpoint and prefix: otherwise
one tenant could make it read another team's bucket into its status, or send signed
requests to a host of its choosing."""

from __future__ import annotations

from typing import Any

import pytest

from anytasktune.actions import ReadManifest
from anytasktune.config import OperatorConfig, StorageReadPolicy
from anytasktune.plan import plan
from tests.unit.test_plan import NOW, job, tft

POLICY = StorageReadPolicy.parse("""[
  {"namespaces": ["*"], "endpoints": [""], "outputs": ["s3://shared/{namespace}/"]},
  {"namespaces": ["team-a"], "endpoints": ["https://minio.team-a.svc:9000/"], "outputs": ["s3://team-a-adapters/"]}
]""")


@pytest.mark.parametrize(
    ("namespace", "endpoint", "uri", "allowed"),
    [
        ("team-a", None, "s3://shared/team-a/pool/kw/r1/manifest.json", True),
        ("team-b", None, "s3://shared/team-b/pool/kw/r1/manifest.json", True),
        ("team-b", None, "s3://shared/team-a/pool/kw/r1/manifest.json", False),  # another tenant's prefix
        ("team-a", None, "s3://shared/team-ab/x/manifest.json", False),  # a prefix, not a name match
        ("team-a", "https://MINIO.team-a.svc:9000", "s3://team-a-adapters/p/manifest.json", True),
        ("team-b", "https://minio.team-a.svc:9000", "s3://team-a-adapters/p/manifest.json", False),
        ("team-a", "http://attacker.example:80", "s3://team-a-adapters/p/manifest.json", False),  # a host of its choosing
        ("team-a", "http://attacker.example:80", "s3://shared/team-a/p/manifest.json", False),
    ],
)
def test_policy(namespace: str, endpoint: str | None, uri: str, allowed: bool) -> None:
    assert POLICY.allows(namespace, endpoint, uri) is allowed


def test_empty_policy_reads_nothing_and_bad_policy_is_a_clear_error() -> None:
    assert not StorageReadPolicy.parse("").allows("ns", None, "s3://b/k")
    with pytest.raises(ValueError, match="ANYTASKTUNE_STORAGE_READ_POLICY is not a list"):
        StorageReadPolicy.parse('{"namespaces": "x"}')
    config = OperatorConfig.from_env({"ANYTASKTUNE_STORAGE_READ_POLICY": '[{"namespaces": ["a"], "outputs": ["s3://b/"]}]'})
    assert config.storage_read_policy.allows("a", None, "s3://b/x") and not config.storage_read_policy.allows("a", "http://h", "s3://b/x")


def with_status(obj: dict[str, Any], p: Any) -> dict[str, Any]:
    return {**obj, "status": p.status.model_dump(mode="json", exclude_none=True)}


def test_a_disallowed_manifest_is_never_read_and_the_status_says_why() -> None:
    obj = tft(subtasks=1)  # namespace ns, output s3://adapters/out/, no endpoint
    config = OperatorConfig(storage_read_policy=POLICY)
    done = [job(obj, "task0", 1, "succeeded")]
    first = plan(obj, done, {}, NOW, config)
    assert not [a for a in first.actions if isinstance(a, ReadManifest)]
    st = first.status.subtasks[0]
    assert st.phase.value == "Succeeded" and st.reason == "EvaluationNotAllowed"
    assert "does not allow namespace ns to read s3://adapters/out/legal/task0/" in st.message
    assert "StorageReadPolicy" in [e.reason for e in first.events]
    again = plan(with_status(obj, first), done, {}, NOW, config)
    assert "StorageReadPolicy" not in [e.reason for e in again.events]
