"""What the trainjob recorded for a spec, in the status: trained or reused and why,
the run identity, the promotion decision with its numbers, and the Events."""

from __future__ import annotations

from typing import Any

from anytasktune.actions import ManifestRead, ReadManifest
from anytasktune.plan import plan
from anytasktune.records import record_fields
from tests.unit.test_plan import CONFIG, NOW, evaluated, job, tft

EVALUATION: dict[str, Any] = {
    "metrics": ["f1"], "samples": 16, "base": {"f1": 0.2}, "adapter": {"f1": 0.7}, "lift": {"f1": 0.5},
    "intervals": {"f1": {"lift": [0.3, 0.7]}}, "verdict": "adapter wins", "verdictRule": {"threshold": 0.0},
    "perRecord": {"f1": {"base": [0.2] * 16, "adapter": [0.7] * 16}}, "answers": {"reference": ["x"] * 16},
}


def record(outcome: str = "Trained", reason: str = "first run of this sub-task", promoted: bool = True,
           message: str = "run 3fa2c1d9e0 is active (no promotion gate: evaluation.minLift unset)") -> dict[str, Any]:
    return {"kind": "TrainJobRecord", "specId": "x", "runId": "3fa2c1d9e0",
            "runPrefix": "s3://adapters/out/legal/task0/runs/3fa2c1d9e0/", "outcome": outcome, "reason": reason,
            "evaluation": EVALUATION, "promotion": {"promoted": promoted, "active": "3fa2c1d9e0" if promoted else "0011223344",
                                                    "message": message}}


def read_once(rec: dict[str, Any]) -> Any:
    obj = tft(subtasks=1)
    done = [job(obj, "task0", 1, "succeeded")]
    first = plan(obj, done, {}, NOW, CONFIG)
    assert [a for a in first.actions if isinstance(a, ReadManifest)]
    uri = next(iter(evaluated(obj, "task0", {})))
    return plan({**obj, "status": first.status.model_dump(mode="json")}, done,
                {uri: ManifestRead(manifest=record_fields(rec))}, NOW, CONFIG)


def test_the_executor_keeps_only_what_the_status_needs() -> None:
    kept = record_fields(record())
    assert set(kept) == {"evaluation", "specId", "runId", "runPrefix", "outcome", "reason", "promotion"}
    assert "perRecord" not in kept["evaluation"] and "answers" not in kept["evaluation"]


def test_a_trained_run_is_reported_with_its_identity_and_why() -> None:
    p = read_once(record())
    st = p.status.subtasks[0]
    assert (st.phase.value, st.reason, st.outcome, st.runId) == ("Succeeded", "Succeeded", "Trained", "3fa2c1d9e0")
    assert st.adapter == "s3://adapters/out/legal/task0/runs/3fa2c1d9e0/" and st.promoted is True
    assert st.message.startswith("trained run 3fa2c1d9e0 (first run of this sub-task): f1 0.200 -> 0.700 (+0.500, "
                                 "95% CI +0.300..+0.700): adapter wins; run 3fa2c1d9e0 is active")
    reasons = [e.reason for e in p.events]
    assert "Evaluated" in reasons and "Promoted" in reasons and "NotPromoted" not in reasons


def test_a_reused_run_says_nothing_was_trained() -> None:
    p = read_once(record("Reused", "already published: same spec, dataset (etag:ab12), base model (m@1) and trainjob 0.1.0"))
    st = p.status.subtasks[0]
    assert st.outcome == "Reused" and "already published" in st.outcomeReason
    assert st.message.startswith("reused run 3fa2c1d9e0 (already published")
    assert any(e.reason == "Reused" and "nothing trained" in e.message for e in p.events)


def test_an_adapter_below_the_gate_is_kept_but_not_promoted() -> None:
    message = ("run 3fa2c1d9e0 kept, not promoted: f1 lift +0.500 (95% CI -0.020..+0.700), lower bound not above "
               "minLift 0.05; active: run 0011223344")
    p = read_once(record(promoted=False, message=message))
    st = p.status.subtasks[0]
    assert st.phase.value == "Succeeded" and st.reason == "NotPromoted" and st.promoted is False
    assert st.activeRunId == "0011223344" and "lower bound not above minLift 0.05" in st.message
    assert [e for e in p.events if e.reason == "NotPromoted"][0].type == "Warning"
    assert p.status.phase.value == "Succeeded"  # the training succeeded; the gate decided the registry
    # the next pass keeps everything (the record is read once)
    again = plan({**tft(subtasks=1), "status": p.status.model_dump(mode="json")},
                 [job(tft(subtasks=1), "task0", 1, "succeeded")], {}, NOW, CONFIG)
    assert again.status.subtasks[0] == st and not [e for e in again.events if e.reason in ("NotPromoted", "Promoted")]
