"""Filter of hack/cluster/kueue.sh: reads the rendered Kueue manifests (YAML stream) on
stdin, writes them on stdout with, in its two webhook configurations, only Kueue's own
webhooks and the RayJob ones, and those RayJob ones restricted to RayJobs that carry the
queue label. Upstream's others (Job, Pod, Deployment, RayCluster, ... all failurePolicy
Fail) would refuse those creates cluster-wide whenever Kueue's pod is not serving.

JSON out (a YAML subset kubectl reads), so only PyYAML's loader is needed; it is
Debian's python3-yaml or the venv's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KEEP_PATH_PARTS = ("-kueue-x-k8s-io-", "-ray-io-v1-rayjob")


def keep(webhook: dict[str, Any]) -> bool:
    path = webhook.get("clientConfig", {}).get("service", {}).get("path", "")
    return any(part in path for part in KEEP_PATH_PARTS)


def filter_webhooks(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("kind") not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        return doc
    kept = [w for w in doc.get("webhooks") or [] if keep(w)]
    for w in kept:
        if "rayjob" in w["clientConfig"]["service"]["path"]:
            w["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
    return {**doc, "webhooks": kept}


def main() -> None:
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    out = {"apiVersion": "v1", "kind": "List", "items": [filter_webhooks(d) for d in docs]}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
