"""Prometheus metrics of the operator (served on ANYTASKTUNE_METRICS_PORT, default 8080)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from anytasktune.spec import SubtaskPhase, TaskFineTuneStatus

SUBTASKS = Gauge(
    "anytasktune_subtasks", "Sub-tasks by phase", ["namespace", "taskfinetune", "phase"]
)
RAYJOBS_CREATED = Counter("anytasktune_rayjobs_created_total", "RayJobs created by the operator")
RETRIES = Counter("anytasktune_retries_total", "Sub-task attempts relaunched, by failure class", ["failure_class"])
RECONCILE_SECONDS = Histogram("anytasktune_reconcile_duration_seconds", "Duration of one reconcile pass")
ERRORS = Counter("anytasktune_errors_total", "Errors talking to the API server or S3", ["target"])
CHILD_READS = Counter("anytasktune_child_reads_total",
                      "Reconcile passes by where they read the RayJobs and RayClusters: cache or list", ["source"])
QUEUE_DEPTH = Gauge("anytasktune_workqueue_depth", "TaskFineTunes waiting for a reconcile pass (due now, not yet started)")
# From the moment a pass is due (an event, a finished manifest read, a timer firing) to its start:
# with the pass's own duration, the delay a user sees between a change and the status showing it.
QUEUE_WAIT_SECONDS = Histogram("anytasktune_workqueue_wait_seconds",
                               "Time a TaskFineTune's reconcile pass waited in the queue before it started",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
# What made each pass due: how many passes a RayJob costs, and which cause to cut first.
PASSES = Counter("anytasktune_reconcile_passes_total",
                 "Reconcile passes started, by what made each due first: taskfinetune, child, read, timer, retry or resync",
                 ["trigger"])
# RayJob and RayCluster events that left what a pass reads unchanged (KubeRay's
# rayClusterStatus updates, a RayCluster's readiness) queue no pass.
CHILD_EVENTS = Counter("anytasktune_child_events_total",
                       "RayJob and RayCluster watch events, by kind and whether they changed what a pass reads",
                       ["kind", "changed"])
# Reads not sent because their S3 endpoint failed the reads before them (storagereads.py).
READS_HELD = Counter("anytasktune_manifest_reads_held_total",
                     "Manifest reads failed without being sent: their S3 endpoint failed the reads before them")

ALL_METRICS = ("anytasktune_subtasks", "anytasktune_rayjobs_created_total", "anytasktune_retries_total",
               "anytasktune_reconcile_duration_seconds", "anytasktune_errors_total", "anytasktune_child_reads_total",
               "anytasktune_workqueue_depth", "anytasktune_workqueue_wait_seconds",
               "anytasktune_reconcile_passes_total", "anytasktune_child_events_total",
               "anytasktune_manifest_reads_held_total")


def observe_status(namespace: str, name: str, status: TaskFineTuneStatus) -> None:
    for phase in SubtaskPhase:
        count = sum(1 for s in status.subtasks if s.phase == phase)
        SUBTASKS.labels(namespace=namespace, taskfinetune=name, phase=phase.value).set(count)


def forget_status(namespace: str, name: str) -> None:
    """Drop a deleted TaskFineTune's series (else they report its sub-tasks forever)."""
    for phase in SubtaskPhase:
        SUBTASKS.remove(namespace, name, phase.value)


def start_server(port: int) -> None:
    if port > 0:
        start_http_server(port)
