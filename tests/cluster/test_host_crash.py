"""`make cluster` after a host crash: every process of the cluster gone at once (daemons,
containerd's shims, the pods), everything else left as it was (state on disk, mounts,
network namespaces, iptables chains, the bridge, cgroups).

What CI met: a machine snapshotted while a cluster ran came back with all of that and none
of its processes, and `make cluster` refused to start until someone ran `make cluster-down`.
It now cleans up after the dead cluster itself and comes up. Runs last in the tier (the
conftest orders it), on a cluster this session started, after the other tests used it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import REPO, cluster_is_up

RUN = Path("/run/anytasktune-cluster")  # hack/cluster/lib.sh: the daemons' PID files
CGROUPS = Path("/sys/fs/cgroup")  # the kubelet's cgroupRoot is anytasktune: in each v1 hierarchy, or v2's one tree


def test_make_cluster_cleans_up_after_a_crashed_cluster_and_comes_back(cluster: Cluster) -> None:
    if not cluster.started_here:
        pytest.skip("the cluster was up before this session: it is not ours to crash")
    cluster.crashed = True
    killed = crash_the_cluster()
    assert killed >= 8, f"only {killed} processes of the cluster were found to kill"
    assert not cluster_is_up()

    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "hack/cluster/up.sh")], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    cluster.figures["crashed_cluster_back_up_s"] = round(time.monotonic() - t0, 1)

    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "daemons are gone but what they left is here; cleaning it up first" in proc.stderr
    assert "[cluster] clean" in proc.stderr, proc.stderr[-4000:]  # down.sh's check-clean.sh passed
    assert cluster_is_up()
    node = cluster.kube.get("nodes")["items"][0]
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"


def crash_the_cluster() -> int:
    """SIGKILL every process of the cluster at once, as a host crash would; how many."""
    pids = {int(f.read_text()) for f in RUN.glob("*.pid") if f.read_text().strip()}
    sock = str(RUN / "containerd")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmdline and sock in cmdline:
                pids.add(int(proc.name))
    for root in [CGROUPS / "anytasktune", *CGROUPS.glob("*/anytasktune")]:
        for procs in root.rglob("cgroup.procs") if root.is_dir() else []:
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except OSError:  # a pod's cgroup removed meanwhile
                continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(pids)
