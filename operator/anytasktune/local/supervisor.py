"""Local mode, supervision: trainjob processes standing in for RayJobs.

A launch becomes `python -m anytasktune_trainjob --spec …`, a driver on one local Ray
cluster started for the run. `LocalExecutor` implements the operator's `Executor`, so
the same `executor.reconcile` drives both: retries, backoff, failure classes,
parallelism, suspend and manifest reads behave as in a cluster. Each process reads as
a RayJob would in KubeRay's words (`observed`): running, Complete/SUCCEEDED, Failed
with its output's tail as the message, or Suspended.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from anytasktune.actions import Launch, Plan
from anytasktune.attempt import ObservedJob, format_time
from anytasktune.config import OperatorConfig, ReadRule, StorageReadPolicy
from anytasktune.executor import ManifestReads, reconcile
from anytasktune.render import LABEL_ATTEMPT, LABEL_RUN_ID, LABEL_SUBTASK, spec_json_of
from anytasktune.spec import Phase
from anytasktune.summary import Event
from anytasktune_contract.storage import ObjectStore

# One user, their own storage and credentials: local mode reads every record it finds
# (the read policy guards tenants from each other in a cluster; there is one here).
LOCAL_CONFIG = OperatorConfig(retry_backoff_seconds=5, retry_backoff_max_seconds=60, manifest_backoff_seconds=2,
                              manifest_backoff_max_seconds=10,
                              storage_read_policy=StorageReadPolicy((ReadRule(("*",), ("*",), ("s3://",)),)))
PROGRESS_RE = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) epoch \d+ loss (?P<loss>[\d.]+) lr \S+ tok/s (?P<toks>[\d,]+) eta (?P<eta>[\d:]+)"
)
END_STATES = (Phase.Succeeded, Phase.Failed, Phase.Invalid, Phase.Suspended)


@dataclass
class LocalJob:
    """One attempt: the process running it now (a resume starts a new one)."""

    name: str
    subtask: str
    run_id: str
    attempt: int
    argv: list[str]
    log_path: Path
    created: str
    proc: subprocess.Popen[str] | None = None
    started: str | None = None
    ended: str | None = None
    suspended: bool = False
    tail: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    stage: str = "starting"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            errors="replace", start_new_session=True,  # Ctrl-C reaches us first; we stop the children cleanly
        )
        self.started, self.ended, self.stage, self.progress = format_time(datetime.now(timezone.utc)), None, "starting", {}
        # Opened here, not in the follower thread: a started job has its log file at once (a
        # thread that starts late under load left it missing for a moment).
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the follower closes it
        threading.Thread(target=self._follow, args=(self.proc, log), daemon=True).start()

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)

    def observed(self) -> ObservedJob:
        code = self.proc.poll() if self.proc is not None else None
        if self.suspended:
            status = ("Suspended", "") if not self.alive else ("Suspending", "")
        elif code is None:
            status = ("Running", "RUNNING") if self.proc is not None else ("New", "")
        else:
            status = ("Complete", "SUCCEEDED") if code == 0 else ("Failed", "FAILED")
            if self.ended is None:
                self.ended = format_time(datetime.now(timezone.utc))
        return ObservedJob(
            name=self.name, subtask=self.subtask, run_id=self.run_id, attempt=self.attempt, suspend=self.suspended,
            deployment_status=status[0], job_status=status[1], message="\n".join(self.tail[-30:]) if code else "",
            start_time=self.started, end_time=self.ended if status[0] in ("Complete", "Failed") else None, created=self.created,
        )

    def _follow(self, proc: subprocess.Popen[str], log: TextIO) -> None:
        """Read the process output: keep the tail, parse progress, append to the log."""
        assert proc.stdout is not None
        with log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                self.tail = (self.tail + [line])[-200:]
                if (m := PROGRESS_RE.search(line)) is not None:
                    self.stage = "training"
                    self.progress = {"step": int(m["step"]), "total": int(m["total"]), "loss": float(m["loss"]),
                                     "tokens_per_s": float(m["toks"].replace(",", "")), "eta": m["eta"]}
                elif "evaluat" in line.lower() and "[anytasktune]" in line:
                    self.stage = "evaluating"
                elif "data contract passed" in line:
                    self.stage = "data ok"


class LocalExecutor:
    """The operator's Executor, on this machine: a spec file and a process for each RayJob."""

    def __init__(self, workdir: Path, env: dict[str, str], ray_address: str, store: ObjectStore, reads: ManifestReads,
                 on_event: Callable[[Event], None]) -> None:
        self.workdir = workdir
        self.env = env
        self.ray_address = ray_address
        self.store = store
        self.reads = reads
        self.on_event = on_event
        self.jobs: dict[str, LocalJob] = {}
        self.status: dict[str, Any] = {}

    def create(self, launch: Launch) -> None:
        if launch.name in self.jobs:  # idempotent, as a 409 is for the operator
            return
        spec_path = self.workdir / "specs" / f"{launch.name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec_json_of(launch.rayjob), encoding="utf-8")
        log_path = self.workdir / "logs" / f"{launch.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        labels = launch.rayjob["metadata"]["labels"]
        argv = [sys.executable, "-m", "anytasktune_trainjob", "--spec", str(spec_path), "--ray-address", self.ray_address]
        job = LocalJob(launch.name, labels[LABEL_SUBTASK], labels[LABEL_RUN_ID], int(labels[LABEL_ATTEMPT]), argv, log_path,
                       format_time(datetime.now(timezone.utc)), suspended=bool(launch.rayjob["spec"].get("suspend")))
        self.jobs[launch.name] = job
        if not job.suspended:
            job.start(self.env)

    def create_all(self, launches: list[Launch]) -> None:
        for launch in launches:
            self.create(launch)

    def delete_job(self, name: str) -> None:
        job = self.jobs.pop(name, None)
        if job is not None:
            job.stop()

    def release_cluster(self, job: str) -> None:
        """Nothing to release: every process is a driver on the one local Ray cluster."""

    def create_cluster(self, raycluster: dict[str, Any]) -> None:
        """Never asked for: `run_until_done` plans every pool as PerSubtask (see `one_local_cluster`)."""

    def delete_cluster(self, name: str) -> None:
        """Never asked for, as `create_cluster`."""

    def set_suspend(self, name: str, suspend: bool) -> None:
        job = self.jobs.get(name)
        if job is None or job.suspended == suspend:
            return
        job.suspended = suspend
        if suspend:
            job.stop()
        else:  # as KubeRay does on resume: a new process; the trainjob continues from its checkpoint
            job.start(self.env)

    def read_manifest(self, uri: str) -> None:
        if not self.reads.begin(uri):
            return
        try:
            self.reads.succeeded(uri, self.store.get_bytes(uri)[0])
        except Exception as err:  # noqa: BLE001 - shown in the status, retried with backoff
            self.reads.failed(uri, f"{type(err).__name__}: {err}", datetime.now(timezone.utc))

    def post_events(self, events: list[Event]) -> None:
        for event in events:  # one line each on the console
            self.on_event(event)

    def write_status(self, status: dict[str, Any]) -> None:
        self.status = {k: v for k, v in status.items() if v is not None}

    def observe(self) -> list[ObservedJob]:
        return [j.observed() for j in self.jobs.values()]

    def running(self) -> bool:
        return any(j.alive for j in self.jobs.values())

    def stop_all(self, grace: float = 20.0) -> None:
        for job in self.jobs.values():
            job.stop()
        deadline = time.monotonic() + grace
        for job in self.jobs.values():
            if job.proc is None:
                continue
            try:
                job.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(job.proc.pid, signal.SIGKILL)


def one_local_cluster(obj: dict[str, Any]) -> dict[str, Any]:
    """Locally every sub-task is a driver on the one local Ray cluster, whatever cluster.mode
    says: a Shared pool is planned as PerSubtask, which here means the same thing."""
    spec = dict(obj.get("spec") or {})
    spec["cluster"] = {**(spec.get("cluster") or {}), "mode": "PerSubtask"}
    return {**obj, "spec": spec}


def run_until_done(obj: dict[str, Any], executor: LocalExecutor, refresh: Callable[[], None], interval: float = 1.0) -> None:
    """Passes every `interval` seconds until the pool ends (or is suspended) and nothing runs."""
    obj = one_local_cluster(obj)
    while True:
        result: Plan = reconcile({**obj, "status": executor.status}, executor.observe(), executor.reads,
                                 datetime.now(timezone.utc), LOCAL_CONFIG, executor)
        refresh()
        settled = not result.actions  # nothing launched, stopped or read this pass
        if result.status.phase in END_STATES and settled and not executor.running():
            return
        time.sleep(interval)


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[str]:
    """A Ray cluster for this run: every trainjob subprocess is a driver on it."""
    # One machine: keep every Ray process on loopback, and keep Ray's token
    # authentication on; drivers started later inherit both settings from this env.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    ctx: Any = ray.init(num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                        configure_logging=False)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
