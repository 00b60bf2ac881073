"""Operator scale on the real API server: N TaskFineTunes x 10 sub-tasks, the operator of
this tree beside a baseline operator (another commit, from a git worktree), in
interleaved rounds, each variant on a control plane started for it.

A stand-in for KubeRay writes each RayJob's status through the status subresource in the
order KubeRay v1.4 does (Initializing -> Running/RUNNING -> Running/SUCCEEDED ->
Complete/SUCCEEDED with endTime), from a thread pool, and a watch on the TaskFineTunes
records when each sub-task's status reflects the change. Printed per variant and N:

- all RayJobs exist: seconds from the first apply until every RayJob was created;
- Running / Succeeded p50, p95, p99: from the RayJob status write to the parent's status;
- peak RSS of the operator process (VmHWM);
- API requests per reconciled change: the operator's requests (audit log, by user agent)
  divided by the number of RayJob status changes it had to reflect;
- operator CPU: user + system seconds the operator process used over the whole run;
  passes and their mean duration from its `anytasktune_reconcile_duration_seconds`.

    .venv/bin/python bench/bench_operator_scale.py --sizes 10,100 [--baseline ef68e83[,COMMIT...]] [--rounds 1]
        [--until created]     # stop each variant once its RayJobs exist: the creation phase alone
        [--profile DIR]   # py-spy (on PATH) samples this tree's operator: DIR/<namespace>.txt, collapsed stacks
        [--tracemalloc DIR]   # this tree's operator under tracemalloc: DIR/<namespace>.txt, what it holds at the end
        [--keep-logs DIR]     # each operator's log, DIR/<namespace>.log (otherwise removed)
        [--rate 100]          # the stand-in's status writes at 100/s (open loop), not as fast as 8 threads go
        [--s3 off|on|both]    # on: a real S3 server holding each run's manifest.json, put just before
                              # the run's SUCCEEDED as the trainjob does; off (default): the TaskFineTunes
                              # point at an endpoint where nothing listens, so every manifest read fails
                              # and is retried with backoff (the worst case, not the usual one); both:
                              # each variant twice, interleaved, "+s3" marking the runs with it

Each variant gets a kube-apiserver and etcd started for it and stopped after it: on one
shared control plane, the namespace controller's deletion of the previous variant's 10,000
RayJobs slowed the next one's creation by half while it overlapped it, and after waiting for
it to end, the second variant of a pair at N=1,000 was still the slower in every pair,
whichever operator it was.

Read ratios between the two variants measured in the same run, not absolute seconds:
the machine is shared. Nothing here is a timed assertion.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytasktune.config import OperatorConfig  # noqa: E402
from anytasktune.s3server import EmbeddedS3  # noqa: E402
from anytasktune.workqueue import Trigger  # noqa: E402
from tests.cluster.harness import operator_counts  # noqa: E402
from tests.integration.helpers import OperatorProcess, metrics_text, s3_credentials  # noqa: E402
from tests.kube.controlplane import ControlPlane  # noqa: E402

SUBTASKS = 10
DRIVER_AGENT = "anytasktune-bench-driver"
STATUS_SEQUENCE = [  # the status writes of KubeRay v1.4 for a RayJob that succeeds, in order
    {"jobDeploymentStatus": "Initializing"},
    {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-25T10:00:00Z"},
    {"jobStatus": "SUCCEEDED"},  # KubeRay: jobStatus first, seconds before the rest
    {"jobDeploymentStatus": "Complete", "endTime": "2026-11-25T10:30:00Z"},
]
# The operator's own defaults, over the integration tests' short ones (OperatorProcess: a 2 s
# resync). Until 2026-11-27 the bench set the resync in the wrong place and every run used 2 s:
# at 1,000 TaskFineTunes that asked for ~400 passes a second.
_DEFAULTS = OperatorConfig()
PRODUCTION_TIMINGS = {"ANYTASKTUNE_RESYNC_SECONDS": f"{_DEFAULTS.resync_seconds:g}",
                      "ANYTASKTUNE_RETRY_BACKOFF_SECONDS": f"{_DEFAULTS.retry_backoff_seconds:g}",
                      "ANYTASKTUNE_RETRY_BACKOFF_MAX_SECONDS": f"{_DEFAULTS.retry_backoff_max_seconds:g}"}
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}


MANIFESTS = {"off": "unreachable (every read fails and is retried)", "on": "in a real S3 server",
             "both": "unreachable, and in a real S3 server for the variants marked +s3"}
UNREACHABLE_S3 = "http://127.0.0.1:1"  # nothing listens: every manifest read fails at once
MANIFEST_BUCKET = "adapters"


def taskfinetune(name: str, endpoint: str = UNREACHABLE_S3) -> dict[str, Any]:
    return {
        "apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune", "metadata": {"name": name},
        "spec": {
            "domain": "bench", "baseModel": {"uri": "s3://models/base/"},
            "storage": {"output": f"s3://{MANIFEST_BUCKET}/", "endpoint": endpoint, "addressingStyle": "path"},
            "subtasks": [{"name": f"s{i}", "dataset": {"uri": f"s3://data/s{i}.jsonl"}, "instruction": "Do it."} for i in range(SUBTASKS)],
            "cluster": {"workers": 1, "gpusPerWorker": 0}, "maxParallelSubtasks": SUBTASKS,
        },
    }


def kube_clients(kubeconfig: Path) -> tuple[Any, Any]:
    import kubernetes

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=config)
    config.connection_pool_maxsize = 32
    api = kubernetes.client.ApiClient(config)
    api.user_agent = DRIVER_AGENT
    return kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)


class Recorder:
    """When each (namespace, tft, sub-task) first showed a phase in the TaskFineTune's status."""

    def __init__(self, custom: Any, namespace: str) -> None:
        self.seen: dict[tuple[str, str, str], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        threading.Thread(target=self._watch, args=(custom, namespace), daemon=True).start()

    def _watch(self, custom: Any, namespace: str) -> None:
        import kubernetes

        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for event in w.stream(custom.list_namespaced_custom_object, "anytasktune.io", "v1alpha1", namespace,
                                      "taskfinetunes", timeout_seconds=30):
                    now = time.monotonic()
                    obj = event["object"]
                    for st in (obj.get("status") or {}).get("subtasks", []):
                        key = (obj["metadata"]["name"], st["name"], st.get("phase", ""))
                        with self.lock:
                            self.seen.setdefault(key, now)
                    if self.stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is restarted
                time.sleep(0.2)

    def wait(self, keys: list[tuple[str, str, str]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(k in self.seen for k in keys):
                    return
            time.sleep(0.2)
        missing = [k for k in keys if k not in self.seen]
        raise TimeoutError(f"{len(missing)} of {len(keys)} never shown, e.g. {missing[:3]}")


def rayjob_count(custom: Any, namespace: str) -> int:
    """How many RayJobs the namespace holds, from a one-item page and its remainingItemCount:
    listing them all every half second (10,000 objects with two pod templates each) made
    this poll the API server's biggest client while the operator created them."""
    page = custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", limit=1)
    return len(page["items"]) + (page["metadata"].get("remainingItemCount") or 0)


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set; VmRSS: now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (utime and stime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's estimate: linear inside the bucket that holds the q-th observation.
    `buckets`: (upper bound, cumulative count), ascending, +Inf last."""
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower  # beyond the largest bound: Prometheus answers that bound
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
        lower, below = upper, count
    return lower


def pass_metrics(op: OperatorProcess) -> dict[str, float]:
    """Reconcile passes and their mean duration, and the work queue's wait before a pass
    (p50, p99, mean), from the operator's own histograms (an operator without them, or
    without a metrics port, gives NaN)."""
    nan = float("nan")
    try:
        text = metrics_text(op.metrics_port)
    except Exception:  # noqa: BLE001 - the baseline may have no metrics port
        return {"passes": nan, "pass_mean_s": nan, "wait_p50_s": nan, "wait_p99_s": nan, "wait_mean_s": nan}
    samples = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("anytasktune_reconcile_duration_seconds_")}
    count = samples.get("anytasktune_reconcile_duration_seconds_count", nan)
    out = {"passes": count, "pass_mean_s": samples.get("anytasktune_reconcile_duration_seconds_sum", nan) / count if count else nan}
    out |= queue_waits(text)
    # Passes by what made them due, and child events that queued none (operators that count them).
    counts = operator_counts(text)
    out |= {f"passes_{trigger}": n for trigger, n in counts.get("passes", {}).items()}
    if unchanged := [n for key, n in counts.get("child_events", {}).items() if key.endswith("changed=false")]:
        out["child_events_unchanged"] = sum(unchanged)
    return out


def queue_waits(text: str) -> dict[str, float]:
    """The work queue's wait (p50, p99, mean) from its histogram in the metrics `text`, summed
    over any labels (an operator without it gives NaN)."""
    buckets: dict[float, float] = {}
    total = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        match = re.match(r"anytasktune_workqueue_wait_seconds(_bucket|_sum|_count)(?:\{(.*)\})? (\S+)$", line)
        if not match:
            continue
        if match[1] == "_bucket":
            upper = float(dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))["le"].replace("+Inf", "inf"))
            buckets[upper] = buckets.get(upper, 0.0) + float(match[3])
        else:
            total[match[1]] += float(match[3])
    nan = float("nan")
    ordered = sorted(buckets.items())
    return {"wait_p50_s": histogram_quantile(0.5, ordered) if ordered else nan,
            "wait_p99_s": histogram_quantile(0.99, ordered) if ordered else nan,
            "wait_mean_s": total["_sum"] / total["_count"] if total["_count"] else nan}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def drive(pool: ThreadPoolExecutor, fn: Callable[[str], None], names: list[str], rate: float | None = None) -> dict[str, float]:
    """Apply fn to every name from the pool; the monotonic time each write finished. As fast
    as the pool's threads go (closed loop: the API server saturates), or, with `rate`, one
    write started every 1/rate s (open loop: a pace the API server can keep)."""
    written: dict[str, float] = {}

    def one(name: str) -> None:
        fn(name)
        written[name] = time.monotonic()

    if rate is None:
        list(pool.map(one, names))
        return written
    start = time.monotonic()
    futures = []
    for i, name in enumerate(names):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        futures.append(pool.submit(one, name))
    for future in futures:
        future.result()
    return written


# Loaded by the operator's interpreter (first on its PYTHONPATH) under --tracemalloc: traces
# allocations from SIGUSR1 (sent just before the first apply, so start-up's imports, slow
# under tracing, are not traced: they are not what grows with N) and dumps what is still
# held on SIGUSR2.
TRACEMALLOC_SITECUSTOMIZE = """
import os, signal, tracemalloc
_out = os.environ.get("ANYTASKTUNE_BENCH_TRACEMALLOC")
if _out:
    def _dump(*_):
        tracemalloc.take_snapshot().dump(_out + ".part")
        os.rename(_out + ".part", _out)  # whole, or not there
    signal.signal(signal.SIGUSR1, lambda *_: tracemalloc.start(6))
    signal.signal(signal.SIGUSR2, _dump)
"""


def memory_report(snapshot_path: Path, out: Path, top: int = 40) -> None:
    """What the operator held at the end: the biggest allocation sites, and by file."""
    import tracemalloc

    snapshot = tracemalloc.Snapshot.load(str(snapshot_path)).filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")])
    lines = [f"total traced: {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB", "", "by file:"]
    lines += [f"{s.size / 2**20:8.1f} MiB {s.count:9d} {s.traceback[0].filename}" for s in snapshot.statistics("filename")[:top]]
    lines += ["", "by allocation site (innermost frame last):"]
    for stat in snapshot.statistics("traceback")[:top]:
        lines.append(f"{stat.size / 2**20:8.1f} MiB {stat.count:9d}")
        lines += [f"      {frame.filename}:{frame.lineno}" for frame in stat.traceback[-6:]]
    out.write_text("\n".join(lines) + "\n")


def tft_and_subtask(job: str) -> tuple[str, str]:
    """("p12", "s3") of RayJob "p12-s3-1"."""
    tft, rest = job.split("-s", 1)
    return tft, "s" + rest.split("-")[0]


def run_ids(custom: Any, namespace: str) -> dict[str, str]:
    """RayJob name -> its run id (the label the manifest's key is made of), in pages."""
    ids: dict[str, str] = {}
    token = None
    while True:
        page = custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", limit=500, _continue=token)
        ids |= {j["metadata"]["name"]: j["metadata"]["labels"]["anytasktune.io/run-id"] for j in page["items"]}
        token = page["metadata"].get("continue")
        if not token:
            return ids


def publisher(s3: Any, namespace: str, custom: Any) -> Callable[[str], None]:
    """Puts a RayJob's run manifest where the operator reads it, as the trainjob does before
    the job ends: `<tft>/<subtask>/<run id>/manifest.json` under the output prefix."""
    client, ids = s3.client(), run_ids(custom, namespace)

    def put(job: str) -> None:
        tft, subtask = tft_and_subtask(job)
        manifest = {"runId": ids[job], "evaluation": {"base": {"f1": 0.2}, "adapter": {"f1": 0.7}, "lift": {"f1": 0.5}}}
        client.put_object(Bucket=MANIFEST_BUCKET, Key=f"{tft}/{subtask}/{ids[job]}/manifest.json", Body=json.dumps(manifest).encode())

    return put


def run_variant(cp: ControlPlane, label: str, tree: Path, n: int, workdir: Path, profile: Path | None = None,
                trace_memory: Path | None = None, rate: float | None = None, s3: Any = None,
                until_created: bool = False) -> dict[str, Any]:
    # Each variant with its own CRD: the API server's defaults must be the ones its models know.
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tree / "manifests" / "crd"))
    time.sleep(2)
    pythonpath = f"{tree}/operator:{tree}/contract:{tree}/trainjob" if tree != ROOT else None
    custom, core = kube_clients(cp.kubeconfig)
    namespace = f"bench-{label.replace('+', '-')}-{n}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    env = {**cp.env(), "PYTHONPATH": pythonpath or ""}
    snapshot = workdir / f"{namespace}.tracemalloc"
    if trace_memory is not None and tree == ROOT:
        (workdir / "sitecustomize.py").write_text(TRACEMALLOC_SITECUSTOMIZE)
        env |= {"PYTHONPATH": str(workdir), "ANYTASKTUNE_BENCH_TRACEMALLOC": str(snapshot)}
    op = OperatorProcess(env, workdir / f"{namespace}.log", extra_env={**PRODUCTION_TIMINGS, **s3_credentials(s3)})
    assert all(op.env[k] == v for k, v in PRODUCTION_TIMINGS.items()), "the operator must run with its production timings"
    _, audit_offset = cp.audit_events()
    op.start()
    time.sleep(4)  # kopf's start-up; its watches open before the first apply
    sampler = None
    if profile is not None and tree == ROOT and op.proc is not None:
        profile.mkdir(parents=True, exist_ok=True)
        sampler = subprocess.Popen(["py-spy", "record", "--rate", "100", "--format", "raw", "--pid", str(op.proc.pid),
                                    "--output", str(profile / f"{namespace}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if trace_memory is not None and tree == ROOT and op.proc is not None:
        op.proc.send_signal(10)  # SIGUSR1: tracing starts
    recorder = Recorder(custom, namespace)
    names = [f"p{i}" for i in range(n)]
    jobs = [f"{t}-s{i}-1" for t in names for i in range(SUBTASKS)]
    pool = ThreadPoolExecutor(8)
    try:
        t0 = time.monotonic()
        endpoint = s3.endpoint if s3 is not None else UNREACHABLE_S3
        list(pool.map(lambda t: custom.create_namespaced_custom_object("anytasktune.io", "v1alpha1", namespace, "taskfinetunes",
                                                                       taskfinetune(t, endpoint)), names))
        deadline = time.monotonic() + 60 + n * 2
        while rayjob_count(custom, namespace) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.5)
        created = time.monotonic() - t0
        rss_created = rss_mib(op.proc.pid, "VmRSS") if op.proc else float("nan")
        if until_created:  # the creation phase alone: what it cost, nothing driven
            cpu = cpu_seconds(op.proc.pid) if op.proc else float("nan")
            return creation_row(label, n, len(jobs), created, rss_created, cpu, pass_metrics(op))
        recorder.wait([(t, f"s{i}", "Pending") for t in names for i in range(SUBTASKS)], 120 + n)

        def status(**fields: Any) -> Callable[[str], None]:
            return lambda job: custom.patch_namespaced_custom_object_status("ray.io", "v1", namespace, "rayjobs", job, {"status": fields})

        initializing, running_status, job_succeeded, complete = STATUS_SEQUENCE
        drive(pool, status(**initializing), jobs, rate)
        running_at = drive(pool, status(**running_status), jobs, rate)
        recorder.wait([(t, f"s{i}", "Running") for t in names for i in range(SUBTASKS)], 120 + n)
        succeed = status(**job_succeeded)
        if s3 is not None:
            put_manifest = publisher(s3, namespace, custom)

            def publish_then_succeed(job: str) -> None:
                put_manifest(job)
                succeed(job)

            drive(pool, publish_then_succeed, jobs, rate)
        else:
            drive(pool, succeed, jobs, rate)
        done_at = drive(pool, status(**complete), jobs, rate)
        recorder.wait([(t, f"s{i}", "Succeeded") for t in names for i in range(SUBTASKS)], 120 + n)
        time.sleep(2)
        sample = custom.get_namespaced_custom_object("anytasktune.io", "v1alpha1", namespace, "taskfinetunes", names[0])
        body_bytes = len(json.dumps(sample, separators=(",", ":")))
        managed_bytes = len(json.dumps(sample["metadata"].get("managedFields") or [], separators=(",", ":")))
        rss = rss_mib(op.proc.pid) if op.proc else float("nan")
        rss_end = rss_mib(op.proc.pid, "VmRSS") if op.proc else float("nan")
        cpu = cpu_seconds(op.proc.pid) if op.proc else float("nan")
        passes = pass_metrics(op)
        if trace_memory is not None and tree == ROOT and op.proc is not None:
            op.proc.send_signal(12)  # SIGUSR2: the snapshot
            for _ in range(600):
                if snapshot.exists():
                    break
                time.sleep(0.5)
            trace_memory.mkdir(parents=True, exist_ok=True)
            memory_report(snapshot, trace_memory / f"{namespace}.txt")
    finally:
        recorder.stop.set()
        if sampler is not None:
            sampler.send_signal(2)  # py-spy writes its file on SIGINT
            sampler.wait(30)
        op.stop()
        pool.shutdown()
    events, _ = cp.audit_events(audit_offset)
    mine = [e for e in events if e.get("stage") == "ResponseComplete" and e.get("userAgent", "") != DRIVER_AGENT
            and e.get("objectRef", {}).get("namespace") == namespace and e.get("verb") != "watch"]
    operator_requests = len(mine)
    by_kind = Counter(f"{e['verb']} {e['objectRef'].get('resource', '')}{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
                      for e in mine)

    def latency(phase: str, written: dict[str, float]) -> list[float]:
        return [recorder.seen[(*tft_and_subtask(job), phase)] - written[job] for job in jobs]

    running, succeeded = latency("Running", running_at), latency("Succeeded", done_at)
    log_text = op.log_path.read_text(errors="replace")  # the whole log: logs() keeps only its tail
    failed_reads = sum(1 for line in log_text.splitlines() if "manifest" in line and "not readable" in line)
    changes = 4 * len(jobs)  # the four status writes of each RayJob
    return {
        "variant": label, "n": n, "rayjobs": len(jobs), "created_s": created,
        "status_writes_per_s": len(jobs) / max(1e-9, max(running_at.values()) - min(running_at.values())),
        "running": [percentile(running, q) for q in (0.5, 0.95, 0.99)],
        "succeeded": [percentile(succeeded, q) for q in (0.5, 0.95, 0.99)],
        "rss_mib": rss, "requests_per_change": operator_requests / changes, "cpu_s": cpu, "rss_end_mib": rss_end, "rss_created_mib": rss_created, **passes,
        "failed_manifest_reads": failed_reads, "taskfinetune_bytes": body_bytes, "managed_fields_bytes": managed_bytes,
        "requests": dict(by_kind.most_common()),
    }


def creation_row(label: str, n: int, rayjobs: int, created: float, rss: float, cpu: float, passes: dict[str, float]) -> dict[str, Any]:
    """A row of `--until created`: the latencies and per-change figures are not measured."""
    nan = float("nan")
    return {"variant": label, "n": n, "rayjobs": rayjobs, "created_s": created, "status_writes_per_s": nan,
            "running": [nan] * 3, "succeeded": [nan] * 3, "rss_mib": rss, "requests_per_change": nan, "cpu_s": cpu,
            "rss_end_mib": rss, "rss_created_mib": rss, **passes, "failed_manifest_reads": 0,
            "taskfinetune_bytes": 0, "managed_fields_bytes": 0, "requests": {}}


def baseline_tree(commit: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="anytasktune-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--rate", type=float, help="status writes per second (open loop); default: as fast as 8 threads go")
    parser.add_argument("--baseline", default="ef68e83",
                        help="git commit of the baseline operator; several, comma-separated, to bisect ('' = none)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the variants' order alternates from one to the next")
    parser.add_argument("--this-first", action="store_true", help="this tree before the baseline in the first round")
    parser.add_argument("--until", choices=["succeeded", "created"], default="succeeded",
                        help="created: stop each variant once all its RayJobs exist (the creation phase alone, "
                             "~3 min a variant at N=1,000 instead of ~22)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep each operator's log in DIR (default: removed)")
    parser.add_argument("--profile", type=Path, help="sample this tree's operator with py-spy into this folder")
    parser.add_argument("--tracemalloc", type=Path, help="trace this tree's operator's memory; its report into this folder")
    parser.add_argument("--s3", choices=["off", "on", "both"], default="off",
                        help="manifests in a real S3 server (on), unreachable (off), or each variant both ways")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants: list[tuple[str, Path]] = [("this-tree", ROOT)]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.s3]
    baselines: list[tuple[str, Path]] = []
    rows: list[dict[str, Any]] = []
    workdir = Path(args.keep_logs) if args.keep_logs else Path(tempfile.mkdtemp(prefix="anytasktune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for commit in filter(None, args.baseline.split(",")):
            baselines.append((f"baseline-{commit}", baseline_tree(commit)))
        variants = baselines + variants
        with ExitStack() as stack:
            s3 = stack.enter_context(EmbeddedS3(workdir / "s3", buckets=[MANIFEST_BUCKET])) if True in modes else None
            for round_index in range(args.rounds):
                # The order alternates from round to round (ABBA), and each variant runs on a
                # control plane of its own (kube-apiserver + etcd, started for it): on a shared one,
                # the variant that ran second at N=1,000 was the slower in every pair, whichever it
                # was (RESULTS, 2026-11-27); the first leaves etcd 10,000 deleted RayJobs and the
                # API server's memory several GiB larger.
                ordered = variants[::-1] if (round_index % 2 == 1) != args.this_first else variants
                for n in sizes:
                    for (label, variant_tree), with_s3 in itertools.product(ordered, modes):  # interleaved: same N, back to back
                        with ControlPlane(audit_policy=AUDIT_POLICY) as cp:
                            cp.install_kuberay_crds()
                            row = run_variant(cp, label + ("+s3" if args.s3 == "both" and with_s3 else ""), variant_tree, n, workdir,
                                              args.profile, args.tracemalloc, args.rate, s3 if with_s3 else None,
                                              until_created=args.until == "created")
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        for _, tree in baselines:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    labels = list(dict.fromkeys(r["variant"] for r in rows))  # in the order they ran
    print()
    print(f"status writes: {f'{args.rate:g}/s, open loop' if args.rate else 'as fast as 8 threads go'}; "
          f"achieved in the Running phase: {statistics.median(r['status_writes_per_s'] for r in rows):.0f}/s (median); "
          f"manifests: {MANIFESTS[args.s3]}")
    print(f"{'variant':<20} {'TFTs x 10':>9} {'all RayJobs exist':>17} {'Running p50/p95/p99 s':>22} "
          f"{'Succeeded p50/p95/p99 s':>24} {'peak RSS MiB':>12} {'API req/change':>14} {'operator CPU s':>14} {'passes':>7} {'pass mean ms':>12}")
    for n in sizes:
        for label in labels:
            mine = [r for r in rows if r["n"] == n and r["variant"] == label]
            med = {k: statistics.median(r[k] for r in mine) for k in ("created_s", "rss_mib", "requests_per_change", "cpu_s", "passes", "pass_mean_s")}
            run = "/".join(f"{statistics.median(r['running'][i] for r in mine):.2f}" for i in range(3))
            suc = "/".join(f"{statistics.median(r['succeeded'][i] for r in mine):.2f}" for i in range(3))
            print(f"{label:<20} {n:>9} {med['created_s']:>16.1f}s {run:>22} {suc:>24} {med['rss_mib']:>12.0f} "
                  f"{med['requests_per_change']:>14.2f} {med['cpu_s']:>14.1f} {med['passes']:>7.0f} {1000 * med['pass_mean_s']:>12.0f}")
    def median_of(n: int, label: str, key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in rows if r["n"] == n and r["variant"] == label)

    def waits(n: int, label: str) -> str:
        return "/".join(f"{median_of(n, label, k):.3f}" for k in ("wait_p50_s", "wait_p99_s", "wait_mean_s"))
    print("\nwork queue wait p50/p99/mean, from a pass falling due to its start (the operator's histogram; quantiles "
          "estimated from its buckets), median over rounds: " + ", ".join(f"{label} N={n}: {waits(n, label)} s" for n in sizes for label in labels))
    triggers = [trigger.value for trigger in Trigger]
    print("\npasses by what made them due (" + "/".join(triggers) + "), and RayJob and RayCluster events that queued no pass "
          "(nothing a pass reads changed), median over rounds: " + ", ".join(
              f"{label} N={n}: " + "/".join(f"{median_of(n, label, f'passes_{t}'):.0f}" for t in triggers)
              + f", {median_of(n, label, 'child_events_unchanged'):.0f} unchanged" for n in sizes for label in labels))
    print("\nfailed manifest reads (the operator's log), median over rounds: " + ", ".join(
        f"{label} N={n}: {statistics.median(r['failed_manifest_reads'] for r in rows if r['n'] == n and r['variant'] == label):.0f}"
        for n in sizes for label in labels))
    print("\noperator requests by verb and resource, per RayJob (median over rounds):")
    for n in sizes:
        for label in labels:
            mine = [r for r in rows if r["n"] == n and r["variant"] == label]
            kinds = sorted({k for r in mine for k in r["requests"]})
            per_job = {k: statistics.median(r["requests"].get(k, 0) / r["rayjobs"] for r in mine) for k in kinds}
            print(f"  {label:<20} {n:>5}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_job.items(), key=lambda kv: -kv[1])))
    sample = rows[-1]
    if sample["taskfinetune_bytes"]:  # not measured with --until created
        print(f"\none TaskFineTune as the API server returns it at the end: {sample['taskfinetune_bytes']:,} bytes of "
              f"JSON, of which managedFields {sample['managed_fields_bytes']:,}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
