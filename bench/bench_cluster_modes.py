"""Benchmark: a pool of 4 sub-tasks on the single-node cluster of `make cluster`, with
cluster.mode PerSubtask (each attempt starts and removes its own Ray cluster) against
Shared (one RayCluster for the pool), `maxParallelSubtasks: 2`, the tiny model.

For each run, from `kubectl apply`: the first training step of the pool (any sub-task),
the first step of every sub-task (the last of the four), every sub-task Succeeded with its
adapter and scores in the status, and, in Shared mode, the RayCluster deleted after. And
each attempt's start-up, from its RayJob's creation to its first step: for the two that
waited for a slot, that is what a shared cluster saves each later sub-task (and retry).
Modes alternate in rounds (P S, then S P, ...) so load from other jobs hits both alike;
ratios PerSubtask / Shared are printed per round, with their median and range.

Needs root and the cluster tier's setup, which it shares (tests/cluster/conftest.py):

    make bench-cluster-modes                  # BENCH_ROUNDS=2 by default
    .venv/bin/python -m pytest -p tests.cluster.conftest bench/bench_cluster_modes.py -s
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from ratios import median_range

from tests.cluster.conftest import RESTRICTED, Cluster
from tests.cluster.harness import STEP, TrainingData, items, status_of, taskfinetune, wait_for

MODES = ("PerSubtask", "Shared")
SUBTASKS = {"s1": "sentiment", "s2": "sentiment-b", "s3": "sentiment", "s4": "sentiment-b"}
pytestmark = pytest.mark.timeout(7200)  # rounds of ~3-4 min runs, after the tier's setup
METRICS = (("first_step_s", "first step (pool)"), ("all_stepped_s", "every sub-task stepped"),
           ("all_succeeded_s", "all Succeeded"), ("startup_s", "an attempt's start-up: its RayJob created -> its first step (median of 4)"),
           ("second_wave_startup_s", "the same, for the 2 that waited for a slot (median)"))


def subtask_of(job: str) -> str:
    """The sub-task of a RayJob (or of its submitter Job, which KubeRay names the same): pool-<sub-task>-<attempt>."""
    return job.removeprefix("pool-").rpartition("-")[0]


def _first_steps(cluster: Cluster, namespace: str, seen: dict[str, float], t0: float) -> None:
    """Record when each sub-task's driver log first shows a step: KubeRay's submitter Job,
    named as its RayJob (`pool-<sub-task>-<attempt>`), follows `ray job logs`."""
    kube = cluster.kube
    for job in kube.get("jobs", namespace=namespace)["items"]:
        name = job["metadata"]["name"]
        sub = subtask_of(name)
        if sub in SUBTASKS and sub not in seen and STEP.search(kube.logs(namespace, f"job/{name}")):
            seen[sub] = time.monotonic() - t0


def one_run(cluster: Cluster, s3: Any, data: TrainingData, image: str, mode: str, n: int) -> dict[str, Any]:
    """One pool in a fresh namespace, removed after (also when the run fails or is interrupted:
    a pool left running would take the next run's CPUs)."""
    kube = cluster.kube
    namespace = f"bench-{mode.lower()}-{n}"
    kube.delete_namespace(namespace)
    try:
        return _one_run_in(cluster, s3, data, image, mode, n, namespace)
    finally:
        kube.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", timeout=400, check=False)


def _one_run_in(cluster: Cluster, s3: Any, data: TrainingData, image: str, mode: str, n: int, namespace: str) -> dict[str, Any]:
    kube = cluster.kube
    kube.namespace(namespace, RESTRICTED)
    wait_for("the default ServiceAccount", lambda: kube.get("serviceaccount", "default", namespace, check=False), timeout=60)
    kube.secret(namespace, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    tft = taskfinetune("pool", namespace, data=data, endpoint=s3.endpoint, subtasks=SUBTASKS, image=image, mode=mode)
    seen: dict[str, float] = {}
    t0, wall0 = time.monotonic(), time.time()
    kube.apply(tft)

    def done() -> dict[str, Any] | None:
        _first_steps(cluster, namespace, seen, t0)
        status = status_of(kube, "pool", namespace)
        if status.get("phase") in ("Failed", "Invalid"):
            raise AssertionError(f"{mode} run {n} failed: {status}")
        subs = status.get("subtasks", [])
        ready = status.get("phase") == "Succeeded" and all(s.get("adapter") and s.get("metrics") for s in subs)
        return status if ready and len(seen) == len(SUBTASKS) else None

    wait_for(f"{mode} pool to succeed", done, timeout=1800, interval=2)
    result = {"mode": mode, "first_step_s": min(seen.values()), "all_stepped_s": max(seen.values()),
              "all_succeeded_s": time.monotonic() - t0}
    # When each attempt was launched (its RayJob's creation; the API server's clock is this host's).
    created = {subtask_of(j["metadata"]["name"]):
               datetime.strptime(j["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() - wall0
               for j in kube.get("rayjobs", namespace=namespace)["items"]}
    startups = sorted((seen[sub] - created[sub], created[sub]) for sub in SUBTASKS)
    result["startup_s"] = statistics.median(s for s, _ in startups)
    result["second_wave_startup_s"] = statistics.median(s for s, c in sorted(startups, key=lambda x: x[1])[2:])
    if mode == "Shared":
        wait_for("the shared RayCluster deleted", lambda: not items(kube, "rayclusters", namespace) or None, timeout=300)
        result["cluster_gone_s"] = time.monotonic() - t0
    print(f"  {mode:<10} run {n}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items() if k != "mode"), flush=True)
    return result


def test_bench_cluster_modes(cluster: Cluster, operator: str, images: dict[str, str], s3: Any,
                             training_data: TrainingData) -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        runs += [one_run(cluster, s3, training_data, images["TRAINJOB_IMAGE"], mode, r) for mode in order]
    table = ["", "| metric (from kubectl apply) | PerSubtask median (s) | Shared median (s) | PerSubtask / Shared, median (range) |",
             "|---|---|---|---|"]
    for key, label in METRICS:
        per = [x[key] for x in runs if x["mode"] == "PerSubtask"]
        shared = [x[key] for x in runs if x["mode"] == "Shared"]
        ratios = [p / s for p, s in zip(per, shared, strict=True)]  # within a round
        table.append(f"| {label} | {statistics.median(per):.1f} | {statistics.median(shared):.1f} | "
                     f"{median_range(ratios)} |")
    gone = [x["cluster_gone_s"] - x["all_succeeded_s"] for x in runs if "cluster_gone_s" in x]
    table.append(f"\nShared: RayCluster deleted {statistics.median(gone):.1f} s (median) after the pool's last result; "
                 f"{rounds} round(s), load average {os.getloadavg()[0]:.1f} at the end.")
    print("\n".join(table), flush=True)
