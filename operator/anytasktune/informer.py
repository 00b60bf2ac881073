"""A list-then-watch cache of the operator's RayJobs and RayClusters, so a pass reads a
TaskFineTune's children from memory instead of LISTing them (a third of a pass's time,
and the request that grows with every RayJob's two pod templates).

- **Exact.** Each reflector LISTs (in pages) and *replaces* its part of the store, then
  WATCHes from that LIST's resourceVersion and applies every event. A 410 Gone, a
  dropped or failing watch re-LISTs, so an object deleted while the watch was down
  cannot linger (kopf's watch keeps such ghosts; this is why the operator keeps its own).
- **Small.** A RayJob is kept as its `ObservedJob`, a RayCluster as a `CachedCluster`; an
  event that leaves that record as it was queues no pass.
- **Used only when it is safe** (`ChildCache.observe` returns None otherwise and the
  pass LISTs, as before):
  - until every reflector has LISTed once;
  - while one of the pass's own writes is not yet in the store: the executor records an
    expectation before each create, delete and suspend patch (client-go's
    `ControllerExpectations`), else a pass right after a launch would not see the RayJob it
    created and could launch past `maxParallelSubtasks`. One never met (an object deleted
    by someone else first) lapses after `EXPECTATION_TTL` seconds.
- **The TaskFineTunes** are not watched here: `Bodies` keeps what kopf's watch delivered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from anytasktune import metrics
from anytasktune.actions import ObservedCluster
from anytasktune.attempt import ObservedJob
from anytasktune.render import LABEL_MANAGED_BY, LABEL_SHARED_CLUSTER, LABEL_TFT, MANAGER
from anytasktune_contract.backoff import Backoff

log = logging.getLogger("anytasktune")
RAY = ("ray.io", "v1")
# KubeRay labels the RayCluster it creates for a RayJob with the RayJob's name.
ORIGINATED_FROM = "ray.io/originated-from-cr-name"
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"
PAGE = 500  # objects per LIST page: bounds the memory of a re-LIST of 10,000 RayJobs
WATCH_SECONDS = 300
EXPECTATION_TTL = 60.0
RELIST_BACKOFF = Backoff(0.5, 5.0)  # short: until it lists again, passes read what it last saw
Key = tuple[str, str]  # (namespace, TaskFineTune)
Children = tuple[list[ObservedJob], dict[str, str], ObservedCluster | None]


@dataclass(frozen=True)
class CachedCluster:
    name: str
    origin: str  # the RayJob KubeRay made it for ("" for the shared cluster)
    shared: bool
    deleting: bool


def job_record(obj: Mapping[str, Any]) -> ObservedJob:
    return ObservedJob.from_object(obj)


def cluster_record(obj: Mapping[str, Any]) -> CachedCluster:
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    return CachedCluster(meta.get("name", ""), labels.get(ORIGINATED_FROM, ""),
                         labels.get(LABEL_SHARED_CLUSTER) == "true", bool(meta.get("deletionTimestamp")))


def assemble(jobs: Iterable[ObservedJob], clusters: Iterable[CachedCluster]) -> Children:
    """A TaskFineTune's RayJobs (each marked whether its own RayCluster is still up), RayJob
    name -> that RayCluster's name, and the shared RayCluster if there is one."""
    own: dict[str, str] = {}
    shared: ObservedCluster | None = None
    for cluster in clusters:
        if cluster.shared:
            shared = ObservedCluster(cluster.name, deleting=cluster.deleting)
        elif cluster.origin:
            own[cluster.origin] = cluster.name
    marked = [replace(j, cluster_alive=True) if j.name in own else j for j in jobs]
    return sorted(marked, key=lambda j: j.name), own, shared


class Store:
    """(namespace, name) -> (parent TaskFineTune, record), indexed by parent. Thread-safe."""

    def __init__(self, kind: str, record: Callable[[Mapping[str, Any]], Any]) -> None:
        self._events = {changed: metrics.CHILD_EVENTS.labels(kind=kind, changed=str(changed).lower()) for changed in (True, False)}
        self._record = record
        self._items: dict[tuple[str, str], tuple[str, Any]] = {}
        self._by_parent: dict[Key, set[str]] = {}
        self._lock = threading.Lock()

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> Key | None:
        """One watch event; the parent whose pass it concerns. None: not one of ours, or no
        change in its record (KubeRay rewrites a RayJob's status on every change of its
        RayCluster's; a pass over the same records would plan the same)."""
        meta = obj.get("metadata", {})
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        parent = (meta.get("labels") or {}).get(LABEL_TFT, "")
        record = self._record(obj) if event_type != "DELETED" and parent else None
        with self._lock:
            old = self._remove((namespace, name))
            if record is not None:
                self._put(namespace, name, parent, record)
        if not parent:
            return None
        changed = old != ((parent, record) if record is not None else None)
        self._events[changed].inc()  # bound once: this runs for every watch event
        return (namespace, parent) if changed else None

    def replace(self, namespace: str, objects: Iterable[Mapping[str, Any]]) -> set[Key]:
        """A LIST's result replaces everything held for `namespace` ("" = every namespace);
        the parents whose children may have changed."""
        fresh = []  # records only: a LIST's objects (two pod templates each) are dropped page by page
        for o in objects:
            meta = o["metadata"]
            if parent := (meta.get("labels") or {}).get(LABEL_TFT, ""):
                fresh.append((meta.get("namespace", ""), meta["name"], parent, self._record(o)))
        with self._lock:
            touched = {(ns, p) for (ns, _), (p, _) in self._items.items() if not namespace or ns == namespace}
            for key in [k for k in self._items if not namespace or k[0] == namespace]:
                self._remove(key)
            for ns, name, parent, record in fresh:
                self._put(ns, name, parent, record)
                touched.add((ns, parent))
        return touched

    def children(self, key: Key) -> dict[str, Any]:
        with self._lock:
            return {name: self._items[(key[0], name)][1] for name in self._by_parent.get(key, ())}

    def get(self, namespace: str, name: str) -> Any | None:
        with self._lock:
            item = self._items.get((namespace, name))
            return None if item is None else item[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _put(self, namespace: str, name: str, parent: str, record: Any) -> None:
        self._items[(namespace, name)] = (parent, record)
        self._by_parent.setdefault((namespace, parent), set()).add(name)

    def _remove(self, key: tuple[str, str]) -> tuple[str, Any] | None:
        old = self._items.pop(key, None)
        if old is not None:
            siblings = self._by_parent.get((key[0], old[0]))
            if siblings is not None:
                siblings.discard(key[1])
                if not siblings:
                    del self._by_parent[(key[0], old[0])]
        return old


class Want(str, Enum):
    """What one of our own writes will look like in the store once its event arrives."""

    JobExists = "JobExists"  # created: present and not being deleted
    JobGone = "JobGone"  # deleted: absent or being deleted
    JobSuspended = "JobSuspended"  # spec.suspend patched to true
    JobResumed = "JobResumed"  # spec.suspend patched to false
    ClusterExists = "ClusterExists"
    ClusterGone = "ClusterGone"


def met(want: Want, record: ObservedJob | CachedCluster | None) -> bool:
    """Whether the store's record (None: absent) shows the write."""
    match want:
        case Want.JobExists | Want.ClusterExists:
            return record is not None and not record.deleting
        case Want.JobGone | Want.ClusterGone:
            return record is None or record.deleting
        case Want.JobSuspended:
            return record is None or (isinstance(record, ObservedJob) and record.suspend)
        case Want.JobResumed:
            return record is None or (isinstance(record, ObservedJob) and not record.suspend)


@dataclass(frozen=True)
class Expectation:
    want: Want
    name: str
    deadline: float


class ChildCache:
    """The RayJob and RayCluster stores, their reflectors, and the pass's expectations."""

    def __init__(self, custom: Any, namespaces: tuple[str, ...], notify: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = Store("rayjob", job_record)
        self.clusters = Store("raycluster", cluster_record)
        self._clock = clock
        self._expected: dict[Key, list[Expectation]] = {}
        self._lock = threading.Lock()
        scopes = namespaces or ("",)
        self.reflectors = [Reflector(custom, plural, ns, store, notify)
                           for plural, store in (("rayjobs", self.jobs), ("rayclusters", self.clusters)) for ns in scopes]

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def expect(self, key: Key, want: Want, name: str) -> Expectation:
        expectation = Expectation(want, name, self._clock() + EXPECTATION_TTL)
        with self._lock:
            self._expected.setdefault(key, []).append(expectation)
        return expectation

    def withdraw(self, key: Key, expectation: Expectation) -> None:
        """The write failed: nothing will arrive."""
        with self._lock:
            pending = self._expected.get(key, [])
            if expectation in pending:
                pending.remove(expectation)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._expected.pop(key, None)

    def _settled(self, key: Key) -> bool:
        """Drop the expectations the store meets (or that lapsed); True when none is left."""
        now = self._clock()
        with self._lock:
            pending = [e for e in self._expected.get(key, []) if e.deadline > now and not met(e.want, self._record(key[0], e))]
            if pending:
                self._expected[key] = pending
            else:
                self._expected.pop(key, None)
            return not pending

    def _record(self, namespace: str, e: Expectation) -> Any:
        store = self.clusters if e.want in (Want.ClusterExists, Want.ClusterGone) else self.jobs
        return store.get(namespace, e.name)

    def observe(self, namespace: str, tft: str) -> Children | None:
        """What `KubeClient.observe` returns, from memory; None when the cache may be behind."""
        key = (namespace, tft)
        if not self.synced or not self._settled(key):
            return None
        return assemble(self.jobs.children(key).values(), self.clusters.children(key).values())


def list_pages(custom: Any, group: str, version: str, plural: str, namespace: str, **options: Any) -> Iterator[dict[str, Any]]:
    """LIST one plural in one namespace ("" = all) in pages of `PAGE`, following the
    `continue` token; each page as the API server returns it."""
    token: str | None = None
    while True:
        paged = {**options, "limit": PAGE, **({"_continue": token} if token else {})}
        if namespace:
            page = custom.list_namespaced_custom_object(group, version, namespace, plural, **paged)
        else:
            page = custom.list_cluster_custom_object(group, version, plural, **paged)
        yield page
        if not (token := page["metadata"].get("continue")):
            return


class Reflector:
    """LIST then WATCH one plural in one namespace ("" = all) into a store, forever."""

    def __init__(self, custom: Any, plural: str, namespace: str, store: Store, notify: Callable[[str, str], None]) -> None:
        self.custom, self.plural, self.namespace, self.store, self.notify = custom, plural, namespace, store, notify
        self.synced = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{plural}-{namespace or 'all'}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _call(self, **kwargs: Any) -> Any:
        if self.namespace:
            return self.custom.list_namespaced_custom_object(*RAY, self.namespace, self.plural, label_selector=SELECTOR, **kwargs)
        return self.custom.list_cluster_custom_object(*RAY, self.plural, label_selector=SELECTOR, **kwargs)

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                version: str | None = self._list()
                self.synced.set()
                failures = 0
                while not self._stopped.is_set() and version is not None:
                    version = self._watch(version)
            except Exception as err:  # noqa: BLE001 - a reflector survives API server restarts
                failures += 1
                delay = RELIST_BACKOFF.delay(failures)
                log.warning("%s watch failed (%d in a row), listing again in %.0fs: %s: %s",
                            self.plural, failures, delay, type(err).__name__, err)
                self._stopped.wait(delay)

    def _list(self) -> str:
        """LIST in pages into the store; the resourceVersion of that LIST (one snapshot)."""
        version: list[str] = []

        def items() -> Iterator[Mapping[str, Any]]:
            for page in list_pages(self.custom, *RAY, self.plural, self.namespace, label_selector=SELECTOR):
                version[:] = [page["metadata"]["resourceVersion"]]
                yield from page.get("items", [])

        for key in self.store.replace(self.namespace, items()):
            self.notify(*key)
        return version[0]

    def _watch(self, version: str) -> str | None:
        """Apply events from `version` on; the version to go on from, None to re-LIST (410 Gone)."""
        from kubernetes.watch.watch import iter_resp_lines

        resp = self._call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_SECONDS, _preload_content=False, _request_timeout=(10, WATCH_SECONDS + 30))
        try:
            for line in iter_resp_lines(resp):
                if self._stopped.is_set():
                    return None
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED") and (key := self.store.apply(kind, obj)) is not None:
                    self.notify(*key)
        finally:
            resp.release_conn()
        return version


class Bodies:
    """The TaskFineTunes as kopf's watch delivered them, so that a pass need not GET its own.

    - A body is handed out only once the event of the operator's own last status write
      for it has arrived: a pass that planned from an older status would repeat the last
      pass's Events. That write's event carries exactly the resourceVersion its PATCH
      returned; one that never comes (a re-list after a 410 skips it) lapses after
      `EXPECTATION_TTL` seconds.
    - The controller GETs each TaskFineTune on its first pass since the operator started.
    - kopf's watch keeps an object deleted while the watch was down, so the resync drops
      the bodies its LIST no longer finds (`stale`).
    - Kept as compact JSON, without managedFields: a pass may change what it is given, and
      a JSON round trip is both smaller to hold and several times faster than a deep copy.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bodies: dict[Key, tuple[str, str | None, float]] = {}  # JSON, resourceVersion, when
        self._written: dict[Key, tuple[str, float]] = {}  # resourceVersion of our last status write, and when
        self._lock = threading.Lock()

    def remember(self, key: Key, body: Mapping[str, Any]) -> None:
        metadata = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
        kept = {**{k: body[k] for k in body}, "metadata": metadata}
        text, version = json.dumps(kept, separators=(",", ":")), metadata.get("resourceVersion")
        with self._lock:
            self._bodies[key] = (text, version, self._clock())
            if (written := self._written.get(key)) is not None and written[0] == version:
                del self._written[key]

    def wrote(self, key: Key, version: str | None) -> None:
        """A pass's status PATCH returned this resourceVersion. Also when no event has come
        yet (the first pass GETs): the watch's first may then be older than the write."""
        with self._lock:
            body = self._bodies.get(key)
            if version and (body is None or body[1] != version):
                self._written[key] = (version, self._clock())

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            written = self._written.get(key)
            if written is not None and self._clock() - written[1] < EXPECTATION_TTL:
                return None
            body = self._bodies.get(key)
        return None if body is None else json.loads(body[0])  # type: ignore[no-any-return]

    def forget(self, key: Key) -> None:
        with self._lock:
            self._bodies.pop(key, None)
            self._written.pop(key, None)

    def stale(self, listed: set[Key], listed_at: float) -> list[Key]:
        """Bodies remembered before a LIST (started at `listed_at`) that it did not find."""
        with self._lock:
            return [key for key, (_, _, at) in self._bodies.items() if at < listed_at and key not in listed]

    def now(self) -> float:
        return self._clock()
