"""The children cache without an API server: the store is exactly the last LIST plus the
events after it, and a pass is told to LIST while one of its own writes is not yet in it."""

from __future__ import annotations

from typing import Any

import pytest

from anytasktune import metrics
from anytasktune.actions import ObservedCluster
from anytasktune.attempt import ObservedJob
from anytasktune.informer import EXPECTATION_TTL, Bodies, CachedCluster, ChildCache, Reflector, Store, Want, assemble, cluster_record, job_record, met
from anytasktune.render import LABEL_MANAGED_BY, LABEL_SHARED_CLUSTER, LABEL_SUBTASK, LABEL_TFT, MANAGER


def rayjob(name: str, parent: str = "t", ns: str = "ns", *, suspend: bool = False, deleting: bool = False, **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_TFT: parent, LABEL_SUBTASK: name.split("-")[1]}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    return {"metadata": meta, "spec": {"suspend": suspend}, "status": status}


def raycluster(name: str, parent: str = "t", ns: str = "ns", *, origin: str = "", shared: bool = False, deleting: bool = False) -> dict[str, Any]:
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_TFT: parent}
    if origin:
        labels["ray.io/originated-from-cr-name"] = origin
    if shared:
        labels[LABEL_SHARED_CLUSTER] = "true"
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    return {"metadata": meta}


def test_store_follows_events_and_a_list_replaces_only_its_namespace() -> None:
    store = Store("rayjob", job_record)
    assert store.apply("ADDED", rayjob("t-a-1")) == ("ns", "t")
    store.apply("ADDED", rayjob("t-b-1"))
    store.apply("ADDED", rayjob("u-a-1", parent="u", ns="other"))
    store.apply("MODIFIED", rayjob("t-a-1", jobStatus="RUNNING"))
    assert store.children(("ns", "t"))["t-a-1"].job_status == "RUNNING"
    store.apply("DELETED", rayjob("t-b-1"))
    assert set(store.children(("ns", "t"))) == {"t-a-1"}
    # A re-LIST of "ns" (after a 410 Gone) that no longer has t-a-1 (deleted while the
    # watch was down: no DELETED event ever came) drops it; "other" is left alone.
    touched = store.replace("ns", [rayjob("t-c-1"), rayjob("v-a-1", parent="v")])
    assert touched == {("ns", "t"), ("ns", "v")}
    assert set(store.children(("ns", "t"))) == {"t-c-1"} and set(store.children(("ns", "v"))) == {"v-a-1"}
    assert set(store.children(("other", "u"))) == {"u-a-1"}
    store.replace("", [])  # a cluster-wide LIST replaces everything
    assert len(store) == 0 and store.children(("other", "u")) == {}


def test_an_event_that_changes_nothing_a_pass_reads_queues_no_pass() -> None:
    """KubeRay rewrites a RayJob's status on every change of its RayCluster's: the same
    record again is no reason for a pass (the planner would plan the same)."""
    store = Store("rayjob", job_record)
    before = metrics.CHILD_EVENTS.labels(kind="rayjob", changed="false")._value.get()
    assert store.apply("ADDED", rayjob("t-a-1", jobDeploymentStatus="Running")) == ("ns", "t")
    cluster_status = rayjob("t-a-1", jobDeploymentStatus="Running", rayClusterStatus={"state": "ready"})
    assert store.apply("MODIFIED", cluster_status) is None
    assert metrics.CHILD_EVENTS.labels(kind="rayjob", changed="false")._value.get() == before + 1
    assert store.apply("MODIFIED", rayjob("t-a-1", jobDeploymentStatus="Running", suspend=True)) == ("ns", "t")
    assert store.apply("MODIFIED", rayjob("t-a-1", jobDeploymentStatus="Complete", suspend=True)) == ("ns", "t")
    assert store.apply("DELETED", rayjob("t-a-1")) == ("ns", "t")
    assert store.apply("DELETED", rayjob("t-a-1")) is None  # already gone
    clusters = Store("raycluster", cluster_record)
    assert clusters.apply("ADDED", raycluster("t-ray", origin="t-a-1")) == ("ns", "t")
    assert clusters.apply("MODIFIED", raycluster("t-ray", origin="t-a-1")) is None  # its readiness: not read
    assert clusters.apply("MODIFIED", raycluster("t-ray", origin="t-a-1", deleting=True)) == ("ns", "t")


def test_store_ignores_objects_without_a_parent_label() -> None:
    store = Store("rayjob", job_record)
    orphan = rayjob("x-a-1")
    del orphan["metadata"]["labels"][LABEL_TFT]
    assert store.apply("ADDED", orphan) is None and len(store) == 0


JOB, GONE_JOB = job_record(rayjob("t-a-1")), job_record(rayjob("t-a-1", deleting=True))
SUSPENDED = job_record(rayjob("t-a-1", suspend=True))
CLUSTER = cluster_record(raycluster("t-ray", shared=True))


@pytest.mark.parametrize(("want", "record", "expected"), [
    (Want.JobExists, None, False),
    (Want.JobExists, JOB, True),
    (Want.JobExists, GONE_JOB, False),  # the old attempt of that name, still going away
    (Want.JobGone, JOB, False),
    (Want.JobGone, GONE_JOB, True),  # KubeRay's finalizer: being deleted is gone enough
    (Want.JobGone, None, True),
    (Want.JobSuspended, JOB, False),
    (Want.JobSuspended, SUSPENDED, True),
    (Want.JobSuspended, None, True),  # deleted meanwhile: nothing more will come
    (Want.JobResumed, SUSPENDED, False),
    (Want.JobResumed, JOB, True),
    (Want.ClusterExists, None, False),
    (Want.ClusterExists, CLUSTER, True),
    (Want.ClusterGone, CLUSTER, False),
    (Want.ClusterGone, None, True),
])
def test_when_a_write_counts_as_seen(want: Want, record: Any, expected: bool) -> None:
    assert met(want, record) is expected


def test_assemble_marks_jobs_whose_own_cluster_is_up_and_finds_the_shared_one() -> None:
    jobs = [job_record(rayjob("t-b-1")), job_record(rayjob("t-a-1"))]
    clusters = [CachedCluster("t-a-1-raycluster-x", "t-a-1", False, False), CachedCluster("t-ray", "", True, True)]
    observed, own, shared = assemble(jobs, clusters)
    assert [(j.name, j.cluster_alive) for j in observed] == [("t-a-1", True), ("t-b-1", False)]
    assert own == {"t-a-1": "t-a-1-raycluster-x"} and shared == ObservedCluster("t-ray", deleting=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def synced_cache(clock: Clock) -> ChildCache:
    cache = ChildCache(custom=None, namespaces=("ns",), notify=lambda ns, name: None, clock=clock)
    for reflector in cache.reflectors:
        reflector.synced.set()  # as after each reflector's first LIST
    return cache


def test_no_answer_before_every_reflector_has_listed_once() -> None:
    cache = ChildCache(custom=None, namespaces=("a", "b"), notify=lambda ns, name: None)
    assert len(cache.reflectors) == 4  # RayJobs and RayClusters, per watched namespace
    for reflector in cache.reflectors[:3]:
        reflector.synced.set()
    assert cache.observe("a", "t") is None
    cache.reflectors[3].synced.set()
    assert cache.observe("a", "t") == ([], {}, None)


def test_a_pass_lists_until_its_own_launches_are_in_the_cache() -> None:
    """The maxParallelSubtasks guarantee: a pass that ran before the watch delivered the
    RayJob the last pass created would see a free slot and launch one more."""
    clock = Clock()
    cache = synced_cache(clock)
    cache.jobs.apply("ADDED", rayjob("t-a-1"))
    cache.expect(("ns", "t"), Want.JobExists, "t-b-1")
    assert cache.observe("ns", "t") is None
    assert cache.observe("ns", "u") == ([], {}, None)  # other TaskFineTunes are not held up
    cache.jobs.apply("ADDED", rayjob("t-b-1"))
    jobs, _, _ = cache.observe("ns", "t") or ([], {}, None)
    assert [j.name for j in jobs] == ["t-a-1", "t-b-1"]


def test_deletes_suspends_and_clusters_are_expected_too() -> None:
    clock = Clock()
    cache = synced_cache(clock)
    cache.jobs.apply("ADDED", rayjob("t-a-1"))
    cache.clusters.apply("ADDED", raycluster("t-ray", shared=True))
    cache.expect(("ns", "t"), Want.JobSuspended, "t-a-1")
    cache.expect(("ns", "t"), Want.ClusterGone, "t-ray")
    assert cache.observe("ns", "t") is None
    cache.jobs.apply("MODIFIED", rayjob("t-a-1", suspend=True))
    assert cache.observe("ns", "t") is None  # the cluster is still there
    cache.clusters.apply("MODIFIED", raycluster("t-ray", shared=True, deleting=True))
    observed = cache.observe("ns", "t")
    assert observed is not None and observed[2] == ObservedCluster("t-ray", deleting=True)


def test_a_failed_write_is_withdrawn_and_a_never_seen_one_lapses() -> None:
    clock = Clock()
    cache = synced_cache(clock)
    failed = cache.expect(("ns", "t"), Want.JobExists, "t-a-1")
    cache.withdraw(("ns", "t"), failed)
    assert cache.observe("ns", "t") == ([], {}, None)
    cache.expect(("ns", "t"), Want.JobExists, "t-b-1")  # created, then deleted by someone before we saw it
    clock.now += EXPECTATION_TTL - 1
    assert cache.observe("ns", "t") is None
    clock.now += 2
    assert cache.observe("ns", "t") == ([], {}, None)


def test_forgetting_a_taskfinetune_drops_its_expectations() -> None:
    cache = synced_cache(Clock())
    cache.expect(("ns", "t"), Want.JobExists, "t-a-1")
    cache.forget(("ns", "t"))
    assert cache.observe("ns", "t") == ([], {}, None)


def test_the_cache_answers_what_a_list_would() -> None:
    """The same assembly as KubeClient.observe: jobs sorted, own clusters marked."""
    cache = synced_cache(Clock())
    cache.jobs.replace("ns", [rayjob("t-b-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"), rayjob("t-a-1")])
    cache.clusters.replace("ns", [raycluster("t-b-1-raycluster-q", origin="t-b-1")])
    observed = cache.observe("ns", "t")
    assert observed is not None
    jobs, own, shared = observed
    expected = [ObservedJob.from_object(rayjob("t-a-1")),
                ObservedJob.from_object(rayjob("t-b-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"), frozenset({"t-b-1"}))]
    assert jobs == expected and own == {"t-b-1": "t-b-1-raycluster-q"} and shared is None


def tft_body(version: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": "t", "namespace": "ns", "resourceVersion": version}, "status": {"phase": phase}}


def test_a_body_is_handed_out_once_the_event_of_our_own_status_write_is_in() -> None:
    """Else the pass would plan from the status before the last pass's write and post
    that pass's Events again."""
    clock = Clock()
    bodies = Bodies(clock)
    assert bodies.get(("ns", "t")) is None  # nothing yet: the pass GETs
    bodies.remember(("ns", "t"), tft_body("5", "Pending"))
    assert bodies.get(("ns", "t")) == tft_body("5", "Pending")
    bodies.wrote(("ns", "t"), "6")
    assert bodies.get(("ns", "t")) is None
    bodies.remember(("ns", "t"), tft_body("6"))
    assert bodies.get(("ns", "t")) == tft_body("6")
    bodies.wrote(("ns", "t"), "6")  # a PATCH that changed nothing: same version, no event to wait for
    assert bodies.get(("ns", "t")) == tft_body("6")


def test_a_write_made_before_the_watch_delivered_anything_still_holds_back_the_older_body() -> None:
    """An operator's first pass after a start GETs the TaskFineTune and writes its status
    before kopf's watch has delivered it; the watch's first event may then carry the status
    from before that write. Planning from it posted the first pass's Events again (seen
    in a SIGKILL trial under load: SubtaskFailed twice)."""
    clock = Clock()
    bodies = Bodies(clock)
    bodies.wrote(("ns", "t"), "6")  # the first pass: GET, then a status PATCH -> 6
    bodies.remember(("ns", "t"), tft_body("5", "Pending"))  # the watch starts with the older object
    assert bodies.get(("ns", "t")) is None  # the next pass GETs it instead
    bodies.remember(("ns", "t"), tft_body("6"))
    assert bodies.get(("ns", "t")) == tft_body("6")


def test_a_write_whose_event_never_comes_lapses_and_copies_are_private() -> None:
    clock = Clock()
    bodies = Bodies(clock)
    bodies.remember(("ns", "t"), tft_body("5"))
    bodies.wrote(("ns", "t"), "6")  # a re-list after a 410 went straight to version 7
    bodies.remember(("ns", "t"), tft_body("7"))
    assert bodies.get(("ns", "t")) is None
    clock.now += EXPECTATION_TTL + 1
    got = bodies.get(("ns", "t"))
    assert got == tft_body("7")
    got["status"]["phase"] = "changed by a pass"
    assert bodies.get(("ns", "t")) == tft_body("7")


def test_the_resync_finds_bodies_of_taskfinetunes_deleted_while_the_watch_was_down() -> None:
    clock = Clock()
    bodies = Bodies(clock)
    bodies.remember(("ns", "gone"), tft_body("1"))
    bodies.remember(("ns", "kept"), tft_body("2"))
    clock.now += 1
    listed_at = bodies.now()
    clock.now += 1
    bodies.remember(("ns", "new"), tft_body("3"))  # created after the LIST was served
    assert bodies.stale({("ns", "kept")}, listed_at) == [("ns", "gone")]
    bodies.forget(("ns", "gone"))
    assert bodies.get(("ns", "gone")) is None


def test_a_reflector_lists_every_page_into_the_store_and_goes_on_from_that_list() -> None:
    """A LIST of more than PAGE objects comes in pages (continue tokens); the store gets all
    of them, and the watch starts from the LIST's resourceVersion."""

    class Pages:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def list_cluster_custom_object(self, group: str, version: str, plural: str, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(kwargs)
            if kwargs.get("_continue") is None:
                return {"metadata": {"resourceVersion": "42", "continue": "next"}, "items": [rayjob("t-a-1"), rayjob("t-b-1")]}
            return {"metadata": {"resourceVersion": "42"}, "items": [rayjob("u-a-1", parent="u")]}

    api = Pages()
    store = Store("rayjob", job_record)
    store.apply("ADDED", rayjob("t-gone-1"))  # deleted while no watch ran: the LIST drops it
    queued: list[tuple[str, str]] = []
    reflector = Reflector(api, "rayjobs", "", store, lambda ns, name: queued.append((ns, name)))
    assert reflector._list() == "42"
    assert [c.get("_continue") for c in api.calls] == [None, "next"]
    assert set(store.children(("ns", "t"))) == {"t-a-1", "t-b-1"} and set(store.children(("ns", "u"))) == {"u-a-1"}
    assert sorted(queued) == [("ns", "t"), ("ns", "u")]
