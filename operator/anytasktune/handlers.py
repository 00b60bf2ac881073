"""kopf handlers: thin glue between the API server and the pure planner.

Run with `kopf run --standalone -m anytasktune.handlers --all-namespaces` (or
`anytasktune operator`). Only watch-event handlers are used, so kopf writes no
annotations and no finalizers on our objects: deleting a TaskFineTune can never
wedge, and its children go with it through ownerReferences.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from anytasktune import metrics
from anytasktune.config import OperatorConfig
from anytasktune.plan import (
    DeleteJob,
    Event,
    Launch,
    ObservedJob,
    Plan,
    SetSuspend,
    plan,
    subtasks_needing_manifest,
)
from anytasktune.render import LABEL_MANAGED_BY, LABEL_TFT, MANAGER
from anytasktune.spec import GROUP, KIND, PLURAL, VERSION, TaskFineTune, TaskFineTuneStatus

log = logging.getLogger("anytasktune")
CONFIG = OperatorConfig.from_env()
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_requeues: dict[tuple[str, str], asyncio.TimerHandle] = {}


class Kube:
    """The few API calls reconcile needs (blocking; run in a worker thread)."""

    def __init__(self) -> None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self.custom = kubernetes.client.CustomObjectsApi()
        self.core = kubernetes.client.CoreV1Api()

    def get_tft(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[assignment]
            return obj
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_rayjobs(self, namespace: str, tft: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_TFT}={tft}"
        resp: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
            "ray.io", "v1", namespace, "rayjobs", label_selector=selector
        )
        return list(resp.get("items", []))

    def create(self, namespace: str, launch: Launch) -> None:
        # ConfigMap first: the RayJob's pods mount it. A 409 means an earlier pass
        # (or an operator before a restart) already created it: success.
        try:
            self.core.create_namespaced_config_map(namespace, launch.configmap)  # type: ignore[arg-type]
        except ApiException as err:
            if err.status != 409:
                raise
        try:
            self.custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", launch.rayjob)
        except ApiException as err:
            if err.status != 409:
                raise
            return
        metrics.RAYJOBS_CREATED.inc()
        if launch.retry_of:
            metrics.RETRIES.labels(failure_class=launch.retry_of).inc()

    def delete_rayjob(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise

    def set_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.custom.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name, {"spec": {"suspend": suspend}})

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def event(self, tft: dict[str, Any], event: Event) -> None:
        meta = tft["metadata"]
        now = datetime.now(timezone.utc)
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            type=event.type,
            reason=event.reason,
            message=event.message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=kubernetes.client.V1EventSource(component="anytasktune-operator"),
            reporting_component="anytasktune.io/operator",
            reporting_instance="anytasktune-operator",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # an Event is best effort: never fail a reconcile for it
            log.warning("could not post event %s: %s", event.reason, err.reason)


def status_body(status: TaskFineTuneStatus) -> dict[str, Any]:
    """A merge-patch body: absent optional fields are sent as null so they are removed."""
    body = status.model_dump(mode="json", exclude_none=True)
    for key in TaskFineTuneStatus.model_fields:
        body.setdefault(key, None)
    return body


# (namespace, taskfinetune, manifest uri) -> (failures so far, monotonic time of the next try, last error).
# The error text stays the same between tries, so the status does not churn.
_manifest_backoff: dict[tuple[str, str, str], tuple[int, float, str]] = {}


def read_manifests(namespace: str, name: str, storage: Any, adapters: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[Event]]:
    """Fetch manifest.json of succeeded runs (the evaluation lives there).

    Returns (manifests, errors, events). An unreadable manifest (S3 outage, not yet
    visible) is retried with exponential backoff, reported in the sub-task's status
    message, and announced once with a Warning Event."""
    from anytasktune_contract.storage import ObjectStore, StorageSettings  # boto3 only once something succeeded

    found: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    events: list[Event] = []
    now = time.monotonic()
    # Fail fast: one try, short timeouts; the backoff below spaces the next tries.
    store = ObjectStore(StorageSettings.from_spec(storage), attempts=1, botocore_attempts=2, connect_timeout=3, read_timeout=15)
    for subtask, prefix in adapters.items():
        uri = prefix + "manifest.json"
        key = (namespace, name, uri)
        failures, next_try, last_error = _manifest_backoff.get(key, (0, 0.0, ""))
        if now < next_try:
            errors[subtask] = last_error
            continue
        try:
            found[subtask] = json.loads(store.get_bytes(uri)[0])
            _manifest_backoff.pop(key, None)
        except Exception as err:  # noqa: BLE001 - reported and retried with backoff
            metrics.ERRORS.labels(target="s3").inc()
            failures += 1
            errors[subtask] = f"{type(err).__name__}: {err}"[:300]
            _manifest_backoff[key] = (failures, now + min(5.0 * 2 ** (failures - 1), 300.0), errors[subtask])
            log.warning("manifest %s not readable (attempt %d): %s", uri, failures, err)
            if failures == 1:
                events.append(Event("Warning", "StorageUnavailable", f"sub-task {subtask}: cannot read {uri}: {errors[subtask]}"))
    return found, errors, events


def reconcile_once(kube: Kube, namespace: str, name: str, config: OperatorConfig) -> Plan | None:
    tft = kube.get_tft(namespace, name)
    if tft is None or tft["metadata"].get("deletionTimestamp"):
        return None  # ownerReferences let the garbage collector remove the children
    observed = [ObservedJob.from_object(o) for o in kube.list_rayjobs(namespace, name)]
    now = datetime.now(timezone.utc)
    result = plan(tft, observed, {}, now, config)
    needed = subtasks_needing_manifest(result.status)
    if needed:
        storage = TaskFineTune.model_validate({"metadata": tft["metadata"], "spec": tft["spec"]}).spec.storage
        manifests, errors, storage_events = read_manifests(namespace, name, storage, needed)
        result = plan(tft, observed, manifests, now, config, manifest_errors=errors)
        result.events += storage_events

    for action in result.actions:
        if isinstance(action, Launch):
            kube.create(namespace, action)
        elif isinstance(action, DeleteJob):
            kube.delete_rayjob(namespace, action.name)
        elif isinstance(action, SetSuspend):
            kube.set_suspend(namespace, action.name, action.suspend)

    new_status = status_body(result.status)
    old_status = status_body(TaskFineTuneStatus.model_validate(tft.get("status") or {}))
    if new_status != old_status:  # write only on change: no churn, no self-triggered loops
        kube.patch_status(namespace, name, new_status)
    for event in result.events:
        kube.event(tft, event)
    metrics.observe_status(namespace, name, result.status)
    return result


_kube: Kube | None = None


def _client() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


async def reconcile(namespace: str, name: str) -> None:
    """Serialize passes per TaskFineTune; schedule a retry pass when the plan asks."""
    key = (namespace, name)
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        with metrics.RECONCILE_SECONDS.time():
            try:
                result = await asyncio.to_thread(reconcile_once, _client(), namespace, name, CONFIG)
            except ApiException as err:
                metrics.ERRORS.labels(target="apiserver").inc()
                log.warning("reconcile %s/%s: API error %s %s; retrying", namespace, name, err.status, err.reason)
                _requeue(namespace, name, 5.0)
                return
    if result is not None and result.requeue_after is not None:
        _requeue(namespace, name, result.requeue_after)


def _requeue(namespace: str, name: str, delay: float) -> None:
    key = (namespace, name)
    loop = asyncio.get_running_loop()
    if (old := _requeues.pop(key, None)) is not None:
        old.cancel()
    _requeues[key] = loop.call_later(delay, lambda: asyncio.ensure_future(reconcile(namespace, name)))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never added: no change/delete handlers
    # Exact namespaces only, and the CRDs exist before we start: no cluster-wide
    # namespace/CRD scanning (a namespaced Role forbids it, and kopf would retry ~1 min).
    settings.scanning.disabled = True
    metrics.start_server()
    asyncio.get_running_loop().create_task(_resync_forever())


async def _resync_forever() -> None:
    """Safety net: level-based passes over every TaskFineTune, whatever events were missed."""
    while True:
        await asyncio.sleep(CONFIG.resync_seconds)
        try:
            items = await asyncio.to_thread(_list_all)
        except ApiException as err:
            metrics.ERRORS.labels(target="apiserver").inc()
            log.warning("resync list failed: %s", err.reason)
            continue
        for namespace, name in items:
            await reconcile(namespace, name)


def _list_all() -> list[tuple[str, str]]:
    """Every TaskFineTune we watch; per namespace when namespaced (a Role cannot list cluster-wide)."""
    custom = _client().custom
    if CONFIG.watch_namespaces:
        responses = [custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL) for ns in CONFIG.watch_namespaces]
    else:
        responses = [custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)]
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for r in responses for o in r.get("items", [])]  # type: ignore[attr-defined]


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_taskfinetune(**kwargs: Any) -> None:
    name, namespace = kwargs["name"], kwargs["namespace"]
    if kwargs["type"] == "DELETED":
        _locks.pop((namespace, name), None)
        if (handle := _requeues.pop((namespace, name), None)) is not None:
            handle.cancel()
        return
    await reconcile(namespace, name)


@kopf.on.event("ray.io", "v1", "rayjobs", labels={LABEL_MANAGED_BY: MANAGER})
async def on_rayjob(**kwargs: Any) -> None:
    parent = kwargs["labels"].get(LABEL_TFT)
    if parent:
        await reconcile(kwargs["namespace"], parent)
