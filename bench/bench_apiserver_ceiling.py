"""The API server's ceiling: how fast this machine's control plane creates the RayJobs the
operator renders, with no operator at all.

Issue 12 asks for 10,000 RayJobs (1,000 TaskFineTunes x 10 sub-tasks) in under a minute.
`bench_operator_scale.py` measures the operator doing it; this measures what the API server
and etcd allow on the same cores. The same 1,000 TaskFineTunes are created first (their RayJobs
carry a real ownerReference, as the operator's do: a dangling one would set the garbage
collector deleting them). Then the 10,000 RayJobs, exactly as `render.render_rayjob` renders
them for the bench's TaskFineTune (one POST each, JSON serialised before the clock starts),
from a client that spends almost no CPU: raw HTTP/1.1 on keep-alive connections, at each
`--concurrency`. Printed per concurrency: RayJobs/s, seconds for all, the API server's and
etcd's CPU seconds per 1,000 RayJobs (from /proc), and the request latency p50/p99. Then
the KubeRay stand-in's four status writes per RayJob, 8 threads, as bench_operator_scale drives
them: their rate and latency with no operator.

    .venv/bin/python bench/bench_apiserver_ceiling.py --n 1000 --concurrency 8,32

Each concurrency runs in its own namespace, deleted (and waited for) before the next.
Read the ratio to the operator's creation time in the same conditions, not the seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_operator_scale import (  # noqa: E402
    STATUS_SEQUENCE,
    SUBTASKS,
    kube_clients,
    percentile,
    taskfinetune,
)

from tests.kube.controlplane import ControlPlane  # noqa: E402


def rendered_rayjobs(namespace: str, tfts: dict[str, str]) -> list[bytes]:
    """The operator's RayJobs for these TaskFineTunes (name -> uid), attempt 1, as JSON."""
    from anytasktune.config import OperatorConfig
    from anytasktune.render import render_rayjob
    from anytasktune.resolve import resolve_subtask
    from anytasktune.spec import TaskFineTuneSpec

    config = OperatorConfig()
    bodies = []
    for name, uid in tfts.items():
        spec = TaskFineTuneSpec.model_validate(taskfinetune(name)["spec"])
        for subtask in spec.subtasks:
            train = resolve_subtask(name, namespace, spec, subtask)
            job = render_rayjob(name, namespace, uid, spec, train, 1, config)
            bodies.append(json.dumps(job, separators=(",", ":")).encode())
    return bodies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_all(cp: ControlPlane, path: str, bodies: list[bytes], concurrency: int, method: str = "POST",
             paths: list[str] | None = None) -> list[float]:
    """Send every body (each thread on its own keep-alive connection; to paths[i] if given);
    each request's seconds."""
    host, port = cp.server.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    headers = {"Authorization": f"Bearer {cp.admin_token}", "Content-Type": "application/json",
               "User-Agent": "anytasktune-bench-ceiling"}
    if method == "PATCH":
        headers["Content-Type"] = "application/merge-patch+json"
    expected = 201 if method == "POST" else 200
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
        mine = []
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t = time.monotonic()
            conn.request(method, paths[i] if paths else path, body=bodies[i], headers=headers)
            response = conn.getresponse()
            payload = response.read()
            mine.append(time.monotonic() - t)
            if response.status != expected:
                errors.append(f"{response.status} {payload[:300]!r}")
                break
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]}")
    return latencies


def delete_namespace_and_wait(core: Any, namespace: str, limit_s: float = 900) -> None:
    """Delete the namespace and wait until it (and all in it) is gone, so that the next
    concurrency's run starts on an API server that holds none of this one's RayJobs."""
    core.delete_namespace(namespace)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except Exception as err:  # kubernetes.client ApiException
            if getattr(err, "status", None) == 404:
                return
            raise
        time.sleep(2)
    raise TimeoutError(f"namespace {namespace} still there {limit_s:.0f} s after its deletion")


def run(cp: ControlPlane, n: int, concurrency: int) -> dict[str, Any]:
    custom, core = kube_clients(cp.kubeconfig)
    namespace = f"ceiling-{concurrency}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    tft_path = f"/apis/anytasktune.io/v1alpha1/namespaces/{namespace}/taskfinetunes"
    tft_bodies = [json.dumps(taskfinetune(f"p{i}")).encode() for i in range(n)]
    post_all(cp, tft_path, tft_bodies, concurrency)
    listed = custom.list_namespaced_custom_object("anytasktune.io", "v1alpha1", namespace, "taskfinetunes")
    bodies = rendered_rayjobs(namespace, {item["metadata"]["name"]: item["metadata"]["uid"] for item in listed["items"]})
    pids = {name: cp.pid(name) for name in ("kube-apiserver", "etcd")}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    latencies = post_all(cp, f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs", bodies, concurrency)
    seconds = time.monotonic() - t0
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    # The KubeRay stand-in's four status writes per RayJob, as bench_operator_scale drives them
    # (8 threads), with no operator: the latency a single write has under that flood alone.
    job_names = [json.loads(b)["metadata"]["name"] for b in bodies]
    paths = [f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs/{job}/status" for job in job_names]
    status_latencies: list[float] = []
    t1 = time.monotonic()
    for fields in STATUS_SEQUENCE:
        patch = json.dumps({"status": fields}).encode()
        status_latencies += post_all(cp, "", [patch] * len(paths), 8, method="PATCH", paths=paths)
    status_seconds = time.monotonic() - t1
    delete_namespace_and_wait(core, namespace)
    return {"concurrency": concurrency, "rayjobs": len(bodies), "seconds": seconds, "per_s": len(bodies) / seconds,
            "apiserver_cpu_per_1000": 1000 * cpu["kube-apiserver"] / len(bodies),
            "etcd_cpu_per_1000": 1000 * cpu["etcd"] / len(bodies),
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99),
            "rayjob_bytes": statistics.median(len(b) for b in bodies),
            "status_writes": len(status_latencies), "status_per_s": len(status_latencies) / status_seconds,
            "status_p50_ms": 1000 * statistics.median(status_latencies),
            "status_p99_ms": 1000 * percentile(status_latencies, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="TaskFineTunes (x 10 RayJobs)")
    parser.add_argument("--concurrency", default="8,32")
    args = parser.parse_args()
    rows = []
    with ControlPlane() as cp:
        cp.install_kuberay_crds()
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd"))
        time.sleep(2)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            row = run(cp, args.n, concurrency)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.n} TaskFineTunes x {SUBTASKS}: RayJobs of {rows[0]['rayjob_bytes']:,} bytes of JSON, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| concurrency | RayJobs | all created | RayJobs/s | API server CPU s / 1,000 | etcd CPU s / 1,000 "
          "| POST p50 / p99 | then status writes (8 threads): per s, p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['rayjobs']:,} | {r['seconds']:.1f} s | {r['per_s']:.0f} "
              f"| {r['apiserver_cpu_per_1000']:.1f} | {r['etcd_cpu_per_1000']:.1f} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms "
              f"| {r['status_per_s']:.0f}, {r['status_p50_ms']:.0f} / {r['status_p99_ms']:.0f} ms |")


if __name__ == "__main__":
    main()
