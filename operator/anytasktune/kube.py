"""The Kubernetes side of a pass: observe a TaskFineTune's children, and the executor
that applies a plan through the API server (blocking calls; run in worker threads)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from anytasktune import metrics
from anytasktune.actions import Launch
from anytasktune.informer import RAY, SELECTOR, ChildCache, Children, Want, assemble, cluster_record, job_record, list_pages
from anytasktune.render import LABEL_TFT
from anytasktune.spec import GROUP, KIND, PLURAL, VERSION
from anytasktune.summary import EVENT_MESSAGE_LIMIT, Event, coalesce

log = logging.getLogger("anytasktune")
# The API server's metadata-only view of a LIST (what kubectl get -o name and client-go's metadata informers use).
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}


def _ok(err: ApiException, *statuses: int) -> None:
    if err.status not in statuses:
        raise err


class KubeClient:
    """The API calls a pass needs."""

    def __init__(self) -> None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self._configuration = kubernetes.client.Configuration.get_default_copy()
        # Passes, creates and the resync share one connection pool (default: 5 per core).
        self._configuration.connection_pool_maxsize = 32
        api = kubernetes.client.ApiClient(self._configuration)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    def watch_api(self, connections: int) -> kubernetes.client.CustomObjectsApi:
        """A client with a pool of its own for long-lived watches, one connection each:
        they must never take the connections the passes need."""
        configuration = copy.deepcopy(self._configuration)
        configuration.connection_pool_maxsize = connections
        return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))

    def get_tft(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[assignment]
            return obj
        except ApiException as err:
            _ok(err, 404)
            return None

    def list_tfts(self, namespaces: tuple[str, ...]) -> list[tuple[str, str]]:
        """Every TaskFineTune we watch; per namespace when namespaced (a Role cannot list
        cluster-wide). Their metadata only, in pages: the resync needs the names, and the
        whole objects (16.5 kB each with a 10-sub-task status) made this LIST a tenth of the
        operator's CPU at 300 TaskFineTunes."""
        return [(o["metadata"]["namespace"], o["metadata"]["name"]) for namespace in namespaces or ("",)
                for page in list_pages(self.custom, GROUP, VERSION, PLURAL, namespace, _headers=METADATA_ONLY)
                for o in page.get("items", [])]

    def _children(self, plural: str, namespace: str, tft: str) -> list[dict[str, Any]]:
        resp: dict[str, Any] = self.custom.list_namespaced_custom_object(*RAY, namespace, plural, label_selector=f"{SELECTOR},{LABEL_TFT}={tft}")  # type: ignore[assignment]
        return list(resp.get("items", []))

    def observe(self, namespace: str, tft: str, shared: bool = False) -> Children:
        """The TaskFineTune's RayJobs, RayJob name -> its own live RayCluster's name, and
        the shared RayCluster (cluster.mode Shared) if it exists, LISTed from the API
        server (`ChildCache.observe` answers the same from memory).

        Clusters matter for finished (or vanishing) attempts, whose cluster may outlive
        them, and in Shared mode: otherwise the second LIST is skipped."""
        jobs = [job_record(o) for o in self._children("rayjobs", namespace, tft)]
        if not shared and not any(j.state.is_terminal or j.deleting or j.shared for j in jobs):
            return jobs, {}, None
        return assemble(jobs, [cluster_record(c) for c in self._children("rayclusters", namespace, tft)])

    def post_event(self, meta: Mapping[str, Any], event: Event, now: datetime) -> None:
        """`meta`: the TaskFineTune's name, namespace, uid and resourceVersion."""
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
            ),
            type=event.type, reason=event.reason, message=event.message[:EVENT_MESSAGE_LIMIT],
            first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component="anytasktune-operator"),
            reporting_component="anytasktune.io/operator", reporting_instance="anytasktune-operator",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # an Event is best effort: never fail a pass for it
            log.warning("could not post event %s: %s", event.reason, err.reason)


class KubeExecutor:
    """Applies one pass's plan for one TaskFineTune through the API server."""

    def __init__(self, client: KubeClient, tft: dict[str, Any], clusters: dict[str, str],
                 start_read: Callable[[str], None], writers: ThreadPoolExecutor | None = None,
                 cache: ChildCache | None = None, event_posts: ThreadPoolExecutor | None = None,
                 status_written: Callable[[str | None], None] | None = None) -> None:
        self.client = client
        self.tft = tft
        self.namespace: str = tft["metadata"]["namespace"]
        self.name: str = tft["metadata"]["name"]
        self.clusters = clusters  # RayJob name -> RayCluster name
        self.start_read = start_read
        self.writers = writers
        self.cache = cache
        self.event_posts = event_posts  # None: post each Event inside the pass
        self.status_written = status_written  # told the resourceVersion of each status write

    @contextmanager
    def _expecting(self, want: Want, name: str) -> Iterator[None]:
        """Tell the cache what this write will change before it is made (its event may
        arrive before the call returns); withdrawn when the write fails. A 409 on create
        and a 404 on delete are no failure: the API server already holds what we want."""
        if self.cache is None:
            yield
            return
        expectation = self.cache.expect((self.namespace, self.name), want, name)
        try:
            yield
        except BaseException as err:
            if not (isinstance(err, ApiException) and err.status in (404, 409)):
                self.cache.withdraw((self.namespace, self.name), expectation)
            raise

    def create_all(self, launches: list[Launch]) -> None:
        """Launches side by side: a pool of 10 sub-tasks is one round trip of latency, not ten."""
        if self.writers is None or len(launches) == 1:
            for launch in launches:
                self.create(launch)
            return
        for future in [self.writers.submit(self.create, launch) for launch in launches]:
            future.result()  # re-raises the first failure: the pass is retried

    def create(self, launch: Launch) -> None:
        # A 409: an earlier pass (or an operator before a restart) already created it.
        try:
            with self._expecting(Want.JobExists, launch.rayjob["metadata"]["name"]):
                self.client.custom.create_namespaced_custom_object(*RAY, self.namespace, "rayjobs", launch.rayjob)
        except ApiException as err:
            _ok(err, 409)
            return
        metrics.RAYJOBS_CREATED.inc()
        if launch.retry_of:
            metrics.RETRIES.labels(failure_class=launch.retry_of).inc()

    def delete_job(self, name: str) -> None:
        try:
            with self._expecting(Want.JobGone, name):
                self.client.custom.delete_namespaced_custom_object(*RAY, self.namespace, "rayjobs", name, propagation_policy="Background")
        except ApiException as err:
            _ok(err, 404)

    def release_cluster(self, job: str) -> None:
        cluster = self.clusters.get(job)
        if cluster is not None:
            self.delete_cluster(cluster)

    def create_cluster(self, raycluster: dict[str, Any]) -> None:
        try:
            with self._expecting(Want.ClusterExists, raycluster["metadata"]["name"]):
                self.client.custom.create_namespaced_custom_object(*RAY, self.namespace, "rayclusters", raycluster)
        except ApiException as err:
            _ok(err, 409)

    def delete_cluster(self, name: str) -> None:
        try:
            with self._expecting(Want.ClusterGone, name):
                self.client.custom.delete_namespaced_custom_object(*RAY, self.namespace, "rayclusters", name, propagation_policy="Background")
        except ApiException as err:
            _ok(err, 404)

    def set_suspend(self, name: str, suspend: bool) -> None:
        with self._expecting(Want.JobSuspended if suspend else Want.JobResumed, name):
            self.client.custom.patch_namespaced_custom_object(*RAY, self.namespace, "rayjobs", name, {"spec": {"suspend": suspend}})

    def read_manifest(self, uri: str) -> None:
        self.start_read(uri)

    def post_events(self, events: list[Event]) -> None:
        """Coalesced by reason (`summary.coalesce`: one Launched for a pool's launches, not
        one per sub-task), stamped now, posted later when there is a pool: their time keeps
        the pass's order."""
        now = datetime.now(timezone.utc)
        # Only what an Event names: a queued post must not hold the whole TaskFineTune (at
        # 1,000 pools the queue after a burst of launches held thousands of them).
        meta = {k: self.tft["metadata"].get(k) for k in ("name", "namespace", "uid", "resourceVersion")}
        for event in coalesce(events):
            if self.event_posts is None:
                self.client.post_event(meta, event, now)
            else:
                self.event_posts.submit(self.client.post_event, meta, event, now)

    def write_status(self, status: dict[str, Any]) -> None:
        written: dict[str, Any] = self.client.custom.patch_namespaced_custom_object_status(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status})
        if self.status_written is not None:
            self.status_written((written.get("metadata") or {}).get("resourceVersion"))
