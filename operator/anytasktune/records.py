"""What the trainjob recorded for a spec, read back into the status (pure).

The operator knows a sub-task's spec, never its data: the run identity (spec +
dataset content + base model + trainjob version) is settled by the trainjob, with
the tenant's credentials, which then writes a record at a place the operator can
compute from the spec alone, `<outputPrefix>/<spec id>/manifest.json`: what it did
(Trained, Reused, Pinned) and why, the run id and adapter, the evaluation and the
promotion decision. The executor reads it (`ReadManifest`) within the storage read
policy; `record_fields` is what it keeps of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anytasktune.spec import SubtaskStatus
from anytasktune.summary import eval_scores
from anytasktune_contract.trainspec import TrainJobSpec

RECORD_KEYS = ("specId", "runId", "runPrefix", "outcome", "reason", "promotion")
BULKY_EVALUATION = ("perRecord", "answers", "examples")  # in the run's own manifest, not in the status


def record_fields(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a record (or of an older run manifest) the planner reads: small, so
    many pools' reads stay cheap to keep in memory."""
    evaluation = {k: v for k, v in (manifest.get("evaluation") or {}).items() if k not in BULKY_EVALUATION}
    return {"evaluation": evaluation, **{k: manifest[k] for k in RECORD_KEYS if k in manifest}}


def apply_record(st: SubtaskStatus, record: Mapping[str, Any], train: TrainJobSpec) -> None:
    """Fill the sub-task's run identity, adapter, outcome and scores from a record.
    A manifest without the record fields (older trainjobs) lives in the spec folder
    itself, next to its adapter."""
    st.metrics = eval_scores(record.get("evaluation", {}))
    st.runId = str(record.get("runId") or "")
    st.adapter = str(record.get("runPrefix") or train.spec_prefix())
    st.outcome = str(record.get("outcome") or "")
    st.outcomeReason = str(record.get("reason") or "")
    promotion = record.get("promotion") or {}
    st.promoted = promotion.get("promoted") if isinstance(promotion.get("promoted"), bool) else None
    st.activeRunId = str(promotion.get("active") or "")
    st.promotion = str(promotion.get("message") or "")
