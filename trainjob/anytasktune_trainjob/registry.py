"""The adapter registry, `<output>/<name>/index.json`: one document per TaskFineTune
that a serving system reads — per sub-task, the active adapter and every published
run (newest first), each with its run identity, base model, scores with intervals,
lift and verdict.

Written by the trainjob with the tenant's own credentials (no component gets wider
ones), as a compare-and-swap: read the document and its ETag, change this sub-task's
entry, write it back only if it is unchanged (`If-Match`; `If-None-Match: *` for the
first write); when another sub-task wrote in between (HTTP 412 PreconditionFailed, or
409 ConditionalRequestConflict), read again and retry, a bounded number of times with
jittered backoff. Sub-tasks finishing at once therefore never lose each other's entry.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from anytasktune_contract.failures import StorageUnavailableError
from anytasktune_contract.storage import ObjectStore

KIND = "AdapterRegistry"
API_VERSION = "anytasktune.io/v1alpha1"
RUNS_KEPT = 20  # per sub-task, newest first (the active run is always kept)
ATTEMPTS = 25

Entry = dict[str, Any]
Mutation = Callable[[Entry], Entry]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read(storage: ObjectStore, uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """(document, ETag), or (None, None) when there is no registry yet."""
    found = storage.read(uri)
    if found is None:
        return None, None
    return json.loads(found[0]), found[1]


def _write(storage: ObjectStore, uri: str, doc: dict[str, Any], etag: str | None) -> bool:
    """Write `doc` if the registry is still at `etag` (absent when None); False on a lost race."""
    body = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode()
    return storage.put_if(uri, body, etag)


def empty(task_fine_tune: str, namespace: str, domain: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "taskFineTune": task_fine_tune, "namespace": namespace,
            "domain": domain, "subtasks": {}}


def update(storage: ObjectStore, uri: str, subtask: str, change: Mutation, new_doc: Callable[[], dict[str, Any]],
           *, attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Apply `change` to `subtask`'s entry with compare-and-swap; returns the document written."""
    for attempt in range(1, attempts + 1):
        doc, etag = read(storage, uri)
        doc = doc or new_doc()
        doc.setdefault("subtasks", {})[subtask] = change(dict(doc["subtasks"].get(subtask) or {}))
        doc["updatedAt"] = now()
        if _write(storage, uri, doc, etag):
            return doc
        sleep(random.uniform(0.05, min(0.05 * 2 ** attempt, 2.0)))
    raise StorageUnavailableError(f"registry {uri}: still contended after {attempts} conditional writes")


def add_run(entry: Entry, run: Entry, *, activate: bool, reason: str) -> Entry:
    """`run` first in the entry's runs (replacing an older copy of the same run id); the
    active adapter when `activate` (keeping its `since` when it already was)."""
    runs = [r for r in entry.get("runs", []) if r.get("runId") != run["runId"]]
    entry["runs"] = [run, *runs]
    active = entry.get("active")
    if activate:
        since = active["since"] if active and active.get("runId") == run["runId"] else now()
        entry["active"] = {**run, "since": since, "reason": reason}
        active = entry["active"]
    keep = {active.get("runId")} if active else set()
    entry["runs"] = [r for i, r in enumerate(entry["runs"]) if i < RUNS_KEPT or r.get("runId") in keep]
    return entry


def find_run(doc: dict[str, Any] | None, subtask: str, run_id: str) -> Entry | None:
    for run in ((doc or {}).get("subtasks", {}).get(subtask) or {}).get("runs", []):
        if run.get("runId") == run_id:
            return dict(run)
    return None


def latest_run(doc: dict[str, Any] | None, subtask: str) -> Entry | None:
    runs = ((doc or {}).get("subtasks", {}).get(subtask) or {}).get("runs", [])
    return dict(runs[0]) if runs else None
