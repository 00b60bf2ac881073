"""kopf handlers: the thin glue between watch events and the controller's work queue.

Run with `kopf run --standalone -m anytasktune.handlers --all-namespaces` (or
`anytasktune operator`). Only watch-event handlers are used, so kopf writes no
annotations and no finalizers on our objects: deleting a TaskFineTune can never
wedge, and its children go with it through ownerReferences. Every event only queues
a pass (`controller.Controller`); no handler calls the API server itself. RayJobs and
RayClusters are not watched through kopf: the controller's own list-then-watch cache
(`informer.py`) holds them and queues their parents.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from anytasktune import metrics
from anytasktune.config import OperatorConfig
from anytasktune.controller import Controller
from anytasktune.redact import protect_credentials
from anytasktune.spec import GROUP, PLURAL, VERSION


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    protect_credentials()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs "Handler ... succeeded." at INFO for every watch event: at scale that is
        # most of the operator's CPU and all of its log volume. Debug level keeps it.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never added: no change/delete handlers
    # Exact namespaces only, and the CRDs exist before we start: no cluster-wide
    # namespace/CRD scanning (a namespaced Role forbids it, and kopf would retry ~1 min).
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoChangeDetection()
    metrics.start_server(config.metrics_port)
    memo.controller = Controller(config)
    await memo.controller.start()


class NoChangeDetection(kopf.DiffBaseStorage):
    """kopf's change detection, for an operator without change handlers. kopf builds each
    event's "essence" for it all the same: a deep copy of the whole body (16.5 kB with a
    10-sub-task status), 3.5% of the operator's CPU at 300 TaskFineTunes. Here it is empty,
    and nothing is stored. Only right while the handlers are watch-event handlers alone
    (tests/unit/test_handlers.py checks that)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_taskfinetune(*, type: str, name: str, namespace: str | None, body: Mapping[str, Any], memo: Any, **_: Any) -> None:
    assert namespace is not None  # namespaced resource
    if type == "DELETED":
        memo.controller.forget(namespace, name)
        return
    memo.controller.remember(namespace, name, body)
    if not own_status_write(type, body):
        memo.controller.enqueue(namespace, name, exists=True)


def own_status_write(type: str | None, body: Mapping[str, Any]) -> bool:
    """A MODIFIED event that changed nothing but what a pass wrote (the status, for a
    generation already observed): a pass would find nothing to do. RayJob and RayCluster
    events, timed requeues and the resync bring every other change."""
    meta, status = body.get("metadata", {}), body.get("status") or {}
    return type == "MODIFIED" and not meta.get("deletionTimestamp") and meta.get("generation") == status.get("observedGeneration")
