"""Tools for the fault tests: a scripted, seeded stand-in for KubeRay, an operator that
can be SIGKILLed at chosen moments, and the API server's audit log read back as an
exact history of every RayJob write.

- `StandIn` plays KubeRay for the RayJobs of one namespace: it watches them appear and
  moves each through KubeRay v1.4's real status sequence (New/Initializing -> Running with
  the Ray job PENDING, RUNNING -> the Ray job SUCCEEDED or FAILED while the deployment is
  still Running -> Complete / Failed with endTime), creating the RayCluster KubeRay would
  create and deleting it after a (seeded) TTL. Which attempts succeed and which fail, and
  with which failure class, is a `Script`. When tests/fixtures/kuberay/{success,app_failure}.json
  (recorded from the real KubeRay on `make cluster`) exist, their status sequences are
  replayed instead of the built-in ones.
- `History` replays the audit log's RayJob writes in etcd revision (resourceVersion)
  order, which is the order the API server committed them: it can say exactly which
  RayJobs were unfinished at the same time, and how often each name was created.
"""

from __future__ import annotations

import heapq
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from anytasktune.attempt import ObservedJob
from anytasktune.render import LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_SUBTASK, MANAGER
from anytasktune_contract.failures import FailureClass, failure_line
from tests.integration.helpers import REPO_ROOT, OperatorProcess, announcements

RAY = ("ray.io", "v1")
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "kuberay"
STANDIN_AGENT = "kuberay-standin"
RETRYABLE = (FailureClass.OutOfMemory, FailureClass.Preempted, FailureClass.StorageUnavailable, FailureClass.Unknown)
FATAL = (FailureClass.DataContract, FailureClass.InvalidSpec)
# What the API server logs: every write to RayJobs with the object it returned (its
# resourceVersion orders the history), creates and deletes of the other children, and
# the operator's reads of TaskFineTunes (who still works on what).
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "omitManagedFields": True,
    "rules": [
        {"level": "RequestResponse", "verbs": ["create", "update", "patch", "delete"],
         "resources": [{"group": "ray.io", "resources": ["rayjobs", "rayjobs/status"]}]},
        {"level": "Metadata", "verbs": ["create", "delete"],
         "resources": [{"group": "ray.io", "resources": ["rayclusters"]}, {"group": "", "resources": ["configmaps"]}]},
        {"level": "RequestResponse", "verbs": ["update", "patch"],
         "resources": [{"group": "anytasktune.io", "resources": ["taskfinetunes/status"]}]},
        {"level": "Metadata", "verbs": ["get", "list"],
         "resources": [{"group": "anytasktune.io", "resources": ["taskfinetunes"]}]},
        {"level": "None"},
    ],
}


def api_client(kubeconfig: Path | str, agent: str) -> kubernetes.client.ApiClient:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    client.user_agent = agent
    return client


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- what each attempt does --------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one attempt ends: success, or a failure of a class."""

    failure: FailureClass | None = None

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    def message(self, job: str) -> str:
        assert self.failure is not None
        return ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
                + failure_line(self.failure, f"scripted failure of {job}"))

    def __str__(self) -> str:
        return "S" if self.failure is None else f"F({self.failure.value})"


@dataclass(frozen=True)
class Expect:
    """The final status a script implies for one sub-task."""

    phase: str
    attempts: int
    failure_class: str | None
    reason: str | None  # None: not fixed (a succeeded sub-task's reason depends on the manifest read)


Script = dict[str, list[Outcome]]


def random_script(rng: random.Random, subtasks: Iterable[str], backoff_limit: int) -> Script:
    """Per sub-task one of: succeeds at once, succeeds after 1..limit retryable failures,
    exhausts its budget (limit+1 retryable failures), fails fatally after 0..limit retryable ones."""
    script: Script = {}
    for sub in subtasks:
        kind = rng.choice(["succeed", "retry-then-succeed", "exhaust", "fatal"])
        retries = [Outcome(rng.choice(RETRYABLE)) for _ in range(backoff_limit + 1)]
        if kind == "succeed" or (kind == "retry-then-succeed" and backoff_limit == 0):
            script[sub] = [Outcome()]
        elif kind == "retry-then-succeed":
            script[sub] = retries[: rng.randint(1, backoff_limit)] + [Outcome()]
        elif kind == "exhaust":
            script[sub] = retries
        else:
            script[sub] = retries[: rng.randint(0, backoff_limit)] + [Outcome(rng.choice(FATAL))]
    return script


def expected(script: Script, backoff_limit: int) -> dict[str, Expect]:
    out = {}
    for sub, outcomes in script.items():
        last = outcomes[-1]
        if last.succeeded:
            out[sub] = Expect("Succeeded", len(outcomes), None, None)
        elif last.failure in FATAL:
            assert last.failure is not None
            out[sub] = Expect("Failed", len(outcomes), last.failure.value, last.failure.value)
        else:
            assert len(outcomes) == backoff_limit + 1 and last.failure is not None
            out[sub] = Expect("Failed", len(outcomes), last.failure.value, "BackoffLimitExceeded")
    return out


# --- KubeRay's status sequences ------------------------------------------------------

NOW = "<now>"  # replaced by the time of the write


def _builtin(succeeded: bool) -> list[dict[str, Any]]:
    """KubeRay v1.4.2 in K8sJobMode (attempt.py's docstring has the recorded facts):
    the Ray job's status leads the deployment status, and only Complete/Failed carry endTime."""
    ended = "SUCCEEDED" if succeeded else "FAILED"
    seq: list[dict[str, Any]] = [
        {"jobDeploymentStatus": "Initializing", "startTime": NOW},
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Running", "jobStatus": ended},
    ]
    if succeeded:
        seq.append({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": NOW, "succeeded": 1})
    else:
        seq.append({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "endTime": NOW, "failed": 1})
    return seq


def _recorded(scenario: str, succeeded: bool) -> list[dict[str, Any]] | None:
    """The distinct statuses of a recorded scenario (tests/fixtures/kuberay), if it was
    recorded and ends the way the scenario says (a recording of a run that went wrong is not used)."""
    from tests.fixtures.kuberay import load

    if not (FIXTURES / f"{scenario}.json").exists():
        return None
    seq: list[dict[str, Any]] = []
    for obs in load(scenario).observations:
        status = dict(obs.status)
        if not status or obs.deleting or obs.suspend:
            continue
        for key in ("startTime", "endTime"):
            if key in status:
                status[key] = NOW
        status.pop("message", None)  # ours says which class failed
        for key in ("jobId", "rayClusterName", "dashboardURL"):
            status.pop(key, None)  # named after the recorded RayJob; ours are filled in
        if not seq or seq[-1] != status:
            seq.append(status)
    want = ("Complete", "SUCCEEDED") if succeeded else ("Failed", "FAILED")
    if not seq or (seq[-1].get("jobDeploymentStatus"), seq[-1].get("jobStatus")) != want:
        return None
    return seq


def status_sequence(outcome: Outcome) -> tuple[list[dict[str, Any]], str]:
    """The statuses one attempt goes through, and where they come from."""
    scenario = "success" if outcome.succeeded else "app_failure"
    recorded = _recorded(scenario, outcome.succeeded)
    if recorded is not None:
        return recorded, f"recorded {scenario}.json"
    return _builtin(outcome.succeeded), "built-in"


def terminal(status: dict[str, Any]) -> bool:
    return status.get("jobDeploymentStatus") in ("Complete", "Failed", "ValidationFailed")


# --- the stand-in ------------------------------------------------------------------------


@dataclass(order=True)
class _Due:
    due: float
    seq: int
    job: str = field(compare=False)
    uid: str = field(compare=False)  # the incarnation: a name deleted and created again is a new RayJob


class StandIn:
    """Plays KubeRay for one namespace's RayJobs, by a seeded script.

    Callbacks: on_created(job name) when a new RayJob is first seen, on_terminal(job
    name) right after its terminal status was written."""

    def __init__(self, kubeconfig: Path | str, namespace: str, script: Script, seed: int, *,
                 step: tuple[float, float] = (0.03, 0.25), keep_cluster: float = 0.5,
                 on_created: Callable[[str], None] | None = None,
                 on_terminal: Callable[[str], None] | None = None) -> None:
        self.namespace = namespace
        self.script = script
        self.seed = seed
        self.step = step
        self.keep_cluster = keep_cluster  # share of finished attempts whose cluster stays (a long TTL)
        self.on_created = on_created
        self.on_terminal = on_terminal
        self.custom = kubernetes.client.CustomObjectsApi(api_client(kubeconfig, STANDIN_AGENT))
        self._watch_api = kubernetes.client.CustomObjectsApi(api_client(kubeconfig, STANDIN_AGENT))
        self.seen: dict[str, dict[str, Any]] = {}  # job -> its object when first seen (the latest incarnation)
        self.plans: dict[str, list[tuple[float, dict[str, Any]]]] = {}  # job -> (gap, status) steps
        self.cursor: dict[str, int] = {}  # job -> its next step: KubeRay writes one status after the other
        self.written: dict[str, dict[str, Any]] = {}  # job -> last status written
        self.unscripted: list[str] = []  # attempts the script has no outcome for (a bug)
        self.errors: list[str] = []
        self.sources: set[str] = set()
        self._heap: list[_Due] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guard(self._watch), daemon=True, name="standin-watch"),
                         threading.Thread(target=self._guard(self._drive), daemon=True, name="standin-drive")]

    def start(self) -> StandIn:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)

    def done(self) -> bool:
        """Every attempt seen has been driven to its end."""
        with self._lock:
            return not self._heap

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - reported by the test through .errors
                self.errors.append(traceback.format_exc())
        return run

    # watching for new RayJobs (survives API server restarts: re-lists and watches again)
    def _watch(self) -> None:
        selector = f"{LABEL_MANAGED_BY}={MANAGER}"
        while not self._stop.is_set():
            try:
                listed = self._watch_api.list_namespaced_custom_object(*RAY, self.namespace, "rayjobs", label_selector=selector,
                                                                       _request_timeout=10)
                for obj in listed["items"]:
                    self._saw(obj)
                stream = kubernetes.watch.Watch().stream(
                    self._watch_api.list_namespaced_custom_object, *RAY, self.namespace, "rayjobs",
                    label_selector=selector, resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=5, _request_timeout=10)
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._saw(event["object"])
            except Exception:  # noqa: BLE001 - the API server is restarting: look again
                time.sleep(0.3)

    def _saw(self, obj: dict[str, Any]) -> None:
        name, uid = obj["metadata"]["name"], obj["metadata"]["uid"]
        with self._lock:
            if name in self.seen and self.seen[name]["metadata"]["uid"] == uid:
                return
            self.seen[name] = obj
            self.written.pop(name, None)
            labels = obj["metadata"].get("labels", {})
            sub, attempt = labels.get(LABEL_SUBTASK, ""), int(labels.get(LABEL_ATTEMPT, "0"))
            outcomes = self.script.get(sub, [])
            if not 1 <= attempt <= len(outcomes):
                self.unscripted.append(name)  # never driven: it stays Starting
                return
            outcome = outcomes[attempt - 1]
            rng = random.Random(f"{self.seed}/{name}")
            seq, source = status_sequence(outcome)
            self.sources.add(source)
            steps: list[tuple[float, dict[str, Any]]] = []
            for status in seq:
                status = dict(status)
                if not outcome.succeeded and status.get("jobStatus") == "FAILED":
                    status["message"] = outcome.message(name)
                steps.append((rng.uniform(*self.step), status))
            # After its end: the Ray cluster goes after a short TTL, or stays (a long TTL)
            # until the operator releases it.
            if rng.random() >= self.keep_cluster:
                steps.append((rng.uniform(0.2, 1.5), {"_cluster": "delete"}))
            self.plans[name] = steps
            self.cursor[name] = 0
            self._schedule(name, steps[0][0])
        self._wake.set()
        if self.on_created is not None:
            self.on_created(name)

    def _schedule(self, job: str, delay: float) -> None:  # call with the lock held
        self._seq += 1
        heapq.heappush(self._heap, _Due(time.monotonic() + delay, self._seq, job, self.seen[job]["metadata"]["uid"]))

    # writing statuses in order, on time (a write that fails is retried before the next)
    def _drive(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = self._heap[0] if self._heap else None
                wait = (due.due - time.monotonic()) if due else 0.5
                if due is not None and wait <= 0:
                    heapq.heappop(self._heap)
                    if self.seen[due.job]["metadata"]["uid"] != due.uid:
                        continue  # that RayJob was deleted and its name created again: a new plan drives it
            if due is None or wait > 0:
                self._wake.wait(timeout=max(min(wait, 0.5), 0.0))
                self._wake.clear()
                continue
            job = due.job
            try:
                self._apply(job, due.uid, self.plans[job][self.cursor[job]][1])
            except ApiException as err:
                if err.status in (404, 422):  # gone, or deleted and created again (the uid test failed)
                    if err.status == 422 and self._current_uid(job) == due.uid:
                        self.errors.append(f"{job}: status refused: {err.body}")
                    continue
                with self._lock:
                    self._schedule(job, 0.3)
                continue
            except Exception:  # noqa: BLE001 - connection refused: the API server restarts
                with self._lock:
                    self._schedule(job, 0.3)
                continue
            with self._lock:
                self.cursor[job] += 1
                if self.cursor[job] < len(self.plans[job]):
                    self._schedule(job, self.plans[job][self.cursor[job]][0])

    def _current_uid(self, job: str) -> str | None:
        try:
            obj = self.custom.get_namespaced_custom_object(*RAY, self.namespace, "rayjobs", job, _request_timeout=10)
        except Exception:  # noqa: BLE001 - gone or unreachable: not ours to judge
            return None
        return str(obj["metadata"]["uid"])  # type: ignore[index]

    def _apply(self, job: str, uid: str, status: dict[str, Any]) -> None:
        if "_cluster" in status:
            self._delete_cluster(job)
            return
        previous = self.written.get(job, {})
        status = {k: (now_iso() if v == NOW else v) for k, v in status.items()}
        if previous.get("startTime") and "startTime" in status:  # set once, when the attempt started
            status["startTime"] = previous["startTime"]
        status.setdefault("jobId", f"{job}-{self.seed % 100000:05d}")
        status.setdefault("rayClusterName", self.cluster_name(job))
        status.setdefault("dashboardURL", f"{self.cluster_name(job)}-head-svc.{self.namespace}.svc.cluster.local:8265")
        if status.get("jobDeploymentStatus") == "Initializing":
            self._create_cluster(job)
        if previous.get("startTime") and "startTime" not in status:
            status["startTime"] = previous["startTime"]
        # KubeRay replaces the whole status; the uid test makes sure it is still this
        # incarnation of the name (a RayJob deleted and created again is another one).
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid}, {"op": "add", "path": "/status", "value": status}]
        self.custom.patch_namespaced_custom_object_status(*RAY, self.namespace, "rayjobs", job, patch,
                                                          _content_type="application/json-patch+json", _request_timeout=10)
        self.written[job] = status
        if terminal(status) and self.on_terminal is not None:
            self.on_terminal(job)

    @staticmethod
    def cluster_name(job: str) -> str:
        return f"{job}-x7k2p"

    def _create_cluster(self, job: str) -> None:
        obj = self.seen[job]
        meta = obj["metadata"]
        labels = {**meta["labels"], "ray.io/originated-from-cr-name": job, "ray.io/originated-from-crd": "RayJob"}
        owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": job, "uid": meta["uid"], "controller": True}
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": self.cluster_name(job), "labels": labels, "ownerReferences": [owner]},
                   "spec": obj["spec"]["rayClusterSpec"]}
        try:
            self.custom.create_namespaced_custom_object(*RAY, self.namespace, "rayclusters", cluster, _request_timeout=10)
        except ApiException as err:
            if err.status != 409:
                raise

    def _delete_cluster(self, job: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(*RAY, self.namespace, "rayclusters", self.cluster_name(job), _request_timeout=10)
        except ApiException as err:
            if err.status != 404:
                raise


# --- an operator that dies at chosen moments ---------------------------------------------


class ScopedOperator(OperatorProcess):
    """The real operator, watching one namespace (a trial's), as its Deployment would with
    ANYTASKTUNE_NAMESPACES set."""

    def __init__(self, env: dict[str, str], log_path: Path, namespace: str, extra_env: dict[str, str] | None = None):
        super().__init__(env, log_path, {"ANYTASKTUNE_NAMESPACES": namespace, **(extra_env or {})})
        self.namespace = namespace

    def start(self) -> ScopedOperator:
        import subprocess

        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", f"--namespace={self.namespace}", "-m", "anytasktune.handlers"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
        return self

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL the operator: `after` seconds after it (re)started ("timer"), or
    `after` seconds after the next RayJob appears ("created") or the next attempt ends
    ("terminal")."""

    trigger: str
    after: float

    def __str__(self) -> str:
        return f"{self.trigger}+{self.after:.2f}s"


def random_kills(rng: random.Random, n: int) -> list[Kill]:
    kills = []
    for _ in range(n):
        trigger = rng.choice(["timer", "created", "terminal"])
        after = rng.uniform(0.3, 3.0) if trigger == "timer" else rng.uniform(0.0, 0.25)
        kills.append(Kill(trigger, after))
    return kills


class Killer:
    """Carries out a list of kills, one after the other: each SIGKILLs the operator and
    starts a new one at once (the kill is the fault; no downtime is added)."""

    def __init__(self, operator: OperatorProcess, kills: list[Kill]) -> None:
        self.operator = operator
        self.pending = list(kills)
        self.done: list[str] = []
        self._armed_at = time.monotonic()
        self._trigger: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="killer")

    def start(self) -> Killer:
        self._armed_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def event(self, kind: str) -> None:
        with self._lock:
            if self.pending and self.pending[0].trigger == kind and self._trigger is None:
                self._trigger = time.monotonic() + self.pending[0].after

    def _run(self) -> None:
        while not self._stop.is_set() and self.pending:
            with self._lock:
                kill = self.pending[0]
                due = self._armed_at + kill.after if kill.trigger == "timer" else self._trigger
            if due is None or time.monotonic() < due:
                time.sleep(0.01)
                continue
            with self._lock:
                assert self.operator.proc is not None
                self.operator.proc.send_signal(signal.SIGKILL)
                self.operator.proc.wait()
                self.operator.proc = None
                self.operator.start()
                self.done.append(str(kill))
                self.pending.pop(0)
                self._trigger = None
                self._armed_at = time.monotonic()


# --- the audit log as a history ----------------------------------------------------------


@dataclass
class History:
    """The RayJob writes of one namespace, in commit (resourceVersion) order."""

    namespace: str
    events: list[dict[str, Any]]  # audit events of this namespace

    def rayjob_writes(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(resourceVersion, verb, object) of every successful RayJob create/patch/update."""
        out = []
        for e in self.events:
            ref = e.get("objectRef") or {}
            if ref.get("resource") != "rayjobs" or e["verb"] == "delete" or not 200 <= e["responseStatus"]["code"] < 300:
                continue
            obj = e.get("responseObject") or {}
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv is not None:
                out.append((int(rv), e["verb"], obj))
        return sorted(out, key=lambda w: w[0])

    def creates(self, resource: str) -> Counter[str]:
        """How often each name was created in this namespace: its 201s, and a create the
        API server answered 504 that was stored all the same. When the client goes away
        mid-request (an operator SIGKILLed), the API server answers 504 ("context
        canceled") at once while its store finishes the create regardless; the audit log
        then shows no 201 for an object that exists. Such a create counts when what
        follows proves the object was stored: a later create of the name refused 409, or
        a later successful write to the object (the stand-in's status updates)."""
        counts: Counter[str] = Counter()
        cancelled: list[tuple[int, str]] = []  # (position, name)
        for i, e in enumerate(self.events):
            ref = e.get("objectRef") or {}
            if e["verb"] == "create" and ref.get("resource") == resource and not ref.get("subresource"):
                code = e["responseStatus"]["code"]
                if code == 201:
                    counts[ref["name"]] += 1
                elif code == 504:
                    cancelled.append((i, ref["name"]))
        for i, name in cancelled:
            if not counts[name] and self._stored_after(i, resource, name):
                counts[name] += 1
        return +counts

    def _stored_after(self, position: int, resource: str, name: str) -> bool:
        for e in self.events[position + 1:]:
            ref = e.get("objectRef") or {}
            if ref.get("resource") != resource or ref.get("name") != name:
                continue
            code = e["responseStatus"]["code"]
            if (e["verb"] == "create" and code == 409) or (e["verb"] in ("update", "patch") and 200 <= code < 300):
                return True
        return False

    def deletes(self, resource: str, agent_prefix: str = "") -> list[str]:
        return [e["objectRef"]["name"] for e in self.events
                if e["verb"] == "delete" and (e.get("objectRef") or {}).get("resource") == resource
                and e.get("userAgent", "").startswith(agent_prefix)]

    def overlaps(self, max_parallel: int | None = None) -> list[str]:
        """Violations, replaying the writes in commit order: two unfinished RayJobs of the
        same sub-task and run, or more unfinished RayJobs than max_parallel."""
        return overlap_problems([(rv, f"{verb} {obj['metadata']['name']}", obj) for rv, verb, obj in self.rayjob_writes()], max_parallel)

    def status_writes(self, tft: str) -> list[dict[str, Any]]:
        """The TaskFineTune's status after each write the API server committed, in commit order."""
        out = []
        for e in self.events:
            ref = e.get("objectRef") or {}
            if ref.get("resource") == "taskfinetunes" and ref.get("subresource") == "status" and ref.get("name") == tft \
                    and 200 <= e["responseStatus"]["code"] < 300 and e.get("responseObject"):
                obj = e["responseObject"]
                out.append((int(obj["metadata"]["resourceVersion"]), obj.get("status") or {}))
        return [status for _rv, status in sorted(out, key=lambda w: w[0])]

    def status_regressions(self, tft: str) -> list[str]:
        """A sub-task's status going backwards between two committed writes: fewer attempts,
        or out of Succeeded/Failed (same run)."""
        problems = []
        last: dict[str, dict[str, Any]] = {}
        for i, status in enumerate(self.status_writes(tft)):
            for sub in status.get("subtasks", []):
                prev = last.get(sub["name"])
                if prev is not None and prev.get("specId", prev.get("runId")) == sub.get("specId", sub.get("runId")):
                    if sub.get("attempts", 0) < prev.get("attempts", 0):
                        problems.append(f"status write {i}: {sub['name']} attempts {prev.get('attempts')} -> {sub.get('attempts')}")
                    if prev.get("phase") in ("Succeeded", "Failed") and sub.get("phase") != prev.get("phase"):
                        problems.append(f"status write {i}: {sub['name']} phase {prev.get('phase')} -> {sub.get('phase')}")
                last[sub["name"]] = sub
        return problems

    def agents(self, verb: str, resource: str) -> list[tuple[str, str, str]]:
        """(stageTimestamp, userAgent, name) of every such request."""
        return [(e.get("stageTimestamp", ""), e.get("userAgent", ""), (e.get("objectRef") or {}).get("name", ""))
                for e in self.events if e["verb"] == verb and (e.get("objectRef") or {}).get("resource") == resource]


def overlap_problems(states: list[tuple[int, str, dict[str, Any]]], max_parallel: int | None = None) -> list[str]:
    """Replay RayJob states (resourceVersion, what happened, the object; "DELETED ..." removes
    it) in order: two unfinished attempts of one sub-task and run at once, or more unfinished
    attempts than max_parallel, are violations."""
    live: dict[str, ObservedJob] = {}
    problems = []
    for rv, what, obj in states:
        job = ObservedJob.from_object(obj)
        if what.startswith("DELETED"):
            live.pop(job.name, None)
            continue
        live[job.name] = job
        unfinished = [j for j in live.values() if not j.state.is_terminal]
        for (sub, run), n in Counter((j.subtask, j.run_id) for j in unfinished).items():
            if n > 1:
                names = sorted(j.name for j in unfinished if (j.subtask, j.run_id) == (sub, run))
                problems.append(f"rv {rv} ({what}): {n} unfinished attempts of {sub} run {run[:8]}: {names}")
        if max_parallel is not None and len(unfinished) > max_parallel:
            problems.append(f"rv {rv} ({what}): {len(unfinished)} unfinished RayJobs > maxParallelSubtasks "
                            f"{max_parallel}: {sorted(j.name for j in unfinished)}")
    return problems


class RayJobWatch:
    """Every change to one namespace's RayJobs, from a watch the test runs (in commit order):
    for control planes without an audit log."""

    def __init__(self, kubeconfig: Path | str, namespace: str) -> None:
        self.namespace = namespace
        self.custom = kubernetes.client.CustomObjectsApi(api_client(kubeconfig, "rayjob-watch"))
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, "ADDED name", object)
        self.errors: list[str] = []
        self.on_added: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rayjob-watch")
        self._ready = threading.Event()

    def start(self) -> RayJobWatch:
        self._thread.start()
        self._ready.wait(timeout=30)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            listed = self.custom.list_namespaced_custom_object(*RAY, self.namespace, "rayjobs")
            if listed["items"]:
                self.errors.append(f"RayJobs existed before the watch: {[o['metadata']['name'] for o in listed['items']]}")
            rv = listed["metadata"]["resourceVersion"]
            self._ready.set()
            while not self._stop.is_set():
                for event in kubernetes.watch.Watch().stream(self.custom.list_namespaced_custom_object, *RAY, self.namespace, "rayjobs",
                                                             resource_version=rv, timeout_seconds=2, allow_watch_bookmarks=False):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    self.events.append((int(rv), f"{event['type']} {obj['metadata']['name']}", obj))
                    if event["type"] == "ADDED" and self.on_added is not None:
                        self.on_added(obj["metadata"]["name"])
        except Exception:  # noqa: BLE001 - a watch that breaks makes the record incomplete: the test fails on it
            self.errors.append(traceback.format_exc())
            self._ready.set()

    def added(self) -> Counter[str]:
        return Counter(what.split(" ", 1)[1] for _rv, what, _obj in self.events if what.startswith("ADDED"))

    def deleted(self) -> list[str]:
        return [what.split(" ", 1)[1] for _rv, what, _obj in self.events if what.startswith("DELETED")]


def namespace_events(events: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    return [e for e in events if (e.get("objectRef") or {}).get("namespace") == namespace]


class Reader:
    """The test's own reads, through the Python client (no kubectl process per poll)."""

    def __init__(self, kubeconfig: Path | str) -> None:
        client = api_client(kubeconfig, "fault-test")
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def tft(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object("anytasktune.io", "v1alpha1", namespace, "taskfinetunes", name)  # type: ignore[assignment]
        return obj

    def rayjobs(self, namespace: str) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(*RAY, namespace, "rayjobs")["items"]  # type: ignore[index]
        return {o["metadata"]["name"]: o for o in items}

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the Events about one object, one per sub-task in a coalesced one."""
        items = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.reason, part) for e in items for part in announcements(e.message)]
