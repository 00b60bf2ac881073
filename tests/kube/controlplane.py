"""A real, throw-away Kubernetes control plane for tests: etcd + kube-apiserver
+ kube-controller-manager, all on loopback, no kubelet (pods never run).

The binaries come from ``hack/build-controlplane.sh`` (``make controlplane``),
which puts them in ``$ANYTASKTUNE_CACHE/bin`` (default
``~/.cache/anytasktune/bin``) together with the KubeRay CRDs.

Usage::

    with ControlPlane() as cp:
        cp.install_kuberay_crds()
        cp.kubectl("get", "namespaces")
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from anytasktune.ports import free_port, free_ports

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
BUILD_HINT = "build it with `make controlplane` (runs hack/build-controlplane.sh)"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or used."""


class ControlPlaneBinaryMissing(ControlPlaneError, FileNotFoundError):
    """A binary the control plane needs is not in the cache."""


def default_cache_dir() -> Path:
    env = os.environ.get("ANYTASKTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anytasktune"




def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the test process is killed hard, the servers get
    # SIGTERM instead of lingering with their ports and data dirs.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _write_rsa_key(path: Path) -> None:
    """PEM RSA private key for signing ServiceAccount tokens."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        openssl = shutil.which("openssl")
        if not openssl:
            raise ControlPlaneError(
                "need the `cryptography` package or the `openssl` CLI to make the "
                "service-account signing key (apt-get install openssl)"
            ) from None
        subprocess.run(
            [openssl, "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
        )
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    path.chmod(0o600)


def write_kubeconfig(
    path: Path | str, server: str, ca_file: Path | str, token: str, user: str = "user"
) -> Path:
    """A kubeconfig (JSON is valid YAML) authenticating with a bearer token."""
    path = Path(path)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "anytasktune-test", "cluster": {"server": server,
                                                      "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": user, "context": {"cluster": "anytasktune-test", "user": user}}
        ],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in a temporary directory.

    Attributes available after :meth:`start`: ``server`` (https URL),
    ``kubeconfig`` (admin kubeconfig path), ``ca_file``, ``admin_token``,
    ``workdir`` (holds data, certs and ``*.log``).
    """

    #: Controllers that make the cluster behave for API-level tests: ownerRef
    #: garbage collection, namespace deletion, the per-namespace "default"
    #: ServiceAccount and legacy SA token secrets.
    CONTROLLERS = "garbagecollector,namespace,serviceaccount,serviceaccount-token"

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        *,
        kubectl_bin: str | None = None,
        keep_workdir: bool | None = None,
        audit_policy: dict[str, Any] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.bin_dir = self.cache_dir / "bin"
        self.kuberay_crd_dir = self.cache_dir / "crds" / "kuberay"
        self.kubectl_bin = kubectl_bin or os.environ.get("KUBECTL") or "/usr/bin/kubectl"
        if keep_workdir is None:
            keep_workdir = os.environ.get("ANYTASKTUNE_KEEP_CONTROLPLANE") == "1"
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self.server = ""
        self.admin_token = ""
        self.kubeconfig = Path()
        self.ca_file = Path()
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        # name -> (argv, readiness URL, readiness headers): what restart() needs.
        self._launch: dict[str, tuple[list[str], str, dict[str, str]]] = {}
        #: An audit.k8s.io/v1 Policy: the API server then writes every request it
        #: matches to ``audit_log`` (JSON lines; see :meth:`audit_events`).
        self.audit_policy = audit_policy
        self.audit_log: Path | None = None

    # ----------------------------------------------------------------- checks
    def binary(self, name: str) -> Path:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneBinaryMissing(
                f"{name} not found at {path}; {BUILD_HINT} "
                f"(outputs go to $ANYTASKTUNE_CACHE, now {self.cache_dir})"
            )
        return path

    def check_binaries(self) -> None:
        """Fail fast, naming the first missing build output and how to build it."""
        for name in BINARIES:
            self.binary(name)
        if not any(self.kuberay_crd_dir.glob("*.yaml")):
            raise ControlPlaneBinaryMissing(
                f"no KubeRay CRDs in {self.kuberay_crd_dir}; {BUILD_HINT}"
            )
        if not os.access(self.kubectl_bin, os.X_OK):
            raise ControlPlaneBinaryMissing(f"kubectl not found at {self.kubectl_bin}")

    # ---------------------------------------------------------------- startup
    def start(self, timeout: float = 90.0) -> ControlPlane:
        self.check_binaries()
        self.workdir = Path(tempfile.mkdtemp(prefix="anytasktune-cp-"))
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controller_manager(timeout)
        except BaseException as exc:
            logs = self.logs()
            self.stop(keep_workdir=True)
            raise ControlPlaneError(
                f"control plane failed to start: {exc}\n"
                f"(workdir {self.workdir} kept)\n{logs}"
            ) from exc
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._launch[name] = (list(args), "", {})
        proc, log = self._popen(name, args)
        self._procs.append((name, proc, log))
        return proc

    def _popen(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        assert self.workdir
        log = open(self.workdir / f"{name}.log", "ab")  # appended to by a restart
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, preexec_fn=_die_with_parent,
        )
        return proc, log

    def _wait_for(self, name: str, url: str, timeout: float, **req: Any) -> None:
        """Poll url until it answers 200 "ok"-ish; fail early if the process died."""
        if name in self._launch:  # remembered for restart()
            self._launch[name] = (self._launch[name][0], url, dict(req.get("headers", {})))
        proc = next(p for n, p, _ in self._procs if n == name)
        ctx = ssl._create_unverified_context()  # only for the readiness probe
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with code {proc.returncode}")
            try:
                request = urllib.request.Request(url, headers=req.get("headers", {}))
                with urllib.request.urlopen(request, timeout=5, context=ctx) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(f"{name} not ready at {url} after {timeout}s ({last})")

    def _start_etcd(self, timeout: float) -> None:
        assert self.workdir
        client, peer = free_ports(2)
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(self.binary("etcd")),
            "--name=test",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # throw-away data: skip fsync, much faster
            "--log-level=warn",
        ])
        self._wait_for("etcd", f"{self.etcd_url}/health", timeout)

    def _start_apiserver(self, timeout: float) -> None:
        assert self.workdir
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        certs = self.workdir / "apiserver-certs"
        self.admin_token = secrets.token_hex(16)
        tokens = self.workdir / "tokens.csv"
        # token,user,uid,"groups": the admin is in system:masters (bypasses RBAC).
        tokens.write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        self.sa_key = self.workdir / "sa.key"
        _write_rsa_key(self.sa_key)
        audit: list[str] = []
        if self.audit_policy is not None:
            policy = self.workdir / "audit-policy.json"
            policy.write_text(json.dumps(self.audit_policy))
            self.audit_log = self.workdir / "audit.log"
            # Blocking mode (the default): an event is in the file before the response is sent.
            # No rotation (the default rotates at 100 MB, under an offset held by audit_events).
            audit = [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                     "--audit-log-maxsize=100000"]
        self._spawn("kube-apiserver", [
            str(self.binary("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            # Self-signed serving cert (CA + cert, both in apiserver.crt).
            f"--cert-dir={certs}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            # TokenRequest (`kubectl create token`) needs issuer + both keys;
            # a private key file serves as the verification key too.
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.sa_key}",
            f"--service-account-signing-key-file={self.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Loopback can't be the `kubernetes` Service endpoint; skip reconciling it.
            "--endpoint-reconciler-type=none",
            # Default admission plugins (NamespaceLifecycle, ServiceAccount,
            # ResourceQuota, webhooks, ValidatingAdmissionPolicy, ...) stay on.
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *audit,
        ])
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        self._wait_for("kube-apiserver", f"{self.server}/readyz", timeout, headers=headers)
        self.ca_file = certs / "apiserver.crt"
        self.kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.server, self.ca_file, self.admin_token,
            user="admin",
        )

    def _start_controller_manager(self, timeout: float) -> None:
        assert self.workdir
        port = free_port()
        self._spawn("kube-controller-manager", [
            str(self.binary("kube-controller-manager")),
            f"--kubeconfig={self.kubeconfig}",
            # Delegated authn/authz of its own (health) endpoint go to the apiserver.
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--controllers={self.CONTROLLERS}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            # serviceaccount-token controller signs legacy SA token secrets.
            f"--service-account-private-key-file={self.sa_key}",
            f"--root-ca-file={self.ca_file}",
            "--profiling=false",
            "--v=1",
        ])
        # /healthz is always allowed anonymously on the controller-manager.
        self._wait_for("kube-controller-manager", f"https://127.0.0.1:{port}/healthz", timeout)

    # ------------------------------------------------------------ fault tools
    def components(self) -> list[str]:
        return [name for name, _proc, _log in self._procs]

    def pid(self, name: str) -> int:
        return next(p.pid for n, p, _ in self._procs if n == name)

    def stop_component(self, name: str, *, kill: bool = False) -> None:
        """Stop one component (SIGTERM and wait, or SIGKILL): its port, data dir and
        certificates stay, so :meth:`start_component` brings the same one back."""
        index = next(i for i, (n, _p, _l) in enumerate(self._procs) if n == name)
        _name, proc, log = self._procs[index]
        _end(proc, log, kill=kill, grace_s=30)

    def start_component(self, name: str, timeout: float = 90.0) -> None:
        """Start a stopped component again with the same arguments (same ports, same
        data dir, same certificates) and wait until it is ready."""
        index = next(i for i, (n, _p, _l) in enumerate(self._procs) if n == name)
        if self._procs[index][1].poll() is None:
            raise ControlPlaneError(f"{name} is still running")
        args, url, headers = self._launch[name]
        proc, log = self._popen(name, args)
        self._procs[index] = (name, proc, log)
        self._wait_for(name, url, timeout, headers=headers)

    def restart(self, name: str, *, kill: bool = False, down_for: float = 0.0, timeout: float = 90.0) -> None:
        """Stop one component (``kill``: SIGKILL, else SIGTERM), keep it down for
        ``down_for`` seconds, start it again on the same ports and data."""
        self.stop_component(name, kill=kill)
        time.sleep(down_for)
        self.start_component(name, timeout)

    def audit_events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The audit events written since byte ``offset`` of the log (needs
        ``audit_policy``; restarts append to the same log), and the offset to read on
        from. Only whole lines: one the API server is writing now waits for the next read."""
        if self.audit_log is None:
            raise ControlPlaneError("no audit log: start the control plane with audit_policy=...")
        if not self.audit_log.exists():
            return [], offset
        with open(self.audit_log, "rb") as f:
            f.seek(offset)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        events = [json.loads(line) for line in whole.splitlines() if line.strip()]
        return events, offset + len(whole)

    # --------------------------------------------------------------- shutdown
    def stop(self, keep_workdir: bool | None = None) -> None:
        """Terminate (then kill) in reverse start order; remove the workdir
        unless asked to keep it (ANYTASKTUNE_KEEP_CONTROLPLANE=1)."""
        # One at a time, so etcd outlives the apiserver's shutdown.
        for _name, proc, log in reversed(self._procs):
            _end(proc, log, kill=False, grace_s=15)
        self._procs.clear()
        keep = self.keep_workdir if keep_workdir is None else keep_workdir
        if self.workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, tail: int = 40) -> str:
        """Last lines of each component's log, for error messages."""
        out = []
        for name, _proc, log in self._procs:
            if not log.closed:  # a component stopped by stop_component
                log.flush()
            lines = Path(log.name).read_text(errors="replace").splitlines()[-tail:]
            out.append(f"----- {name} ({log.name}) -----\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------------ usage
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing at the admin kubeconfig."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin (or with another kubeconfig); text in/out."""
        cmd = [self.kubectl_bin, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return result

    def token_kubeconfig(self, token: str, path: Path | str, user: str = "token-user") -> Path:
        """Write a kubeconfig for this cluster that authenticates with `token`."""
        return write_kubeconfig(path, self.server, self.ca_file, token, user=user)

    def install_kuberay_crds(self, timeout: float = 60) -> None:
        """Server-side apply the cached KubeRay CRDs (RayJob's is too big for the
        client-side last-applied annotation) and wait until they are Established."""
        files = sorted(self.kuberay_crd_dir.glob("*.yaml"))
        if not files:
            raise ControlPlaneBinaryMissing(
                f"no KubeRay CRDs in {self.kuberay_crd_dir}; {BUILD_HINT}"
            )
        applied = self.kubectl(
            "apply", "--server-side", "--output=name", *(f"--filename={f}" for f in files)
        ).stdout.split()
        self.wait_established(applied, timeout)

    def wait_established(self, crds: list[str], timeout: float = 60) -> None:
        """Wait until every CRD (``customresourcedefinition.…/name`` or a bare name) is
        Established. Not `kubectl wait --for=condition=Established`: a CRD created a
        moment ago may have `status.conditions: null`, and kubectl wait then fails at
        once (".status.conditions accessor error: <nil> is of the type <nil>"), which
        made the control plane's start flaky on a loaded machine."""
        names = {c.split("/")[-1] for c in crds if c.split("/")[0].startswith("customresourcedefinition")
                 or "/" not in c}
        deadline = time.monotonic() + timeout
        pending = names
        while True:
            items = json.loads(self.kubectl("get", "customresourcedefinitions", "--output=json").stdout)["items"]
            established = {
                i["metadata"]["name"] for i in items
                if any(c.get("type") == "Established" and c.get("status") == "True"
                       for c in ((i.get("status") or {}).get("conditions") or []))
            }
            pending = names - established
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRDs not Established after {timeout}s: {sorted(pending)}")
            time.sleep(0.2)


def _end(proc: subprocess.Popen[bytes], log: Any, *, kill: bool, grace_s: float) -> None:
    """SIGTERM (or SIGKILL), then SIGKILL if it is still there after grace_s; close its log."""
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
