"""Pod-identity credentials that expire mid-run (IRSA / web identity).

The S3 server issues them itself: SeaweedFS's STS (AssumeRoleWithWebIdentity at the
S3 endpoint) trusts a small OpenID issuer run by this module (an RSA key made with
the `openssl` CLI, its JWKS served over loopback HTTP), and gives every session a
life of CREDENTIAL_LIFE_S seconds. The trainjob gets what a pod with a projected
service-account token gets: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (plus
AWS_ENDPOINT_URL_STS pointing at the server) and no keys at all.

What this proves: the server refuses a session's keys once its life is over (so a
component that kept keys beyond it would fail), and every S3 client of the
trainjob — the boto3 ObjectStore and the pyarrow filesystem Ray Train checkpoints
through — keeps working across several lifetimes, in one process and through a
whole CLI run whose checkpoints are uploaded after the first session expired.
What it does not prove: AWS's own STS endpoint and EKS's token rotation (the token
file here is written once and outlives the test).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import INSTRUCTION, PACED, PROGRESS_WAIT_S, make_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import tinymodel  # noqa: E402

pytestmark = pytest.mark.timeout(1800)  # the training test waits twice, up to PROGRESS_WAIT_S each
BUCKET = "anytasktune-sts"
ROLE_ARN = "arn:aws:iam::role/AnyTaskTuneTrainJob"
AUDIENCE = "sts.anytasktune.test"
CREDENTIAL_LIFE_S = 5


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class WebIdentityIssuer:
    """An OpenID issuer on loopback: RS256 tokens for a Kubernetes-style service account."""

    def __init__(self, folder: Path) -> None:
        from anytasktune.ports import free_port

        self.key = folder / "issuer-key.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(self.key)], check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"], check=True,
                                 capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                          "n": _b64(bytes.fromhex(modulus)), "e": _b64((65537).to_bytes(3, "big"))}]}
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.url = f"http://127.0.0.1:{free_port()}"
        self._server = HTTPServer(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, life_s: int = 3600) -> str:
        now = int(time.time())
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        claims = _b64(json.dumps({"iss": self.url, "aud": AUDIENCE, "iat": now, "exp": now + life_s,
                                  "sub": "system:serviceaccount:team-a:anytasktune-trainjob"}).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=f"{header}.{claims}".encode(), check=True, capture_output=True).stdout
        return f"{header}.{claims}.{_b64(signature)}"

    def iam_config(self, life_s: int) -> dict[str, Any]:
        """SeaweedFS's advanced IAM document: its STS trusts this issuer for one role."""
        return {
            "sts": {"tokenDuration": f"{life_s}s", "maxSessionLength": "1h", "issuer": "seaweedfs-sts",
                    "signingKey": base64.b64encode(os.urandom(32)).decode()},
            "providers": [{"name": "cluster-oidc", "type": "oidc", "enabled": True,
                           "config": {"issuer": self.url, "clientId": AUDIENCE, "jwksUri": self.url + "/jwks"}}],
            "policy": {"defaultEffect": "Deny"},
            "roles": [{"roleName": "AnyTaskTuneTrainJob", "roleArn": ROLE_ARN, "attachedPolicies": ["S3ReadWrite"],
                       "trustPolicy": {"Version": "2012-10-17", "Statement": [{
                           "Effect": "Allow", "Principal": {"Federated": "cluster-oidc"},
                           "Action": ["sts:AssumeRoleWithWebIdentity"]}]}}],
            "policies": [{"name": "S3ReadWrite", "document": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*", "arn:aws:s3:::*/*"]},
                {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]}]}}],
        }


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebIdentityIssuer]:
    found = WebIdentityIssuer(tmp_path_factory.mktemp("issuer"))
    yield found
    found.close()


@pytest.fixture(scope="module")
def sts_server(issuer: WebIdentityIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from anytasktune.s3server import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3-sts"), buckets=[BUCKET],
                        iam_config=issuer.iam_config(CREDENTIAL_LIFE_S)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pod_identity_env(issuer: WebIdentityIssuer, sts_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a pod with a projected token has: a role and a token file; no keys, no config files."""
    token = tmp_path_factory.mktemp("serviceaccount") / "token"
    token.write_text(issuer.token())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ROLE_ARN": ROLE_ARN, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_SESSION_NAME": "anytasktune-trainjob", "AWS_ENDPOINT_URL_STS": sts_server.endpoint,
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
    })
    return env


def test_the_server_refuses_a_session_after_its_life(pod_identity_env: dict[str, str], sts_server: Any,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The premise, and the old bug: keys taken once (as checkpointfs used to copy them
    into pyarrow) stop working; the refreshing clients built at the same moment do not."""
    import boto3
    import pyarrow.fs as pafs

    from anytasktune_contract.storage import StorageSettings
    from anytasktune_trainjob.checkpointfs import pyarrow_filesystem
    from anytasktune_trainjob.store import open_store

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in pod_identity_env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    frozen = boto3.session.Session().get_credentials().get_frozen_credentials()
    fixed = boto3.session.Session().client(
        "s3", endpoint_url=sts_server.endpoint, region_name="us-east-1", aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key, aws_session_token=frozen.token)
    settings = StorageSettings(sts_server.endpoint, "us-east-1", "path")
    store = open_store(settings, 10)
    fs = pyarrow_filesystem(settings, 10)
    fixed.put_object(Bucket=BUCKET, Key="probe/fixed", Body=b"0")
    store.put_bytes(f"s3://{BUCKET}/probe/store", b"0")
    with fs.open_output_stream(f"{BUCKET}/probe/pyarrow") as f:
        f.write(b"0")

    time.sleep(CREDENTIAL_LIFE_S + 3)
    with pytest.raises(Exception, match="InvalidAccessKeyId|ExpiredToken|AccessDenied"):
        fixed.put_object(Bucket=BUCKET, Key="probe/fixed", Body=b"1")
    store.put_bytes(f"s3://{BUCKET}/probe/store", b"1")
    with fs.open_output_stream(f"{BUCKET}/probe/pyarrow") as f:
        f.write(b"1")
    (tmp_path / "copy").mkdir()
    pafs.copy_files(f"{BUCKET}/probe", str(tmp_path / "copy"), source_filesystem=fs)  # the way Ray restores
    assert (tmp_path / "copy" / "pyarrow").read_bytes() == b"1"
    assert store.get_bytes(f"s3://{BUCKET}/probe/pyarrow")[0] == b"1"
    assert sts_server.client().get_object(Bucket=BUCKET, Key="probe/store")["Body"].read() == b"1"


def test_a_run_longer_than_its_credentials_publishes(pod_identity_env: dict[str, str], sts_server: Any,
                                                     tmp_path: Path) -> None:
    """The trainjob's CLI with pod identity only: data, base model, checkpoints (Ray
    Train workers), adapter and manifest all go through expiring sessions."""
    records = tinymodel.sentiment_records(64, seed=5)
    folder = tinymodel.save_tiny_model(tmp_path / "model", tinymodel.training_texts(records, INSTRUCTION))
    admin = sts_server.client()  # the static identity only stages the inputs
    tinymodel.upload_folder(admin, folder, BUCKET, "models/tiny")
    admin.put_object(Bucket=BUCKET, Key="data/reviews.jsonl", Body=tinymodel.to_jsonl(records).encode())
    spec = make_spec(model_uri=f"s3://{BUCKET}/models/tiny/", dataset_uri=f"s3://{BUCKET}/data/reviews.jsonl",
                     endpoint=sts_server.endpoint, subtask="pod-identity", outputPrefix=f"s3://{BUCKET}/runs/pod-identity",
                     training={"maxSteps": 12, "checkpointEverySteps": 3},
                     evaluation={"maxSamples": 4}, scaling={"numWorkers": 1, "cpusPerWorker": 1})
    (tmp_path / "spec.json").write_text(spec.to_json())

    log = tmp_path / "trainjob.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "anytasktune_trainjob", "--spec", str(tmp_path / "spec.json")],
                                stdout=sink, stderr=subprocess.STDOUT,
                                # paced, so that steps remain after the first checkpoint on any machine
                                env={**pod_identity_env, **PACED})
        try:
            resumed = _pause_past_a_session_after_first_checkpoint(proc, admin, log)
            proc.wait(timeout=PROGRESS_WAIT_S)
        finally:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-6000:]
    bucket_listing = admin.list_objects_v2(Bucket=BUCKET, Prefix="runs/pod-identity/")["Contents"]
    written_after = [o["Key"] for o in bucket_listing if o["LastModified"].timestamp() >= int(resumed)]
    # Checkpoints, the adapter and the manifest went up with a session taken after the pause.
    assert any(k.endswith("trainer_state.json") for k in written_after), written_after
    assert any(k.endswith("/manifest.json") for k in written_after), written_after
    run_manifests = [o["Key"] for o in bucket_listing if "/runs/" in o["Key"] and o["Key"].endswith("/manifest.json")]
    assert len(run_manifests) == 1, run_manifests
    manifest = json.loads(admin.get_object(Bucket=BUCKET, Key=run_manifests[0])["Body"].read())
    assert manifest["training"]["steps"] == 12
    assert set(manifest["artifacts"]["adapter"]) <= set(manifest["artifacts"]["files"])


def _pause_past_a_session_after_first_checkpoint(proc: subprocess.Popen[bytes], admin: Any, log: Path) -> float:
    """Freeze the trainjob and its Ray processes (SIGSTOP) once the first checkpoint is
    in the bucket, for longer than a session lives, then let it go on: every upload
    after that must take a new session. Deterministic, unlike a run that merely takes
    long (a fast machine finished one inside two lifetimes). Returns the resume time."""
    import signal

    import psutil

    deadline = time.time() + PROGRESS_WAIT_S
    while not _checkpoints_in(admin):
        assert proc.poll() is None, log.read_text()[-6000:]
        assert time.time() < deadline, f"no checkpoint within {PROGRESS_WAIT_S} s"
        time.sleep(0.1)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in tree:
        process.send_signal(signal.SIGSTOP)
    time.sleep(CREDENTIAL_LIFE_S + 2)
    resumed = time.time()
    for process in reversed(tree):
        process.send_signal(signal.SIGCONT)
    return resumed


def _checkpoints_in(admin: Any) -> bool:
    listing = admin.list_objects_v2(Bucket=BUCKET, Prefix="runs/pod-identity/").get("Contents", [])
    return any(o["Key"].endswith("trainer_state.json") for o in listing)
