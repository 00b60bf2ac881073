"""Session fixtures of the cluster tier: the single-node cluster (`make cluster`), our images
in its containerd, the operator installed with `helm install` as a user would, the S3
server on the host at the bridge address, and a namespace enforcing Pod Security
"restricted" per test.

Needs root (the cluster runs containerd, a bridge and cgroups on this host). Without root
the tier fails, unless ANYTASKTUNE_ALLOW_SKIP_CLUSTER=1 (then it skips).
A cluster this session started is stopped at the end (`make cluster-down`); one that was
already up stays up. ANYTASKTUNE_KEEP_CLUSTER=1 keeps it either way.
Figures (cluster start, apply -> first step, apply -> Succeeded, peak memory) are printed
and written to $ANYTASKTUNE_CACHE/cluster-tier-figures.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    BUCKET,
    CACHE,
    HELM,
    REPO,
    SCRAPE,
    ClusterError,
    Kube,
    TrainingData,
    cluster_is_up,
    image_refs,
    make,
    operator_counts,
    snapshot,
    start_s3,
    upload_training_data,
    wait_for,
)

OPERATOR_NAMESPACE = "anytasktune-system"
CLUSTER_LOCK = "/run/anytasktune-cluster-tier.lock"  # not one a cluster daemon could inherit (flock(1) passes its fd on)
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Kueue's tests after the others: Kueue then stays installed until the cluster goes (a
    cluster this session started is torn down whole), and its pod never takes CPU from the
    other tests'. The crash last of all: it replaces the cluster, and by then the other lanes
    of `make test` are done, so bringing it back costs half a minute, not several."""
    order = {"test_kueue.py": 1, "test_host_crash.py": 2}
    items.sort(key=lambda item: order.get(item.path.name, 0))


@dataclass
class Cluster:
    kube: Kube
    started_here: bool
    start_seconds: float
    crashed: bool = False  # by test_host_crash: what was installed in it is gone
    figures: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        message = "the cluster tier needs root (containerd, a bridge, iptables, cgroups): run as root"
        if os.environ.get("ANYTASKTUNE_ALLOW_SKIP_CLUSTER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    # SIGTERM (a CI timeout, `kill`) ends the session through the fixtures' teardown, so the
    # S3 server, the helm release and a cluster started here do not outlive it.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # One user of the host's cluster at a time (two sessions, or a session and `make cluster-down`).
    lock = open(CLUSTER_LOCK, "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    was_up = cluster_is_up()
    seconds = make("hack/cluster/up.sh")
    c = Cluster(kube=Kube(), started_here=not was_up, start_seconds=seconds)
    c.figures["cluster_start_s"] = round(seconds, 1) if not was_up else None
    yield c
    out = CACHE / "cluster-tier-figures.json"
    out.write_text(json.dumps(c.figures, indent=2) + "\n")
    print(f"\ncluster tier figures ({out}):\n{json.dumps(c.figures, indent=2)}")
    if c.started_here and os.environ.get("ANYTASKTUNE_KEEP_CLUSTER") != "1":
        make("hack/cluster/down.sh")
    lock.close()
    signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def images(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator and training images, built from docker/*.Dockerfile (cached by a hash
    of their inputs) and imported into the cluster's containerd. From this working tree, or
    from a commit when ANYTASKTUNE_CLUSTER_REV is set (e.g. HEAD, while the tree is mid-edit:
    the operator's renderer and the trainjob must share one contract)."""
    env = {}
    rev = os.environ.get("ANYTASKTUNE_CLUSTER_REV")
    if rev:
        source, commit = snapshot(tmp_path_factory.mktemp("src"), rev)
        env["ANYTASKTUNE_IMAGE_SOURCE"] = str(source)
        cluster.figures["source"] = f"commit {commit}"
    cluster.figures["images_s"] = round(make("hack/images/build.sh", "--import", "operator", "trainjob", env=env), 1)
    return image_refs()


@pytest.fixture(scope="session")
def s3(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def training_data(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    return upload_training_data(s3, tmp_path_factory.mktemp("data"))


def helm(*args: str, home: Path) -> str:
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    proc = subprocess.run([str(HELM), f"--kubeconfig={Kube().kubeconfig}", *args], capture_output=True, text=True,
                          timeout=300, env=env)
    if proc.returncode != 0:
        raise ClusterError(f"helm {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="session")
def operator(cluster: Cluster, images: dict[str, str], s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`helm install` of charts/anytasktune: the operator as a Deployment with its own
    ServiceAccount, our image (never pulled), reading manifests from the host's S3."""
    kube, home = cluster.kube, tmp_path_factory.mktemp("helm")
    kube.namespace(OPERATOR_NAMESPACE, RESTRICTED)
    kube.secret(OPERATOR_NAMESPACE, "operator-s3", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    repo, _, tag = images["OPERATOR_IMAGE"].rpartition(":")
    # The operator may read the results of any namespace's runs under the bucket's adapters/.
    read_policy = json.dumps([{"namespaces": ["*"], "endpoints": [s3.endpoint], "outputs": [f"s3://{BUCKET}/adapters/"]}])
    t0 = time.monotonic()
    helm("upgrade", "--install", "anytasktune", str(REPO / "charts/anytasktune"), "--namespace", OPERATOR_NAMESPACE,
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
         "--set", f"operator.trainingImage={images['TRAINJOB_IMAGE']}",
         "--set", f"storage.endpoint={s3.endpoint}", "--set", "storage.region=us-east-1",
         "--set", "storage.credentialsSecret.name=operator-s3",
         "--set-json", f"storage.readPolicy={read_policy}",
         "--set", "operator.retryBackoffSeconds=5", "--set", "logFormat=full",
         "--wait", "--timeout", "3m", home=home)
    cluster.figures["helm_install_s"] = round(time.monotonic() - t0, 1)
    yield OPERATOR_NAMESPACE
    if cluster.crashed:
        return
    logs = kube.logs(OPERATOR_NAMESPACE, "deploy/anytasktune", "--tail=400")
    (CACHE / "cluster-tier-operator.log").write_text(logs)
    helm("uninstall", "anytasktune", "--namespace", OPERATOR_NAMESPACE, "--wait", home=home)
    kube.delete_namespace(OPERATOR_NAMESPACE)


@pytest.fixture
def namespace(cluster: Cluster, s3: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security "restricted", with the pods' S3 Secret."""
    name = "t-" + request.node.name.replace("_", "-").lower()[:40].rstrip("-")
    kube = cluster.kube
    kube.delete_namespace(name)
    kube.namespace(name, RESTRICTED)
    wait_for("the default ServiceAccount", lambda: kube.get("serviceaccount", "default", name, check=False), timeout=60)
    kube.secret(name, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    yield name
    if not cluster.crashed:  # the operator's counts so far (a test that crashes the host ends them)
        scraped = kube.run("exec", "-n", OPERATOR_NAMESPACE, "deploy/anytasktune", "--", "python", "-c", SCRAPE, check=False)
        if counts := operator_counts(scraped):
            cluster.figures["operator"] = counts
    if os.environ.get("ANYTASKTUNE_KEEP_CLUSTER") != "1":
        # Not waited for: its Ray pods take their 30 s grace period to go, and nothing after
        # this test depends on them being gone.
        kube.run("delete", "namespace", name, "--ignore-not-found", "--wait=false")
