"""After the run identity is settled: train, reuse or pin — and say which, and why.

- **Pinned** (`spec.pin`): the given published run becomes the sub-task's active
  adapter again (a rollback); nothing is trained.
- **Reused**: a run with this identity (same spec as far as it shapes the adapter,
  same dataset content, base model and trainjob version) is already published under
  `runs/<run id>/`: nothing is trained; the promotion gate is applied with today's
  `minLift`.
- **Trained**: anything else; the reason names what changed since the sub-task's last
  run (the dataset's content, the spec's fields, the base model, the trainjob).

Every outcome ends the same way (`record_outcome`): the registry entry is updated
(compare-and-swap, `registry.py`), then the spec's record is written to
`<outputPrefix>/<spec id>/manifest.json`, where the operator reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore
from anytasktune_contract.trainspec import NOT_IN_RUN_ID, TrainJobSpec

from . import registry
from .compare import compared_again, needs_comparison
from .intervals import WINS, verdict

MANIFEST_NAME = "manifest.json"
RECORD_KIND = "TrainJobRecord"
BULKY = ("perRecord", "answers", "examples")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Kept:
    """A run that needed no training this time."""

    run_id: str
    run_prefix: str
    manifest: dict[str, Any]


def read_json(storage: ObjectStore, uri: str) -> dict[str, Any] | None:
    """A JSON document, or None when there is none (outages retried by the store)."""
    found = storage.read(uri)
    value = json.loads(found[0]) if found is not None else None
    return value if isinstance(value, dict) else None


# --- why train --------------------------------------------------------------------


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: value}


def spec_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the fields that shape the adapter and differ, e.g. ['lora.r']."""
    def shaping(doc: Mapping[str, Any]) -> dict[str, Any]:
        flat = _leaves(dict(doc))
        excluded = {k for k, v in NOT_IN_RUN_ID.items() if v is True} | {"inputs"}  # inputs: said apart
        nested = {f"{k}.{f}" for k, v in NOT_IN_RUN_ID.items() if isinstance(v, set) for f in v}
        return {k: v for k, v in flat.items() if k.split(".")[0] not in excluded
                and not any(k == n or k.startswith(n + ".") for n in nested)}
    a, b = shaping(before), shaping(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def why_trained(spec: TrainJobSpec, storage: ObjectStore) -> str:
    """What changed since the sub-task's last published run."""
    doc, _ = registry.read(storage, spec.registry_uri())
    last = registry.latest_run(doc, spec.subtask)
    if last is None:
        return "first run of this sub-task"
    assert spec.inputs is not None
    before = last.get("inputs") or {}
    reasons = []
    if before.get("dataset") != spec.inputs.dataset:
        reasons.append(f"dataset content changed ({before.get('dataset', '?')} -> {spec.inputs.dataset})")
    if before.get("baseModel") != spec.inputs.baseModel:
        reasons.append(f"base model changed ({before.get('baseModel', '?')} -> {spec.inputs.baseModel})")
    if before.get("trainjob") != spec.inputs.trainjob:
        reasons.append(f"trainjob version changed ({before.get('trainjob', '?')} -> {spec.inputs.trainjob})")
    previous = read_json(storage, spec.run_prefix(str(last["runId"])) + MANIFEST_NAME) or {}
    changed = spec_changes(previous.get("spec") or {}, spec.model_dump(mode="json"))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        reasons.append(f"spec changed: {shown}")
    return "; ".join(reasons) or f"no published run {spec.run_id()} (last: {last['runId']})"


# --- promotion ----------------------------------------------------------------------


def rejudged(spec: TrainJobSpec, evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation with the verdict under this spec's threshold (a reused run may
    have been judged under another minLift)."""
    metric = evaluation.get("metrics", [""])[0]
    threshold = spec.evaluation.verdict_threshold()
    lift_interval = (evaluation.get("intervals") or {}).get(metric, {}).get("lift")
    rule = f"adapter wins when the 95% lower bound of the {metric} lift is above {threshold:g}"
    return {**evaluation, "verdict": verdict(lift_interval, threshold),
            "verdictRule": {"metric": metric, "threshold": threshold, "rule": rule}}


def _lift_text(evaluation: Mapping[str, Any]) -> str:
    metric = evaluation.get("metrics", [""])[0]
    lift = (evaluation.get("lift") or {}).get(metric)
    ci = (evaluation.get("intervals") or {}).get(metric, {}).get("lift")
    shown = f"{lift:+.3f}" if isinstance(lift, (int, float)) else "?"
    return f"{metric} lift {shown}" + (f" (95% CI {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else "")


def promotion(spec: TrainJobSpec, run_id: str, evaluation: Mapping[str, Any], outcome: str) -> dict[str, Any]:
    """Whether this run becomes the active adapter, and the numbers that decided it."""
    gate = spec.evaluation.minLift
    base = {"minLift": gate, "runId": run_id, "verdict": evaluation.get("verdict", "")}
    if outcome == "Pinned":
        return {**base, "promoted": True, "reason": "Pinned", "message": f"run {run_id} is active: pinned by the spec"}
    if gate is None:
        return {**base, "promoted": True, "reason": "Promoted",
                "message": f"run {run_id} is active (no promotion gate: evaluation.minLift unset); {_lift_text(evaluation)}"}
    if evaluation.get("verdict") == WINS:
        return {**base, "promoted": True, "reason": "Promoted",
                "message": f"run {run_id} is active: {_lift_text(evaluation)}, lower bound above minLift {gate:g}"}
    return {**base, "promoted": False, "reason": "NotPromoted",
            "message": f"run {run_id} kept, not promoted: {_lift_text(evaluation)}, lower bound not above minLift {gate:g}"}


# --- the registry entry and the spec's record ---------------------------------------------


def run_entry(spec: TrainJobSpec, run_id: str, manifest: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """One run as the registry lists it: enough to serve it and to judge it."""
    metric = evaluation.get("metrics", [""])[0]
    scores = {k: (evaluation.get(k) or {}).get(metric) for k in ("base", "adapter", "general") if evaluation.get(k)}
    run_spec = manifest.get("spec") or {}
    return {
        "runId": run_id, "adapter": spec.run_prefix(run_id), "specId": manifest.get("specId", ""),
        "baseModel": (manifest.get("baseModel") or {}).get("identity", spec.baseModel.identity()),
        "inputs": (run_spec.get("inputs") or {}), "createdAt": manifest.get("createdAt", ""),
        "loraRank": (run_spec.get("lora") or {}).get("r", spec.lora.r), "metric": metric, "scores": scores,
        "lift": (evaluation.get("lift") or {}).get(metric), "intervals": (evaluation.get("intervals") or {}).get(metric, {}),
        "verdict": evaluation.get("verdict", ""), "samples": evaluation.get("samples"),
        **({"generalModel": {k: v for k, v in evaluation["generalModel"].items() if k in ("model", "status", "message")},
            "versusGeneral": evaluation.get("versusGeneral", "")} if evaluation.get("generalModel") else {}),
    }


def record_outcome(spec: TrainJobSpec, storage: ObjectStore, run_id: str, manifest: Mapping[str, Any], outcome: str,
                   reason: str, log: Log = print) -> dict[str, Any]:
    """Registry first (compare-and-swap), then the spec's record (what the operator reads)."""
    evaluation = rejudged(spec, {k: v for k, v in (manifest.get("evaluation") or {}).items() if k not in BULKY})
    decision = promotion(spec, run_id, evaluation, outcome)
    run = run_entry(spec, run_id, manifest, evaluation)
    doc = registry.update(
        storage, spec.registry_uri(), spec.subtask,
        lambda entry: registry.add_run(entry, run, activate=decision["promoted"], reason=decision["reason"]),
        lambda: registry.empty(spec.taskFineTune, spec.namespace, spec.domain))
    active = (doc["subtasks"][spec.subtask].get("active") or {}).get("runId")
    decision["active"] = active
    if not decision["promoted"]:
        decision["message"] += f"; active: {f'run {active}' if active else 'none'}"
    record = {
        "apiVersion": spec.apiVersion, "kind": RECORD_KIND, "specId": spec.spec_id(), "runId": run_id,
        "runPrefix": spec.run_prefix(run_id), "outcome": outcome, "reason": reason, "recordedAt": registry.now(),
        "evaluation": evaluation, "promotion": decision, "registry": spec.registry_uri(),
    }
    storage.put_json(spec.spec_prefix() + MANIFEST_NAME, record)
    log(f"[anytasktune] {outcome.lower()} run {run_id} ({reason}); {decision['message']}")
    return record


def without_training(spec: TrainJobSpec, storage: ObjectStore, log: Log = print) -> Kept | None:
    """The pinned run, or the already published run of this identity; None: train."""
    if spec.pin:
        prefix = spec.run_prefix(spec.pin)
        manifest = read_json(storage, prefix + MANIFEST_NAME)
        if manifest is None:
            raise InvalidSpecError(f"pin: run {spec.pin} of sub-task {spec.subtask} is not published ({prefix} has no "
                                   f"{MANIFEST_NAME}); the registry {spec.registry_uri()} lists the published runs")
        record_outcome(spec, storage, spec.pin, manifest, "Pinned", "pinned by the spec (rollback)", log)
        return Kept(spec.pin, prefix, manifest)
    assert spec.inputs is not None
    run_id = spec.run_id()
    manifest = read_json(storage, spec.run_prefix() + MANIFEST_NAME)
    if manifest is None:
        return None
    reason = (f"already published: same spec, dataset ({spec.inputs.dataset}), base model ({spec.inputs.baseModel}) "
              f"and trainjob {spec.inputs.trainjob}")
    if needs_comparison(spec, manifest.get("evaluation") or {}):  # compareWith added or changed: no retraining
        manifest = {**manifest, "evaluation": compared_again(spec, storage, dict(manifest["evaluation"]), log)}
    record_outcome(spec, storage, run_id, manifest, "Reused", reason, log)
    return Kept(run_id, spec.run_prefix(), manifest)
