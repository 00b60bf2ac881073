"""Faults injected into a working operator, on a real control plane with an audit log.

- **SIGKILL at random moments** (`test_operator_sigkilled_at_random_moments`): each trial
  is one seed. It decides a pool (sub-tasks, maxParallelSubtasks below the pool size, a
  backoffLimit), a script of attempt outcomes played by a stand-in for KubeRay
  (`faults.StandIn`), and when to SIGKILL the operator (a timer after it started, or right
  after a RayJob appears or an attempt ends); each kill starts a new operator at once.
  Checked exactly, from the API server's audit log (every RayJob write with the object it
  committed, replayed in resourceVersion order): no RayJob name created twice; never two
  unfinished attempts of one sub-task and run, nor more unfinished attempts than
  maxParallelSubtasks; attempt numbers 1..n without gaps, n <= backoffLimit + 1; the
  operator deleted no RayJob; nothing more is created once the pool is done; and the
  final status is the one the script implies (phase, attempts, failureClass, reason).
  `ANYTASKTUNE_CRASH_TRIALS` (default 20) sets the number of trials and
  `ANYTASKTUNE_CRASH_SEEDS` (e.g. `1007` or `1003,1011`) replays given seeds; `make soak`
  runs 200 trials from a random base seed (printed).
  Also from the audit log: the status never goes backwards (attempts never decrease, a
  Succeeded or Failed sub-task stays so).
- **kube-apiserver and etcd restarted** (`test_apiserver_and_etcd_restarts`): the same
  operator process reconnects, a pass that failed on the outage is retried with backoff,
  the resync loop fails and carries on, and the pool converges without a duplicate.
- **Churn** (`test_churn_*`): 30 TaskFineTunes created, half changed, all deleted, three
  rounds (`ANYTASKTUNE_CHURN_ROUNDS`): no orphans, nothing queued, no metric series left,
  RSS bounded.
- **A restart forgets the manifest reads** (`test_a_restart_repeats_no_storage_warning`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from anytasktune_contract.failures import FailureClass as F
from tests.integration.faults import (
    AUDIT_POLICY,
    Expect,
    History,
    Killer,
    Outcome,
    Reader,
    ScopedOperator,
    StandIn,
    expected,
    random_kills,
    random_script,
)
from tests.integration.helpers import REPO_ROOT, Kubectl, metrics_text, serving, taskfinetune, wait_for
from tests.kube.controlplane import ControlPlane


def crash_seeds() -> list[int]:
    given = os.environ.get("ANYTASKTUNE_CRASH_SEEDS", "").strip()
    if given:
        return [int(s) for s in given.split(",") if s.strip()]
    trials = int(os.environ.get("ANYTASKTUNE_CRASH_TRIALS", "20"))
    base = int(os.environ.get("ANYTASKTUNE_CRASH_BASE_SEED", "1000"))
    return list(range(base, base + trials))


class AuditLog:
    """The control plane's audit log, read incrementally and kept per namespace."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.offset = 0
        self.by_namespace: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            events, self.offset = self.plane.audit_events(self.offset)
            for e in events:
                ns = (e.get("objectRef") or {}).get("namespace", "")
                self.by_namespace.setdefault(ns, []).append(e)

    def forget(self, namespace: str) -> None:
        self.refresh()
        with self._lock:
            self.by_namespace.pop(namespace, None)

    def history(self, namespace: str) -> History:
        self.refresh()
        with self._lock:
            return History(namespace, list(self.by_namespace.get(namespace, [])))


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """This module's own control plane (it restarts components), with an audit log."""
    with serving(ControlPlane(audit_policy=AUDIT_POLICY)) as cp:
        crds = cp.kubectl("apply", "--server-side", "--output=name", f"--filename={REPO_ROOT / 'manifests' / 'crd'}").stdout.split()
        cp.wait_established(crds)
        yield cp


@pytest.fixture(scope="module")
def k(plane: ControlPlane) -> Kubectl:
    return Kubectl(plane.env())


@pytest.fixture(scope="module")
def audit(plane: ControlPlane) -> AuditLog:
    return AuditLog(plane)


# --- checks shared by the fault tests ----------------------------------------------------


def subtask_statuses(tft: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in (tft.get("status") or {}).get("subtasks", [])}


def status_problems(tft: dict[str, Any], expect: dict[str, Expect]) -> list[str]:
    """How the TaskFineTune's status differs from what the script implies (empty: it matches)."""
    name = tft["metadata"]["name"]
    status = tft.get("status") or {}
    subs = subtask_statuses(tft)
    problems = []
    for sub, want in expect.items():
        got = subs.get(sub)
        if got is None:
            problems.append(f"{sub}: no status")
            continue
        have = (got.get("phase"), got.get("attempts"), got.get("failureClass"), got.get("rayJob"))
        need = (want.phase, want.attempts, want.failure_class, f"{name}-{sub}-{want.attempts}")
        if have != need:
            problems.append(f"{sub}: (phase, attempts, failureClass, rayJob) is {have}, want {need}")
        if want.reason is not None and got.get("reason") != want.reason:
            problems.append(f"{sub}: reason {got.get('reason')!r}, want {want.reason!r}")
        if want.phase == "Succeeded" and got.get("reason") not in SUCCEEDED_REASONS:
            problems.append(f"{sub}: reason {got.get('reason')!r} for a succeeded sub-task")
    succeeded = sum(1 for w in expect.values() if w.phase == "Succeeded")
    pool = ("Succeeded" if succeeded == len(expect) else "Failed", f"{succeeded}/{len(expect)}", succeeded, len(expect) - succeeded)
    have_pool = (status.get("phase"), status.get("progress"), status.get("succeeded"), status.get("failed"))
    if have_pool != pool:
        problems.append(f"pool (phase, progress, succeeded, failed) is {have_pool}, want {pool}")
    return problems


# A succeeded sub-task's reason says whether its manifest was read; these tests have no
# S3 (the endpoint refuses connections), so the read fails or is not allowed by policy.
SUCCEEDED_REASONS = ("Succeeded", "EvaluationUnreadable", "EvaluationNotAllowed")


def history_problems(history: History, tft: str, expect: dict[str, Expect], max_parallel: int | None) -> list[str]:
    """What the audit log shows that a correct operator never does (status regressions included)."""
    problems = history.overlaps(max_parallel)
    created = history.creates("rayjobs")
    problems += [f"RayJob {n} created {c} times" for n, c in created.items() if c > 1]
    want = {f"{tft}-{sub}-{i}" for sub, e in expect.items() for i in range(1, e.attempts + 1)}
    if set(created) != want:
        problems.append(f"RayJobs created {sorted(created)}, want exactly {sorted(want)} (attempts 1..n, no gaps)")
    if history.creates("configmaps"):  # a launch is one write: its spec rides in the RayJob
        problems.append(f"ConfigMaps created {sorted(history.creates('configmaps'))}, want none")
    deleted = history.deletes("rayjobs")
    if deleted:
        problems.append(f"RayJobs deleted (nothing asked for it): {deleted}")
    problems += history.status_regressions(tft)
    return problems


def event_problems(reader: Reader, ns: str, tft: str) -> list[str]:
    """Each launch and each sub-task transition is announced at most once (a crash may
    lose an Event; none may be repeated)."""
    messages = Counter(reader.events(ns, tft))
    return [f"Event {reason} posted {n} times: {message}" for (reason, message), n in messages.items() if n > 1]


def dump(reader: Reader, ns: str, name: str, standin: StandIn | None = None) -> str:
    """What a failure message needs: the status, each RayJob's state, the stand-in's plan."""
    out = []
    try:
        out.append(f"--- status ---\n{json.dumps(reader.tft(ns, name).get('status'), indent=1)}")
        for job, obj in sorted(reader.rayjobs(ns).items()):
            st = obj.get("status") or {}
            out.append(f"RayJob {job}: {st.get('jobDeploymentStatus')} {st.get('jobStatus')} end={st.get('endTime')}")
    except Exception as err:  # noqa: BLE001 - a dump must not hide the failure
        out.append(f"(could not read: {err})")
    if standin is not None:
        out.append(f"stand-in: pending steps {len(standin._heap)}, written {sorted(standin.written)}, errors {standin.errors}")
    return "\n".join(out)


# --- SIGKILL at random moments --------------------------------------------------------------

# Short retry backoff and resync: a trial takes seconds, not minutes.
FAST = {"ANYTASKTUNE_RETRY_BACKOFF_SECONDS": "0.3", "ANYTASKTUNE_RETRY_BACKOFF_MAX_SECONDS": "0.6", "ANYTASKTUNE_RESYNC_SECONDS": "1"}
CONCURRENT_TRIALS = 4  # trials mostly wait: four at a time, each with its own namespace and operator


@dataclass
class Trial:
    seed: int
    describe: str = ""
    kills: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sources: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    details: str = ""


def crash_trial(seed: int, plane: ControlPlane, k: Kubectl, audit: AuditLog, workdir: Path) -> Trial:
    """One trial: a pool, a script, three SIGKILLs; returns what went wrong (if anything)."""
    rng = random.Random(seed)
    subtasks = ["alpha", "beta", "gamma", "delta"][: rng.choice([3, 4])]
    backoff_limit = rng.choice([1, 2])
    max_parallel = rng.randint(1, len(subtasks) - 1)
    script = random_script(rng, subtasks, backoff_limit)
    kills = random_kills(rng, 3)
    expect = expected(script, backoff_limit)
    outcomes = " ".join(f"{s}=[{','.join(map(str, o))}]" for s, o in script.items())
    trial = Trial(seed, f"maxParallel={max_parallel} backoffLimit={backoff_limit} {outcomes}; kills {[str(x) for x in kills]}")
    ns, name = f"crash-{seed}", "pool"
    reader = Reader(plane.kubeconfig)
    k.namespace(ns)
    operator = ScopedOperator(plane.env(), workdir / f"operator-{seed}.log", ns, FAST).start()
    killer = Killer(operator, kills)
    standin = StandIn(plane.kubeconfig, ns, script, seed,
                      on_created=lambda _job: killer.event("created"), on_terminal=lambda _job: killer.event("terminal")).start()
    started = time.monotonic()
    try:
        k.apply(taskfinetune(name, subtasks, maxParallelSubtasks=max_parallel, backoffLimit=backoff_limit), ns)
        killer.start()
        try:
            wait_for("the final status the script implies",
                     lambda: not status_problems(reader.tft(ns, name), expect) or None, timeout=120, interval=0.3)
        except AssertionError as err:
            trial.problems.append(str(err))
        finally:
            killer.stop()
        trial.kills = killer.done
        # Done and quiet: nothing new is created over more than a resync (1 s).
        before = audit.history(ns).creates("rayjobs")
        time.sleep(1.5)
        tft = reader.tft(ns, name)
        history = audit.history(ns)
        trial.problems += status_problems(tft, expect)
        trial.problems += history_problems(history, name, expect, max_parallel)
        if history.creates("rayjobs") != before:
            trial.problems.append(f"RayJobs created after the pool was done: {history.creates('rayjobs') - before}")
        trial.problems += [f"the operator launched attempt {j}, which the script does not have" for j in standin.unscripted]
        trial.problems += [f"stand-in error: {e}" for e in standin.errors]
        trial.problems += event_problems(reader, ns, name)
        trial.sources = standin.sources
        if trial.problems:
            trial.details = f"--- status ---\n{json.dumps(tft.get('status'), indent=1)}\n--- operator ---\n{operator.logs()}"
    finally:
        trial.seconds = time.monotonic() - started
        standin.stop()
        operator.stop()
        k.run("delete", "namespace", ns, "--wait=false")
        audit.forget(ns)
    return trial


def test_operator_sigkilled_at_random_moments(plane: ControlPlane, k: Kubectl, audit: AuditLog, tmp_path: Path) -> None:
    seeds = crash_seeds()
    print(f"\ncrash trials: seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}); replay one with ANYTASKTUNE_CRASH_SEEDS=<seed>")
    with ThreadPoolExecutor(CONCURRENT_TRIALS) as pool:
        trials = list(pool.map(lambda seed: crash_trial(seed, plane, k, audit, tmp_path), seeds))
    for t in trials:
        print(f"  seed {t.seed}: {'ok' if not t.problems else 'FAILED'} in {t.seconds:.1f}s, "
              f"kills done {t.kills}; {t.describe}")
    failed = [t for t in trials if t.problems]
    assert not failed, "\n\n".join(
        f"seed {t.seed} ({t.describe}; kills done {t.kills}); replay: ANYTASKTUNE_CRASH_SEEDS={t.seed}\n  "
        + "\n  ".join(t.problems) + "\n" + t.details for t in failed)
    # The trials are meaningful: they killed the operator many times, at each kind of moment.
    kinds = Counter(kill.split("+")[0] for t in trials for kill in t.kills)
    print(f"{len(trials)} trials survived {sum(kinds.values())} SIGKILLs {dict(kinds)}; "
          f"status sequences: {sorted(set().union(*(t.sources for t in trials)))}")
    assert sum(kinds.values()) >= 2 * len(trials), kinds
    if len(trials) >= 5:
        assert set(kinds) == {"timer", "created", "terminal"}, kinds


# --- kube-apiserver and etcd restarted ----------------------------------------------------


def operator_requests(audit: AuditLog, namespace: str, verb: str, after: str) -> list[tuple[str, str]]:
    """(time, name) of the operator's own API calls (the Python client; kopf's watches
    say "kopf/…") on TaskFineTunes in a namespace, after an RFC 3339 time."""
    audit.refresh()
    with audit._lock:
        events = list(audit.by_namespace.get(namespace, []))
    return [(e["stageTimestamp"], e["objectRef"].get("name", "")) for e in events
            if e["verb"] == verb and e["objectRef"].get("resource") == "taskfinetunes"
            and e.get("userAgent", "").startswith("OpenAPI-Generator") and e["stageTimestamp"] > after]


def rfc3339_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def test_apiserver_and_etcd_restarts(plane: ControlPlane, k: Kubectl, audit: AuditLog, tmp_path: Path) -> None:
    """The operator works through a pool while kube-apiserver is SIGKILLed and restarted,
    then etcd: the same operator process reconnects, its watches fail and list again, the
    resync loop fails and carries on (a pass that fails on the outage is retried with
    backoff; one that finds nothing to write no longer needs the API server: it reads from
    memory), and the pool converges to the status the script implies, with no duplicate."""
    ns, name = "restarts", "steady"
    script = {"alpha": [Outcome(F.OutOfMemory), Outcome()], "beta": [Outcome()],
              "gamma": [Outcome(F.Preempted), Outcome(F.Unknown)], "delta": [Outcome(F.DataContract)],
              "epsilon": [Outcome(F.StorageUnavailable), Outcome()]}
    expect = expected(script, 1)
    reader = Reader(plane.kubeconfig)
    k.namespace(ns)
    operator = ScopedOperator(plane.env(), tmp_path / "operator.log", ns, FAST).start()
    assert operator.proc is not None
    pid = operator.proc.pid
    standin = StandIn(plane.kubeconfig, ns, script, seed=7, step=(0.3, 0.8)).start()
    try:
        k.apply(taskfinetune(name, list(script), maxParallelSubtasks=2, backoffLimit=1), ns)
        wait_for("two RayJobs", lambda: len(reader.rayjobs(ns)) >= 2, timeout=60)

        # Down until the RayJob watch has failed to list again twice (its backoff) and the
        # resync has failed on it too (a starting API server holds requests rather than
        # refusing them), then back on the same port and data.
        before = operator.log_path.read_text()
        plane.stop_component("kube-apiserver", kill=True)
        down = time.monotonic()

        def failed_while_down() -> bool:
            log = operator.log_path.read_text()[len(before):]
            return "rayjobs watch failed (2 in a row)" in log and "resync list failed" in log

        wait_for("the RayJob watch failed twice in a row and the resync failed while the API server is down", failed_while_down,
                 timeout=30, interval=0.2)
        plane.start_component("kube-apiserver")
        print(f"\nkube-apiserver was down {time.monotonic() - down:.1f}s")
        after_apiserver = rfc3339_now()
        at_restart = len(reader.rayjobs(ns))
        wait_for("a RayJob created after the API server restart",
                 lambda: len(reader.rayjobs(ns)) > at_restart or not status_problems(reader.tft(ns, name), expect), timeout=60)

        plane.restart("etcd", kill=True, down_for=3.0)
        after_etcd = rfc3339_now()
        try:
            wait_for("the final status the script implies",
                     lambda: not status_problems(reader.tft(ns, name), expect) or None, timeout=120, interval=0.5)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{dump(reader, ns, name, standin)}\n--- operator ---\n{operator.logs()}") from None
        time.sleep(3)  # three resync periods

        tft = reader.tft(ns, name)
        problems = status_problems(tft, expect)
        # The API server was killed: an audit event of a request in flight may be lost,
        # so the names come from what exists; duplicates and overlaps from what was logged.
        jobs = set(reader.rayjobs(ns))
        want = {f"{name}-{sub}-{i}" for sub, e in expect.items() for i in range(1, e.attempts + 1)}
        if jobs != want:
            problems.append(f"RayJobs {sorted(jobs)}, want exactly {sorted(want)}")
        history = audit.history(ns)
        problems += history.overlaps(2)
        problems += [f"RayJob {n} created {c} times" for n, c in history.creates("rayjobs").items() if c > 1]
        problems += event_problems(reader, ns, name)
        problems += [f"stand-in error: {e}" for e in standin.errors]
        assert not problems, "\n".join(problems) + f"\n--- operator ---\n{operator.logs()}"

        # One operator process all along: it reconnected rather than crashed.
        assert operator.proc is not None and operator.proc.poll() is None and operator.proc.pid == pid
        log = operator.log_path.read_text()
        metrics = metrics_text(operator.metrics_port)
        errors = [line for line in metrics.splitlines() if line.startswith('anytasktune_errors_total{target="apiserver"}')]
        assert errors and float(errors[0].split()[-1]) >= 1, metrics  # the outages reached the operator
        # The resync failed while the API server was away, and kept going after both restarts.
        assert "resync list failed" in log, log[-4000:]
        assert len(operator_requests(audit, ns, "list", after_apiserver)) >= 3
        assert len(operator_requests(audit, ns, "list", after_etcd)) >= 2
    finally:
        standin.stop()
        operator.stop()
        k.run("delete", "namespace", ns, "--wait=false")


# --- churn ---------------------------------------------------------------------------------

CHURN_TFTS = int(os.environ.get("ANYTASKTUNE_CHURN_TFTS", "30"))
CHURN_ROUNDS = int(os.environ.get("ANYTASKTUNE_CHURN_ROUNDS", "5"))


def leftovers(reader: Reader, ns: str) -> dict[str, list[str]]:
    """Our children that still exist in a namespace."""
    selector = "app.kubernetes.io/managed-by=anytasktune"
    out = {}
    for plural in ("rayjobs", "rayclusters"):
        items = reader.custom.list_namespaced_custom_object("ray.io", "v1", ns, plural, label_selector=selector)["items"]  # type: ignore[index]
        out[plural] = sorted(o["metadata"]["name"] for o in items)
    out["configmaps"] = sorted(c.metadata.name for c in reader.core.list_namespaced_config_map(ns, label_selector=selector).items)
    out["taskfinetunes"] = sorted(o["metadata"]["name"] for o in reader.custom.list_namespaced_custom_object(
        "anytasktune.io", "v1alpha1", ns, "taskfinetunes")["items"])  # type: ignore[index]
    return {kind: names for kind, names in out.items() if names}


@dataclass
class Churn:
    leftovers: dict[str, list[str]]
    late_passes: list[tuple[str, str]]
    series: list[str]
    rss_kib: list[int]
    errors: list[str]


@pytest.fixture(scope="module")
def churn(plane: ControlPlane, k: Kubectl, audit: AuditLog, tmp_path_factory: pytest.TempPathFactory) -> Churn:
    """Rounds of creating 30 TaskFineTunes, changing half of their specs while they train,
    and deleting them all (the same names every round), with the stand-in driving their
    RayJobs; then what is left, in the cluster and in the operator."""
    ns = "churn"
    script = {"kw": [Outcome()], "risk": [Outcome(F.OutOfMemory), Outcome()]}
    names = [f"churn-{i:02d}" for i in range(CHURN_TFTS)]
    reader = Reader(plane.kubeconfig)
    k.namespace(ns)
    operator = ScopedOperator(plane.env(), tmp_path_factory.mktemp("churn") / "operator.log", ns, FAST).start()
    standin = StandIn(plane.kubeconfig, ns, script, seed=11, step=(0.05, 0.4)).start()
    rss: list[int] = []
    try:
        for round_ in range(CHURN_ROUNDS):
            t0 = time.monotonic()
            docs = [taskfinetune(n, list(script), maxParallelSubtasks=2, backoffLimit=1) for n in names]
            k.apply({"apiVersion": "v1", "kind": "List", "items": docs}, ns)
            wait_for("a RayJob for every TaskFineTune",
                     lambda: {j.rsplit("-", 2)[0] for j in reader.rayjobs(ns)} >= set(names), timeout=120, interval=1)
            changed = [taskfinetune(n, list(script), maxParallelSubtasks=2, backoffLimit=1) for n in names[::2]]
            for doc in changed:
                doc["spec"]["defaults"] = {"lora": {"r": 8 + round_}}
            k.apply({"apiVersion": "v1", "kind": "List", "items": changed}, ns)
            wait_for("the changed specs observed",
                     lambda: all(reader.tft(ns, n).get("status", {}).get("observedGeneration") == 2 for n in names[::2]),
                     timeout=120, interval=1)
            k.run("delete", "taskfinetunes", "--all", "-n", ns, "--wait=false")
            wait_for("garbage collection of every child", lambda: not leftovers(reader, ns) or None, timeout=120, interval=1)
            rss.append(operator.rss_kib())
            print(f"churn round {round_ + 1}/{CHURN_ROUNDS} ({CHURN_TFTS} TaskFineTunes, {time.monotonic() - t0:.0f}s): "
                  f"operator RSS {rss[-1] / 1024:.1f} MiB")
        # Over the next seconds (many resyncs and retry backoffs) a correct operator
        # reads none of the deleted TaskFineTunes again.
        time.sleep(2)
        quiet_from = rfc3339_now()
        time.sleep(6)
        series = [line for line in metrics_text(operator.metrics_port).splitlines()
                  if line.startswith("anytasktune_subtasks{") and f'namespace="{ns}"' in line]
        return Churn(leftovers(reader, ns), operator_requests(audit, ns, "get", quiet_from), series, rss, list(standin.errors))
    finally:
        standin.stop()
        operator.stop()
        k.run("delete", "namespace", ns, "--wait=false")


def test_churn_leaves_no_orphans(churn: Churn) -> None:
    """Deleted TaskFineTunes take every RayJob and RayCluster with them (and nothing else of ours is there)."""
    assert churn.leftovers == {} and churn.errors == []


def test_churn_leaves_nothing_queued(churn: Churn) -> None:
    """No pass runs for a TaskFineTune once it is gone (no timer or queued key survives it)."""
    assert churn.late_passes == [], f"passes for deleted TaskFineTunes: {churn.late_passes[:10]}"


def test_churn_drops_the_metrics_of_deleted_taskfinetunes(churn: Churn) -> None:
    """A deleted TaskFineTune's `anytasktune_subtasks` series go with it; otherwise they
    report its sub-tasks forever and grow with every name ever used."""
    assert churn.series == [], f"{len(churn.series)} series of deleted TaskFineTunes, e.g. {churn.series[:4]}"


def test_churn_memory_is_bounded(churn: Churn) -> None:
    """Once warm, the operator's RSS stays flat however many TaskFineTunes come and go: the
    typical round (the median of the rounds after the first) adds less than 5 MiB. Thread pools
    grow as work queues up, in one step of ~25 MiB (a new thread's malloc arena) whose round
    depends on the load: round 1 on a quiet machine, round 3 or 4 with four test lanes beside it
    ([157.2, 157.7, 157.5, 184.9, 185.3] MiB failed a check of the last round against the
    third). A leak of the size the issue measured (~0.7 MiB per TaskFineTune, 21 MiB a round)
    grows every round, so the median round shows it whatever step comes when."""
    import itertools
    import statistics

    print(f"operator RSS after each churn round (MiB): {[round(r / 1024, 1) for r in churn.rss_kib]}")
    growth = [after - before for before, after in itertools.pairwise(churn.rss_kib)]
    assert len(growth) >= 3, churn.rss_kib
    assert statistics.median(growth[1:]) < 5 * 1024, churn.rss_kib


# --- a restart forgets the operator's manifest reads ----------------------------------------------


def test_a_restart_repeats_no_storage_warning(plane: ControlPlane, k: Kubectl, audit: AuditLog, tmp_path: Path) -> None:
    """A sub-task succeeded but its evaluation cannot be read (the endpoint refuses): the
    status says EvaluationUnreadable and one StorageUnavailable Warning is posted. The
    operator is SIGKILLed and restarted; it knows nothing of its earlier reads, yet the
    status must not flip back to Succeeded and the same Warning must not be posted again
    (found by crash trial seed 424286)."""
    ns, name = "unreadable", "pool"
    reader = Reader(plane.kubeconfig)
    k.namespace(ns)
    operator = ScopedOperator(plane.env(), tmp_path / "operator.log", ns, FAST).start()
    standin = StandIn(plane.kubeconfig, ns, {"kw": [Outcome()]}, seed=5).start()
    try:
        k.apply(taskfinetune(name, ["kw"]), ns)  # storage endpoint http://127.0.0.1:1: nothing listens
        wait_for("the StorageUnavailable Warning", lambda: any(r == "StorageUnavailable" for r, _ in reader.events(ns, name)), timeout=60)
        before = len(audit.history(ns).status_writes(name))
        operator.kill()
        operator.start()
        time.sleep(8)  # the new operator's first read fails at once; one more after its 5 s backoff
        reasons = [next(s["reason"] for s in st["subtasks"] if s["name"] == "kw") for st in audit.history(ns).status_writes(name)[before:]]
        warnings = [m for r, m in reader.events(ns, name) if r == "StorageUnavailable"]
        assert set(reasons) <= {"EvaluationUnreadable"}, f"status reasons written after the restart: {reasons}"
        assert len(warnings) == 1, warnings
    finally:
        standin.stop()
        operator.stop()
        k.run("delete", "namespace", ns, "--wait=false")
