"""The cluster tier's harness: the single-node cluster of `make cluster`, the images of
hack/images/build.sh, an S3 server on the host reachable from pods, tiny training data,
watchers that record what the real KubeRay writes, and a memory sampler.

Used by tests/cluster (pytest) and by tests/fixtures/kuberay/record.py (which records the
RayJob status sequences the planner's unit tests replay). Nothing here fakes Kubernetes
or KubeRay: every object is applied to the real API server and run by the real kubelet.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ANYTASKTUNE_CACHE") or Path.home() / ".cache" / "anytasktune")
STATE = Path(os.environ.get("ANYTASKTUNE_CLUSTER_STATE") or "/var/lib/anytasktune-cluster")
KUBECONFIG = STATE / "kubeconfig"
BRIDGE_IP = "10.217.0.1"  # hack/cluster/lib.sh: pods reach the host here
KUBECTL = os.environ.get("KUBECTL") or "kubectl"
HELM = CACHE / "bin" / "helm"
BUCKET = "anytasktune-cluster"
INSTRUCTION = "Classify the sentiment of the review as positive or negative."

sys.path.insert(0, str(REPO / "tests" / "fixtures"))

T = TypeVar("T")


class ClusterError(RuntimeError):
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 120.0, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (AssertionError, ClusterError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


# ------------------------------------------------------------------------- the cluster
def cluster_is_up() -> bool:
    if not KUBECONFIG.exists():
        return False
    proc = subprocess.run([KUBECTL, f"--kubeconfig={KUBECONFIG}", "get", "--raw", "/readyz"],
                          capture_output=True, text=True, timeout=20)
    return proc.returncode == 0


def make(script: str, *args: str, timeout: float = 3600, env: dict[str, str] | None = None) -> float:
    """Run one of hack/'s scripts (make cluster, cluster-down, images); seconds it took."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / script), *args], cwd=REPO, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    sys.stderr.write(proc.stdout[-6000:])
    if proc.returncode != 0:
        raise ClusterError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return time.monotonic() - t0


def snapshot(tmp: Path, rev: str = "HEAD") -> tuple[Path, str]:
    """contract/, operator/, trainjob/ of a commit (not the working tree, which may be mid-edit)
    with this tree's docker/: a source for hack/images/build.sh and render_children."""
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "contract", "operator", "trainjob"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run(["cp", "-r", str(REPO / "docker"), str(src / "docker")], check=True)
    return src, commit


def image_refs() -> dict[str, str]:
    refs = {}
    for line in (CACHE / "images" / "refs.env").read_text().splitlines():
        key, _, value = line.partition("=")
        refs[key] = value
    return refs


class Kube:
    """kubectl against the cluster, as its admin."""

    def __init__(self, kubeconfig: Path = KUBECONFIG) -> None:
        self.kubeconfig = kubeconfig

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        cmd = [KUBECTL, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd[2:])} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def get(self, kind: str, name: str | None = None, namespace: str | None = None, check: bool = True) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        out = self.run(*args, check=check)
        return json.loads(out) if out.strip() else None

    def apply(self, *objects: dict[str, Any], server_side: bool = True) -> None:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.run("apply", *(["--server-side", "--force-conflicts"] if server_side else []), "-f", "-", input=doc)

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, "labels": labels or {}}
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    def delete_namespace(self, name: str, timeout: float = 180) -> None:
        self.run("delete", "namespace", name, "--ignore-not-found", f"--timeout={int(timeout)}s", timeout=timeout + 10)

    def secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": namespace}, "stringData": data})

    def logs(self, namespace: str, target: str, *args: str) -> str:
        return self.run("logs", "-n", namespace, target, *args, check=False)


def items(kube: Kube, kind: str, namespace: str, *selector: str) -> list[str]:
    """Names of the objects of a kind in the namespace (with a label selector if given)."""
    args = ["-l", ",".join(selector)] if selector else []
    return kube.run("get", kind, "-n", namespace, *args, "-o", "name", check=False).split()


# -------------------------------------------------------------------------------- S3
def start_s3(data_dir: Path) -> Any:
    """The project's embedded S3 server (SeaweedFS) bound to the bridge address, so pods
    reach it at http://10.217.0.1:<port>."""
    from anytasktune.s3server import EmbeddedS3

    return EmbeddedS3(data_dir, buckets=[BUCKET], host=BRIDGE_IP).start()


@dataclass
class TrainingData:
    model_uri: str
    datasets: dict[str, str] = field(default_factory=dict)


def upload_training_data(s3: Any, workdir: Path, n_records: int = 96) -> TrainingData:
    """A tiny Qwen2-shaped model built here (no download) and sentiment datasets: a good
    one, one for a second sub-task, and a broken one (a line that is not JSON)."""
    import tinymodel

    records = tinymodel.sentiment_records(n_records, seed=1)
    folder = tinymodel.save_tiny_model(workdir / "tiny-model", tinymodel.training_texts(records, INSTRUCTION))
    client = s3.client()
    tinymodel.upload_folder(client, folder, BUCKET, "models/tiny-qwen2")
    data = TrainingData(model_uri=f"s3://{BUCKET}/models/tiny-qwen2/")
    for name, recs in (("sentiment", records), ("sentiment-b", tinymodel.sentiment_records(n_records, seed=2))):
        client.put_object(Bucket=BUCKET, Key=f"data/{name}.jsonl", Body=tinymodel.to_jsonl(recs).encode())
        data.datasets[name] = f"s3://{BUCKET}/data/{name}.jsonl"
    broken = tinymodel.to_jsonl(records[:40]) + '{"input": "cut in the mid\n' + tinymodel.to_jsonl(records[40:])
    client.put_object(Bucket=BUCKET, Key="data/broken.jsonl", Body=broken.encode())
    data.datasets["broken"] = f"s3://{BUCKET}/data/broken.jsonl"
    return data


def taskfinetune(name: str, namespace: str, *, data: TrainingData, endpoint: str, subtasks: dict[str, str],
                 image: str, max_steps: int = 12, epochs: int = 10, workers: int = 1, **cluster: Any) -> dict[str, Any]:
    """A TaskFineTune for the tiny model: subtasks maps sub-task name -> dataset name."""
    shape: dict[str, Any] = {
        "workers": workers, "gpusPerWorker": 0, "cpusPerWorker": "500m", "memoryPerWorker": "4Gi",
        "head": {"cpu": "300m", "memory": "4Gi"}, "image": image, "imagePullPolicy": "Never",
        "ttlSecondsAfterFinished": 30,
    }
    shape.update(cluster)
    return {
        "apiVersion": "anytasktune.io/v1alpha1",
        "kind": "TaskFineTune",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "domain": "reviews",
            "baseModel": {"uri": data.model_uri},
            "storage": {"output": f"s3://{BUCKET}/adapters/", "endpoint": endpoint, "region": "us-east-1",
                        "addressingStyle": "path", "credentialsSecret": {"name": "s3-credentials"}},
            "defaults": {
                # LoRA alone barely moves a random model; a trainable lm_head copy learns the labels.
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"], "modulesToSave": ["lm_head"]},
                "training": {"epochs": epochs, "maxSteps": max_steps, "learningRate": 1e-2, "microBatchSize": 8,
                             "maxSeqLength": 96, "warmupRatio": 0.1, "checkpointEverySteps": 4, "logEverySteps": 2, "seed": 7},
                "deepspeed": {"zeroStage": 2},
                "evaluation": {"holdout": 0.15, "maxNewTokens": 4, "batchSize": 8, "maxSamples": 8},
                "dataContract": {"minSamples": 10},
            },
            "subtasks": [{"name": sub, "dataset": {"uri": data.datasets[ds], "format": "taskfinetune"},
                          "instruction": INSTRUCTION, "taskType": "classification"} for sub, ds in subtasks.items()],
            "cluster": shape,
            "maxParallelSubtasks": 2,
            "backoffLimit": 1,
        },
    }


def render_children(tft: dict[str, Any], image: str, tmp: Path, source: Path | None = None) -> list[dict[str, Any]]:
    """`anytasktune render -o json`: the RayJob of each sub-task's first attempt,
    without the placeholder ownerReference (no TaskFineTune owns them when applied alone).
    `source`: render with the operator and contract packages of that tree (a snapshot)."""
    path = tmp / f"{tft['metadata']['name']}.json"
    path.write_text(json.dumps(tft))
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source / "operator"), str(source / "contract")])
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "anytasktune.cli", "render", str(path), "-o", "json",
                           "--image", image], capture_output=True, text=True, cwd=tmp, env=env)
    if proc.returncode != 0:
        raise ClusterError(f"anytasktune render failed: {proc.stderr}")
    out = proc.stdout
    items = json.loads(out)["items"]
    for item in items:
        item["metadata"].pop("ownerReferences", None)
    return items


# ------------------------------------------------------------------------- figures
# The operator's own counts, read in its pod after each test of the tier: how many passes each
# cause queued, and how many of real KubeRay's RayJob and RayCluster events changed nothing a
# pass reads (and so queued none). Figures, not assertions; bench-operator-scale reads them too.
SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=10).read().decode())"
COUNTED = {"anytasktune_reconcile_passes_total": "passes", "anytasktune_child_events_total": "child_events"}


def operator_counts(metrics_text: str) -> dict[str, dict[str, float]]:
    """{"passes": {trigger: n}, "child_events": {"rayjob changed=false": n, ...}} from a /metrics page."""
    out: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        name, _, rest = line.partition("{")
        if name in COUNTED and rest:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', rest.partition("}")[0]))
            key = labels["trigger"] if "trigger" in labels else f"{labels.get('kind')} changed={labels.get('changed')}"
            out.setdefault(COUNTED[name], {})[key] = float(line.split()[-1])
    return out


# ------------------------------------------------------------------------- recording
# Everything KubeRay writes to RayJob.status but the embedded copy of the RayCluster's status
# (replica counts, endpoints, head IP: noise for whoever plans from the job's state).
OMITTED_STATUS_FIELDS = ("rayClusterStatus",)


class RayJobWatcher:
    """Every write KubeRay makes to one RayJob, from a `kubectl get -w` stream (watch
    events, not polling): each distinct (.spec.suspend, .status, deleting) with the time
    it was observed. Runs in a thread until stop()."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last: Any = None
        self._lock = threading.Lock()

    def start(self) -> RayJobWatcher:
        self._thread.start()
        return self

    def mark(self, what: str) -> None:
        """Note what the test did (deleted a pod, suspended...), on the same clock."""
        with self._lock:
            self.marks.append({"at": round(time.monotonic() - self.t0, 2), "observed": now_iso(), "action": what})

    def _run(self) -> None:
        while self._proc is None or self._proc.poll() is not None:
            if getattr(self, "_stopping", False):
                return
            self._proc = subprocess.Popen(
                [KUBECTL, f"--kubeconfig={self.kube.kubeconfig}", "get", "rayjob", self.name, "-n", self.namespace,
                 "--watch", "--output-watch-events", "-o", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            decoder = json.JSONDecoder()
            buf = ""
            assert self._proc.stdout
            for line in self._proc.stdout:
                buf += line
                try:
                    event, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    continue
                buf = buf.lstrip()[end:]
                self._observe(event)
            time.sleep(0.5)  # the watch ended (object deleted or a timeout): look again

    def _observe(self, event: dict[str, Any]) -> None:
        obj = event.get("object", {})
        status = {k: v for k, v in (obj.get("status") or {}).items() if k not in OMITTED_STATUS_FIELDS}
        key = json.dumps([obj.get("spec", {}).get("suspend", False), status, event.get("type") == "DELETED",
                          "deletionTimestamp" in obj.get("metadata", {})], sort_keys=True)
        with self._lock:
            if key == self._last:
                return
            self._last = key
            self.events.append({
                "at": round(time.monotonic() - self.t0, 2),
                "observed": now_iso(),
                "event": event.get("type"),
                "suspend": obj.get("spec", {}).get("suspend", False),
                "deleting": "deletionTimestamp" in obj.get("metadata", {}),
                "status": status,
            })

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return self.events[-1]["status"] if self.events else {}

    def stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def terminal(status: dict[str, Any]) -> bool:
    return status.get("jobDeploymentStatus") in ("Complete", "Failed")


# ---------------------------------------------------------------------------- memory
def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def _pods_memory() -> int:
    """Memory charged to every pod (the kubelet's cgroup root of the cluster), without page cache."""
    for path in (Path("/sys/fs/cgroup/memory/anytasktune/memory.stat"), Path("/sys/fs/cgroup/anytasktune/memory.stat")):
        if path.exists():
            stat = dict(line.split() for line in path.read_text().splitlines())
            keys = ("total_rss", "total_shmem") if "total_rss" in stat else ("anon", "shmem")
            return sum(int(stat.get(k, 0)) for k in keys)
    return 0


def _daemons_rss() -> int:
    """RSS of the cluster's host processes (PID files of hack/cluster/up.sh)."""
    total = 0
    for pidfile in Path("/run/anytasktune-cluster").glob("*.pid"):
        try:
            status = Path(f"/proc/{pidfile.read_text().strip()}/status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class MemorySampler:
    """Peaks, sampled every second: pods (cgroup), the cluster's host daemons (RSS), and
    the whole machine (MemTotal - MemAvailable)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.peak = {"pods": 0, "daemons": 0, "pods_plus_daemons": 0, "machine_used": 0}
        info = _meminfo()
        self.baseline_machine_used = info["MemTotal"] - info["MemAvailable"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            info = _meminfo()
            pods, daemons = _pods_memory(), _daemons_rss()
            sample = {"pods": pods, "daemons": daemons, "pods_plus_daemons": pods + daemons,
                      "machine_used": info["MemTotal"] - info["MemAvailable"]}
            for k, v in sample.items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        gib = {k: round(v / 2**30, 2) for k, v in self.peak.items()}
        gib["machine_used_at_start"] = round(self.baseline_machine_used / 2**30, 2)
        return gib


# ------------------------------------------------------------------ a TaskFineTune's progress
STEP = re.compile(r"\bstep (\d+)/(\d+)\b")
FINISHED = ("Succeeded", "Failed", "Invalid")


def training_logs(kube: Kube, namespace: str) -> str:
    """The drivers' output: KubeRay's submitter Jobs follow `ray job logs`."""
    jobs = kube.get("jobs", namespace=namespace)["items"]
    return "".join(kube.logs(namespace, f"job/{j['metadata']['name']}") for j in jobs)


def status_of(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    return dict(kube.get("taskfinetune", name, namespace).get("status") or {})


def wait_finished(kube: Kube, name: str, namespace: str, timeout: float = 1200) -> dict[str, Any]:
    """The TaskFineTune's status once its phase is Succeeded, Failed or Invalid."""
    def finished() -> dict[str, Any] | None:
        s = status_of(kube, name, namespace)
        return s if s.get("phase") in FINISHED else None

    return wait_for(f"{name} to finish", finished, timeout=timeout, interval=3)


def recorded_where(kueue: str | None = None) -> str:
    """Where a recorded fixture (tests/fixtures/kuberay) was taken, in words."""
    v = recorded_versions()
    operators = f"the KubeRay operator {v['kuberay']}" + (f" and Kueue {kueue} as Deployments in it (hack/cluster/kueue.sh)"
                                                           if kueue else " as a Deployment in it")
    return (f"make cluster: single-node Kubernetes {v['kubernetes']} (containerd {v['containerd']}, runc 1.1.5) on a "
            f"2-core Debian 12 VM ({platform.machine()}), {operators}, images built by hack/images/build.sh")


def recorded_versions() -> dict[str, str]:
    """The versions a recorded fixture (tests/fixtures/kuberay) names: KubeRay's from its pinned module."""
    kuberay = subprocess.run(["go", "list", "-m", "-f", "{{.Version}}", "github.com/ray-project/kuberay/ray-operator"],
                             cwd=REPO / "hack" / "kuberay", capture_output=True, text=True).stdout.strip()
    return {"kuberay": kuberay or "v1.4.2", "kubernetes": "v1.32.13", "containerd": "1.6.20", "ray": "2.60.0"}
