"""Tenant isolation of the operator's own S3 reads, on the real API server and a real S3
server (SeaweedFS):

- the storage read policy: one tenant cannot make the operator read another tenant's
  bucket into its status, nor send signed requests to a host of its choosing;
- one tenant's black-holed endpoint (accepts connections, never answers) delays no one
  else's reconciliation.
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.helpers import RUNNING, SUCCEEDED, Kubectl, OperatorProcess, operator_serving, s3_serving, taskfinetune, wait_for


class Listener:
    """A TCP endpoint that records connections: `answer=False` accepts and never answers
    (a black hole), and counts how many the clients hold open at once; otherwise it
    answers 403 to whatever arrives."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections = 0
        self.most_open = 0  # the most connections the clients held open at one time
        self.held: set[socket.socket] = set()
        self._closing = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while not self._closing:
                try:
                    ready = [key.fileobj for key, _ in sel.select(timeout=0.5)]
                except (OSError, ValueError):  # close() closed a socket under it
                    return
                # Closes first: a client that gave up on one connection closed it (its FIN is
                # queued) before opening the next, so both can be ready in one select.
                for conn in [c for c in ready if c is not self.sock]:
                    assert isinstance(conn, socket.socket)
                    try:
                        closed = not conn.recv(65536)  # b"": the client closed it
                    except OSError:  # reset
                        closed = True
                    if closed:
                        sel.unregister(conn)
                        self.held.discard(conn)
                        conn.close()
                if self.sock in ready:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        return
                    self.connections += 1
                    if self.answer:
                        conn.recv(65536)
                        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        conn.close()
                    else:
                        self.held.add(conn)
                        sel.register(conn, selectors.EVENT_READ)
                        self.most_open = max(self.most_open, len(self.held))

    def close(self) -> None:
        self._closing = True
        self.sock.close()
        for conn in list(self.held):
            conn.close()



@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with s3_serving(tmp_path_factory.mktemp("s3"), ["team-a", "team-b", "healthy"]) as server:
        yield server


@pytest.fixture(scope="module")
def outsider() -> Iterator[Listener]:
    listener = Listener(answer=True)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def black_hole() -> Iterator[Listener]:
    listener = Listener(answer=False)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def operator(kube_env: dict[str, str], s3: Any, black_hole: Listener, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    policy = [
        {"namespaces": ["team-a"], "endpoints": [s3.endpoint], "outputs": ["s3://team-a/"]},
        {"namespaces": ["team-b"], "endpoints": [s3.endpoint], "outputs": ["s3://team-b/"]},
        {"namespaces": ["healthy"], "endpoints": [s3.endpoint], "outputs": ["s3://healthy/"]},
        {"namespaces": ["stuck"], "endpoints": [black_hole.endpoint], "outputs": ["s3://stuck/"]},
    ]
    env = {"ANYTASKTUNE_STORAGE_READ_POLICY": json.dumps(policy), "ANYTASKTUNE_RESYNC_SECONDS": "30"}
    with operator_serving(kube_env, tmp_path_factory.mktemp("operator"), s3, **env) as op:
        yield op


def pool(name: str, subtasks: list[str], output: str, endpoint: str) -> dict[str, Any]:
    body = taskfinetune(name, subtasks, maxParallelSubtasks=len(subtasks))
    body["spec"]["storage"] = {"output": output, "endpoint": endpoint, "addressingStyle": "path"}
    return body


def subtask(k: Kubectl, ns: str, name: str, sub: str) -> dict[str, Any]:
    return next(s for s in k.tft(ns, name).get("status", {}).get("subtasks", []) if s["name"] == sub)


def publish(s3: Any, k: Kubectl, ns: str, name: str, sub: str, bucket: str, lift: float) -> None:
    """What a finished run leaves: its manifest.json, then KubeRay's Complete."""
    job = wait_for("launch", lambda: k.rayjobs(ns).get(f"{name}-{sub}-1"))
    run_id = job["metadata"]["labels"]["anytasktune.io/run-id"]
    manifest = {"evaluation": {"base": {"f1": 0.1}, "adapter": {"f1": 0.1 + lift}, "lift": {"f1": lift}}}
    s3.client().put_object(Bucket=bucket, Key=f"{name}/{sub}/{run_id}/manifest.json", Body=json.dumps(manifest).encode())
    k.set_rayjob_status(ns, f"{name}-{sub}-1", **SUCCEEDED)


def test_a_tenant_cannot_read_another_tenants_bucket_or_aim_the_operator_at_its_host(
        k: Kubectl, operator: OperatorProcess, s3: Any, outsider: Listener) -> None:
    team_a, team_b = k.namespace("team-a"), k.namespace("team-b")
    # team-b's own pool: its evaluation is read into its status.
    k.apply(pool("pool", ["kw"], "s3://team-b/", s3.endpoint), team_b)
    publish(s3, k, team_b, "pool", "kw", "team-b", 0.5)
    read = wait_for("team-b's evaluation", lambda: (s := subtask(k, team_b, "pool", "kw")).get("metrics") and s)
    assert read["metrics"]["lift"]["f1"] == 0.5

    # team-a points its output at team-b's bucket, where a manifest waits at the exact key.
    k.apply(pool("pool", ["kw"], "s3://team-b/", s3.endpoint), team_a)
    publish(s3, k, team_a, "pool", "kw", "team-b", 0.9)
    # ... and another pool at a host of its choosing.
    k.apply(pool("aimed", ["kw"], "s3://team-a/", outsider.endpoint), team_a)
    wait_for("launch", lambda: "aimed-kw-1" in k.rayjobs(team_a))
    k.set_rayjob_status(team_a, "aimed-kw-1", **SUCCEEDED)

    for name in ("pool", "aimed"):
        st = wait_for(f"{name} refused", lambda n=name: (s := subtask(k, team_a, n, "kw")).get("reason") == "EvaluationNotAllowed" and s)
        assert st["phase"] == "Succeeded" and "metrics" not in st
        assert "storage read policy does not allow namespace team-a" in st["message"]
    time.sleep(3)  # several passes later: still nothing read, nothing sent
    assert "metrics" not in subtask(k, team_a, "pool", "kw")
    assert outsider.connections == 0
    assert "StorageReadPolicy" in [e["reason"] for e in k.events(team_a, "pool")]


def test_a_black_holed_endpoint_delays_no_other_tenant(k: Kubectl, operator: OperatorProcess, s3: Any, black_hole: Listener) -> None:
    stuck, healthy = k.namespace("stuck"), k.namespace("healthy")
    subtasks = [f"t{i}" for i in range(6)]
    k.apply(pool("sink", subtasks, "s3://stuck/", black_hole.endpoint), stuck)
    wait_for("stuck launches", lambda: len(k.rayjobs(stuck)) == len(subtasks))
    for sub in subtasks:  # six manifest reads into the black hole, all at once
        k.set_rayjob_status(stuck, f"sink-{sub}-1", **SUCCEEDED)
    wait_for("reads under way", lambda: black_hole.connections >= 2)

    k.apply(pool("fine", subtasks, "s3://healthy/", s3.endpoint), healthy)
    wait_for("healthy launches", lambda: len(k.rayjobs(healthy)) == len(subtasks))
    running: list[float] = []
    for sub in subtasks:
        t0 = time.monotonic()
        k.set_rayjob_status(healthy, f"fine-{sub}-1", **RUNNING)
        wait_for("Running shown", lambda s=sub: subtask(k, healthy, "fine", s)["phase"] == "Running", interval=0.1)
        running.append(time.monotonic() - t0)
    evaluated: list[float] = []
    for sub in subtasks:
        t0 = time.monotonic()
        publish(s3, k, healthy, "fine", sub, "healthy", 0.3)
        wait_for("evaluation shown", lambda s=sub: subtask(k, healthy, "fine", s).get("metrics"), interval=0.1)
        evaluated.append(time.monotonic() - t0)
    print(f"beside a black hole: Running shown p50 {statistics.median(running):.2f}s max {max(running):.2f}s; "
          f"evaluation shown p50 {statistics.median(evaluated):.2f}s max {max(evaluated):.2f}s; "
          f"black-hole connections {black_hole.connections}, at most {black_hole.most_open} open at once")
    # A black-holed read takes >= 10 s (its read timeout); none of these waited for one. (The
    # whole bound is that: on a slow day Running took up to 2.3 s and an evaluation 4.2 s.)
    assert max(running) < 10.0 and max(evaluated) < 10.0
    # The stuck tenant is held to its share of the read pool, and says what is wrong: 2 reads
    # at a time per namespace. (A count of all connections, bounded by 2 reads x 2 botocore
    # attempts, failed on a slow day: this test outlasted the first reads, and the next began.)
    assert black_hole.connections >= 2 and black_hole.most_open <= 2
    assert all("metrics" not in subtask(k, stuck, "sink", s) for s in subtasks)
