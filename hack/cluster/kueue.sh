#!/usr/bin/env bash
# kueue.sh up|down: Kueue (sigs.k8s.io/kueue, pinned in hack/kueue/go.mod) in the running
# single-node cluster, for tests/cluster/test_kueue.py. Not part of `make cluster`: the
# other tests run without it. Facts and traps: hack/README.md ("Kueue").
#
#   up    builds the controller manager (hack/build-kueue.sh) and its FROM-scratch image
#         (hack/images/build.sh kueue), imports it, and applies the module's own kustomize
#         base (config/default: CRDs, RBAC, webhooks, the Deployment) with our image and
#         our Configuration: only the RayJob integration (ray.io/rayjob), no
#         waitForPodsReady, internal cert management. Waits until the webhooks answer.
#         Idempotent.
#   down  deletes all of it again (CRDs included, so every Kueue object goes too).
#
# Changes to upstream's config/default, each for a reason of this cluster:
#   - the visibility APIServices are left out (and VisibilityOnDemand is off): our API
#     server has no front-proxy (aggregation layer) certificates, so they would stay
#     unavailable and break discovery for every client (the namespace controller included);
#   - only Kueue's own webhooks and the RayJob ones are kept, and the RayJob ones only see
#     RayJobs labelled kueue.x-k8s.io/queue-name: upstream's Job, Pod, Deployment,
#     RayCluster... webhooks are failurePolicy Fail, so while Kueue's pod is not serving,
#     every such create in the cluster (KubeRay's submitter Jobs, Ray pods of the other
#     tests) would be refused;
#   - its pod requests 100m CPU / 256Mi instead of 500m / 512Mi (the node has 2 cores and
#     the test's Ray pods need theirs); limits as upstream.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
need_root
action="${1:-up}"
KUEUE_NAMESPACE="kueue-system"
kq="$STATE/kueue"
rendered="$kq/rendered.yaml"

# within <seconds> <command...>: whether the command succeeds before the deadline.
within() {
  local deadline=$(( $(date +%s) + $1 ))
  shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) > deadline )) && return 1
    sleep 0.5
  done
}

# poll <what> <seconds> <command...>: until the command succeeds; on timeout, what Kueue's
# pod says.
poll() {
  local what=$1 timeout=$2
  shift 2
  if ! within "$timeout" "$@"; then
    kubectl_ -n "$KUEUE_NAMESPACE" get pods -o wide >&2 || true
    kubectl_ -n "$KUEUE_NAMESPACE" logs deploy/kueue-controller-manager --tail=30 >&2 || true
    cat "$kq/probe.err" >&2 2>/dev/null || true
    die "timed out after ${timeout}s waiting for $what"
  fi
}

render() {
  local src
  src="$(module_dir "$repo/hack/kueue" sigs.k8s.io/kueue)"
  rm -rf "$kq"; mkdir -p "$kq/overlay"
  cp -r "$src/config" "$kq/config"; chmod -R u+w "$kq/config"
  cat >"$kq/overlay/controller_manager_config.yaml" <<'EOF'
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: :8081
metrics:
  bindAddress: :8443
webhook:
  port: 9443
# One replica: no leader election (a restarted pod serves at once).
leaderElection:
  leaderElect: false
# waitForPodsReady: absent, i.e. off.
internalCertManagement:
  enable: true
  webhookServiceName: kueue-webhook-service
  webhookSecretName: kueue-webhook-server-cert
integrations:
  frameworks:
  - "ray.io/rayjob"
featureGates:
  VisibilityOnDemand: false
EOF
  cat >"$kq/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../config/default
images:
- name: us-central1-docker.pkg.dev/k8s-staging-images/kueue/kueue
  newName: ${KUEUE_IMAGE%:*}
  newTag: ${KUEUE_IMAGE##*:}
configMapGenerator:
- name: kueue-manager-config
  namespace: $KUEUE_NAMESPACE
  behavior: replace
  files:
  - controller_manager_config.yaml
generatorOptions:
  disableNameSuffixHash: true
patches:
- target: {kind: Deployment, name: kueue-controller-manager}
  patch: |-
    - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
    - {op: replace, path: /spec/template/spec/containers/0/resources/requests, value: {cpu: 100m, memory: 256Mi}}
- target: {kind: APIService}
  patch: |-
    \$patch: delete
    apiVersion: apiregistration.k8s.io/v1
    kind: APIService
    metadata: {name: unused}
EOF
  kubectl_ kustomize "$kq/overlay" | python3 "$here/kueue_webhooks.py" >"$rendered"
}

case "$action" in
up)
  bash "$repo/hack/images/build.sh" --import kueue
  # shellcheck disable=SC1091
  source "$cache/images/refs.env"
  t0=$(date +%s)
  render
  kubectl_ apply --server-side --force-conflicts -f "$rendered" >/dev/null
  deployment_available() {
    [[ "$(kubectl_ -n "$KUEUE_NAMESPACE" get deploy kueue-controller-manager -o jsonpath='{.status.availableReplicas}')" == 1 ]]
  }
  # Kueue's pod is ready once cert-controller sees the serving certificate, which it wrote
  # into its Secret, in the Secret's volume. The kubelet copies it there on a pod sync (up to
  # a minute, more on a loaded node), and cert-controller looks with exponential backoff
  # (1, 2, 4 ... 256 s, each jittered up to twice, 10 looks): a copy that lands at 70 s may
  # be seen only 2-4 minutes after the start (a CI run timed out at 180 s so). A pod started
  # after the Secret has its certificate mounts it at once: so, if the first one is not
  # ready within a minute, restart it.
  secret_has_certificate() {
    [[ -n "$(kubectl_ -n "$KUEUE_NAMESPACE" get secret kueue-webhook-server-cert -o jsonpath='{.data.tls\.crt}')" ]]
  }
  if ! within "${ANYTASKTUNE_KUEUE_FIRST_POD_WAIT_S:-60}" deployment_available; then
    poll "Kueue's serving certificate in its Secret" 120 secret_has_certificate
    log "Kueue's pod is not ready yet; restarting it so that it mounts the certificate now in its Secret"
    kubectl_ -n "$KUEUE_NAMESPACE" delete pod -l control-plane=controller-manager --wait=false >/dev/null
    poll "the Kueue controller manager Deployment" 240 deployment_available
  fi
  # A dry-run create goes through Kueue's mutating and validating webhooks (the API server
  # -> the Service's ClusterIP -> kube-proxy's DNAT -> the pod on the bridge, over TLS with
  # the CA Kueue injected): proof that admission works, not just that the pod runs.
  webhook_answers() {
    kubectl_ create --dry-run=server -o name -f - >/dev/null 2>"$kq/probe.err" <<'EOF'
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: anytasktune-webhook-probe}
EOF
  }
  poll "Kueue's webhooks" 120 webhook_answers
  log "Kueue up in $(( $(date +%s) - t0 ))s after the image ($KUEUE_IMAGE)"
  ;;
down)
  # Kueue's objects first, while its pod still runs to remove their finalizers (a
  # ClusterQueue or Workload whose finalizer outlives the pod would hold its CRD's deletion
  # forever); whatever still has one after that gets it cleared.
  kinds=(workloads localqueues clusterqueues cohorts resourceflavors admissionchecks topologies
         workloadpriorityclasses provisioningrequestconfigs multikueueconfigs multikueueclusters)
  for k in "${kinds[@]}"; do
    kubectl_ delete "$k.kueue.x-k8s.io" --all -A --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
  done
  for k in "${kinds[@]}"; do
    while read -r ns name; do
      [[ -n "$name" ]] || continue
      [[ "$ns" == "<none>" ]] && ns=""  # cluster-scoped
      kubectl_ patch "$k.kueue.x-k8s.io" "$name" ${ns:+-n "$ns"} --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
      log "cleared the finalizers of $k $ns/$name"
    done < <(kubectl_ get "$k.kueue.x-k8s.io" -A --no-headers \
               -o custom-columns=NS:.metadata.namespace,NAME:.metadata.name 2>/dev/null)
  done
  if [[ -f "$rendered" ]]; then
    kubectl_ delete --ignore-not-found --wait=true --timeout=120s -f "$rendered" >/dev/null
  else
    log "nothing rendered in $kq: nothing to delete"
  fi
  log "Kueue removed"
  ;;
*) die "usage: $0 up|down" ;;
esac
