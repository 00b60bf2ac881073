"""cluster.mode Shared: one RayCluster per TaskFineTune runs every sub-task's Ray job.
The planner's part (pure): when the cluster should exist, and which general-model key
its head carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anytasktune.actions import CreateCluster, DeleteCluster, Plan
from anytasktune.attempt import ObservedJob
from anytasktune.render import render_shared_cluster, shared_cluster_name
from anytasktune.spec import SubtaskPhase
from anytasktune.summary import Event
from anytasktune_contract.failures import FailureClass
from anytasktune_contract.trainspec import SecretKeyRef

if TYPE_CHECKING:
    from anytasktune.plan import Decision, Pool


def shared_compare_secret(pool: Pool, decisions: list[Decision]) -> SecretKeyRef | None:
    """The general model's key for the shared head, which holds one: a sub-task that names
    another Secret cannot run there and fails as an invalid spec."""
    if not pool.shared:
        return None
    secret: SecretKeyRef | None = None
    for d in decisions:
        own = d.resolved.compare_secret if d.resolved is not None else None
        if own is None:
            continue
        if secret is None:
            secret = own
        elif own != secret and d.wants_launch:
            d.wants_launch = False
            d.status.phase, d.status.reason = SubtaskPhase.Failed, "InvalidSpec"
            d.status.failureClass = FailureClass.InvalidSpec.value
            d.status.message = (f"cluster.mode Shared: evaluation.compareWith.apiKeySecret {own.name}/{own.key} differs from "
                                f"{secret.name}/{secret.key} of an earlier sub-task; the shared Ray head carries one key")
    return secret


def shared_cluster(pool: Pool, decisions: list[Decision], jobs: list[ObservedJob], secret: SecretKeyRef | None,
                   out: Plan) -> None:
    """The shared RayCluster exists while the pool has work: created before the first
    launch (KubeRay holds a RayJob in Initializing until its cluster is ready), deleted
    once no sub-task needs it, after the attempts on it are gone or going (their Ray jobs
    are stopped through the cluster's dashboard first)."""
    unfinished = any(d.status.phase not in (SubtaskPhase.Succeeded, SubtaskPhase.Failed) for d in decisions)
    needed = pool.shared and not pool.spec.suspend and unfinished
    cluster = pool.cluster
    name = shared_cluster_name(pool.name)
    if needed and cluster is None:
        out.actions.append(CreateCluster(name, render_shared_cluster(pool.name, pool.namespace, pool.uid, pool.spec, pool.config, secret)))
        out.events.append(Event("Normal", "ClusterCreated", f"Ray cluster {name} for the pool's sub-tasks"))
    elif not needed and cluster is not None and not cluster.deleting:
        if any(j.shared and not j.state.is_terminal and not j.deleting for j in jobs):
            return  # stopped this pass (suspension): their Ray jobs stop through the cluster first
        reason = "NotShared" if not pool.shared else ("Suspended" if pool.spec.suspend else "PoolFinished")
        out.actions.append(DeleteCluster(cluster.name, reason))
        out.events.append(Event("Normal", "ClusterDeleted", f"Ray cluster {cluster.name} deleted: {reason}"))
