"""Local mode's stand-in for RayJobs: processes read in KubeRay's words, and suspend /
resume behave as KubeRay's (the process stops; a resume starts a new one for the same
attempt, which continues from its checkpoint). Real processes, a sleeping Python."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from anytasktune.attempt import AttemptState
from anytasktune.local.supervisor import LocalJob


def sleeper(tmp: Path, seconds: float = 30, code: int = 0) -> LocalJob:
    argv = [sys.executable, "-c", f"import sys, time; print('working', flush=True); time.sleep({seconds}); sys.exit({code})"]
    return LocalJob("p-a-1", "a", "r1", 1, argv, tmp / "p-a-1.log", "2026-11-25T10:00:00Z")


def wait(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_process_reads_as_kuberay_reports_a_rayjob(tmp_path: Path) -> None:
    job = sleeper(tmp_path)
    assert job.observed().state == AttemptState.Starting  # created, not started
    job.start({})
    assert job.observed().state == AttemptState.Running
    job.stop()
    wait(lambda: not job.alive)
    failed = job.observed()
    assert failed.state == AttemptState.Failed and failed.end_time is not None

    ok = sleeper(tmp_path, seconds=0)
    ok.start({})
    wait(lambda: not ok.alive)
    assert ok.observed().state == AttemptState.Succeeded


def test_suspend_stops_the_process_and_resume_starts_a_new_one(tmp_path: Path) -> None:
    job = sleeper(tmp_path)
    job.start({})
    first = job.proc
    job.suspended = True
    job.stop()
    assert job.observed().state == AttemptState.Paused  # Suspending, then Suspended: never a failure
    wait(lambda: not job.alive)
    assert job.observed().state == AttemptState.Paused and job.observed().deployment_status == "Suspended"
    job.suspended = False
    (tmp_path / "p-a-1.log").unlink(missing_ok=True)
    job.start({})
    assert job.proc is not first and job.observed().state == AttemptState.Running
    assert (tmp_path / "p-a-1.log").exists()  # at once: CI once read it before a late follower thread made it
    wait(lambda: "working" in (tmp_path / "p-a-1.log").read_text())  # the new process's output is followed
    job.stop()
