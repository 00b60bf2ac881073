"""Stage a first TaskFineTune on `make cluster`: an S3 server on the host, a tiny base model and
two small datasets in it, a namespace enforcing Pod Security "restricted" with the pods' S3
Secret, and `try-it.yaml` (the TaskFineTune) in the current folder. Then it prints the helm
and kubectl commands to run, and serves S3 until Ctrl-C.

    sudo make cluster && make images
    .venv/bin/python hack/cluster/try-it.py          # keep it running; next commands in another shell

The model is built here from a config (no download): Qwen2-shaped, ~130 k parameters, so a
pool of two sub-tasks trains in about two minutes on two CPU cores. It is what the cluster
tier (tests/cluster) runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cluster.harness import (  # noqa: E402 - after the path
    BRIDGE_IP,
    BUCKET,
    CACHE,
    KUBECONFIG,
    Kube,
    image_refs,
    taskfinetune,
    upload_training_data,
)

NAMESPACE = "try-it"


def main() -> None:
    from anytasktune.s3server import EmbeddedS3

    if not KUBECONFIG.exists():
        sys.exit(f"no cluster: {KUBECONFIG} is missing (run `sudo make cluster` first)")
    try:
        images = image_refs()
    except FileNotFoundError:
        sys.exit("no images: run `make images` first (it builds them and imports them into the cluster)")
    folder = CACHE / "try-it"
    folder.mkdir(parents=True, exist_ok=True)
    s3 = EmbeddedS3(folder / "s3", buckets=[BUCKET], host=BRIDGE_IP).start()
    data = upload_training_data(s3, folder / "data")
    kube = Kube()
    kube.namespace(NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted",
                               "pod-security.kubernetes.io/enforce-version": "latest"})
    kube.secret(NAMESPACE, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    tft = taskfinetune("reviews", NAMESPACE, data=data, endpoint=s3.endpoint,
                       subtasks={"sentiment": "sentiment", "sentiment-b": "sentiment-b"}, image=images["TRAINJOB_IMAGE"])
    Path("try-it.yaml").write_text(json.dumps(tft, indent=2) + "\n")
    repo, _, tag = images["OPERATOR_IMAGE"].rpartition(":")
    policy = json.dumps([{"namespaces": ["*"], "endpoints": [s3.endpoint], "outputs": [f"s3://{BUCKET}/adapters/"]}])
    print(f"""
S3 at {s3.endpoint} (bucket {BUCKET}; access key {s3.access_key}), data staged; namespace {NAMESPACE} ready.
Wrote try-it.yaml. In another shell:

  export KUBECONFIG={KUBECONFIG}
  kubectl create namespace anytasktune-system
  kubectl -n anytasktune-system create secret generic operator-s3 \\
      --from-literal=AWS_ACCESS_KEY_ID={s3.access_key} --from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}
  {CACHE}/bin/helm install anytasktune charts/anytasktune -n anytasktune-system \\
      --set image.repository={repo} --set image.tag={tag} --set image.pullPolicy=Never \\
      --set operator.trainingImage={images['TRAINJOB_IMAGE']} \\
      --set storage.endpoint={s3.endpoint} --set storage.region=us-east-1 \\
      --set storage.credentialsSecret.name=operator-s3 --set-json 'storage.readPolicy={policy}' --wait
  kubectl apply -f try-it.yaml
  kubectl get tft -n {NAMESPACE} -w

Ctrl-C here stops the S3 server (its data stays in {folder / 's3'}).""", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        s3.stop()
        if os.environ.get("SUDO_UID"):
            subprocess.run(["chown", "-R", f"{os.environ['SUDO_UID']}", "try-it.yaml"], check=False)


if __name__ == "__main__":
    main()
