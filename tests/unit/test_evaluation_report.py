"""How the evaluation reaches people: the status (scores, intervals, verdict), its
message and Events, and local mode's summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from anytasktune.local.presentation import print_summary, summary_rows
from anytasktune.spec import EvalScores, TaskFineTuneStatus
from anytasktune.summary import eval_scores, lift_message

EVALUATION: dict[str, Any] = {
    "samples": 16, "metrics": ["accuracy"],
    "base": {"accuracy": 0.3125, "eval_loss": 3.3}, "adapter": {"accuracy": 0.8125, "eval_loss": 0.35},
    "lift": {"accuracy": 0.5, "eval_loss": -2.95},
    "intervals": {"accuracy": {"base": [0.0625, 0.5625], "adapter": [0.625, 1.0], "lift": [0.25, 0.75]}},
    "verdict": "adapter wins", "verdictRule": {"metric": "accuracy", "threshold": 0.05},
    "perRecord": {"accuracy": {"base": [0.0] * 16, "adapter": [1.0] * 16}},  # not for the status
}


def test_status_carries_scores_intervals_and_the_verdict() -> None:
    scores = eval_scores(EVALUATION)
    assert scores.intervals["accuracy"]["lift"] == [0.25, 0.75]
    assert scores.verdict == "adapter wins" and scores.threshold == 0.05
    dumped = scores.model_dump(mode="json")
    assert "perRecord" not in dumped  # the status stays small
    status = TaskFineTuneStatus.model_validate({"subtasks": [{"name": "kw", "metrics": dumped}]})
    assert status.subtasks[0].metrics == scores


def test_message_puts_the_interval_and_verdict_next_to_the_lift() -> None:
    msg = lift_message(eval_scores(EVALUATION))
    assert msg.startswith("accuracy 0.312 -> 0.812 (+0.500, 95% CI +0.250..+0.750): adapter wins")
    assert "eval_loss 3.300 -> 0.350 (-2.950)" in msg
    old_manifest = EvalScores(base={"f1": 0.2}, adapter={"f1": 0.7}, lift={"f1": 0.5})
    assert lift_message(old_manifest) == "f1 0.200 -> 0.700 (+0.500)"  # manifests without intervals still read


def _manifest(evaluation: dict[str, Any]) -> dict[str, Any]:
    spec = {"taskFineTune": "p", "domain": "d", "subtask": "risk", "taskType": "classification",
            "baseModel": {"id": "m"}, "dataset": {"uri": "s3://b/k"}, "lora": {}, "training": {}, "deepspeed": {},
            "evaluation": {}, "dataContract": {}, "storage": {}, "outputPrefix": "s3://b/o", "scaling": {}}
    return {"spec": spec, "evaluation": evaluation, "timings": {"totalSeconds": 120.0}}


def test_summary_table_shows_intervals_the_verdict_and_its_rule(capsys: pytest.CaptureFixture[str]) -> None:
    inconclusive = {**EVALUATION, "lift": {"accuracy": 0.125}, "verdict": "inconclusive",
                    "intervals": {"accuracy": {"base": [0.1, 0.5], "adapter": [0.2, 0.7], "lift": [-0.06, 0.31]}}}
    status = {"subtasks": [{"name": "risk", "phase": "Succeeded"}, {"name": "kw", "phase": "Succeeded"},
                           {"name": "split", "phase": "Failed", "message": "DataContract: x.jsonl:3 empty"}]}
    rows = summary_rows(status, {"risk": _manifest(EVALUATION), "kw": _manifest(inconclusive)},
                        {"risk": Path("out/p/adapters/risk")})
    assert [r["verdict"] for r in rows] == ["adapter wins", "inconclusive", "FAILED"]
    assert rows[1]["intervals"]["lift"] == [-0.06, 0.31]
    print_summary(rows, "Failed", 300.0)
    out = capsys.readouterr().out
    assert "+0.500 [+0.25, +0.75]" in out and "0.312 [0.06, 0.56]" in out
    assert "+0.125 [-0.06, +0.31]" in out and "inconclusive" in out
    assert "lift's 95% lower bound" in out and "above 0.05" in out
    assert "1/3 sub-task adapters beat the base model with 95% confidence" in out
    assert "kw: inconclusive" in out and "split: FAILED" in out


GENERAL = {**EVALUATION, "general": {"accuracy": 0.625}, "versusGeneral": "inconclusive",
           "generalModel": {"endpoint": "https://api.example/v1", "model": "gpt-general", "status": "Succeeded"},
           "intervals": {"accuracy": {**EVALUATION["intervals"]["accuracy"], "general": [0.375, 0.875],
                                      "liftOverGeneral": [-0.062, 0.438]}}}


def test_the_general_model_sits_beside_base_and_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    scores = eval_scores(GENERAL)
    assert (scores.general, scores.generalModel, scores.comparison) == ({"accuracy": 0.625}, "gpt-general", "Succeeded")
    assert "general model gpt-general 0.625 (adapter +0.188, 95% CI -0.062..+0.438): inconclusive" in lift_message(scores)
    failed = {**EVALUATION, "generalModel": {"model": "gpt-general", "status": "Failed", "message": "HTTP 401 (not retried)"}}
    assert "general model gpt-general not compared (Failed: HTTP 401 (not retried))" in lift_message(eval_scores(failed))

    status = {"subtasks": [{"name": "risk", "phase": "Succeeded"}, {"name": "kw", "phase": "Succeeded"}]}
    rows = summary_rows(status, {"risk": _manifest(GENERAL), "kw": _manifest(failed)}, {})
    print_summary(rows, "Succeeded", 60.0)
    out = capsys.readouterr().out
    assert "general" in out and "0.625 [0.38, 0.88]" in out and "failed" in out
    assert "risk: adapter vs general model gpt-general: +0.188 [-0.06, +0.44] — inconclusive" in out
    assert "kw: general model gpt-general not compared — HTTP 401 (not retried) (the training stands)" in out


def test_the_table_shows_what_was_trained_and_the_promotion_decision(capsys: pytest.CaptureFixture[str]) -> None:
    status = {"subtasks": [
        {"name": "risk", "phase": "Succeeded", "outcome": "Trained", "runId": "3fa2c1d9e0", "promoted": True,
         "outcomeReason": "dataset content changed (etag:a -> etag:b)", "promotion": "run 3fa2c1d9e0 is active"},
        {"name": "kw", "phase": "Succeeded", "outcome": "Reused", "runId": "77ab01c2d3", "promoted": False,
         "outcomeReason": "already published", "promotion": "run 77ab01c2d3 kept, not promoted"}]}
    rows = summary_rows(status, {"risk": _manifest(EVALUATION), "kw": _manifest(EVALUATION)}, {})
    print_summary(rows, "Succeeded", 60.0)
    out = capsys.readouterr().out
    assert "trained 3fa2c1d9e0" in out and "reused 77ab01c2d3" in out and "not promoted" in out and "active" in out
    assert "risk: trained — dataset content changed (etag:a -> etag:b); run 3fa2c1d9e0 is active" in out
    assert "Trained 1 of 2 sub-tasks (risk)" in out
