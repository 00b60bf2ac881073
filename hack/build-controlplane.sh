#!/usr/bin/env bash
# Builds the real control plane the integration tests run against, from the
# versions pinned in hack/controlplane/go.mod (kubernetes, etcd),
# hack/helm/go.mod (helm) and hack/kuberay/go.mod (KubeRay CRDs):
#
#   $ANYTASKTUNE_CACHE/bin/{kube-apiserver,kube-controller-manager,etcd,helm}
#   $ANYTASKTUNE_CACHE/crds/kuberay/ray.io_*.yaml
#
# Needs only Go and the Go module proxy. Idempotent: a stamp file records a hash
# of the go.mod/go.sum files and this script; when it matches and every output
# exists, nothing is rebuilt. GOMODCACHE/GOCACHE keep their default locations
# so warm rebuilds are fast. Set FORCE=1 to rebuild anyway.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ANYTASKTUNE_CACHE:-$HOME/.cache/anytasktune}"
bin="$cache/bin"
crds="$cache/crds/kuberay"
stamp="$cache/controlplane.stamp"

log() { printf '[build-controlplane] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }

outputs=("$bin/kube-apiserver" "$bin/kube-controller-manager" "$bin/etcd" "$bin/helm"
         "$crds/ray.io_rayjobs.yaml" "$crds/ray.io_rayclusters.yaml")

want="$(cd "$here" && cat controlplane/go.mod controlplane/go.sum helm/go.mod helm/go.sum \
            kuberay/go.mod kuberay/go.sum build-controlplane.sh | sha256sum | cut -d' ' -f1)"

up_to_date=1
[[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || up_to_date=0
for f in "${outputs[@]}"; do [[ -e "$f" ]] || up_to_date=0; done
if [[ "$up_to_date" == 1 && "${FORCE:-0}" != 1 ]]; then
  log "up to date in $cache (stamp $want); nothing to do"
  exit 0
fi

mkdir -p "$bin" "$crds"
start=$(date +%s)
# -mod=mod: the pins are in go.mod/go.sum; there is no vendor dir. go build
# downloads (and checksums) just the modules it needs.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
# Static binaries; no C toolchain needed.
export CGO_ENABLED=0

cd "$here/controlplane"
modver() { go list -m -f '{{.Version}}' "$1"; }
k8s_ver="$(modver k8s.io/kubernetes)"          # e.g. v1.32.13
etcd_ver="$(modver go.etcd.io/etcd/server/v3)"
k8s_minor="$(cut -d. -f2 <<<"$k8s_ver")"
log "kubernetes $k8s_ver, etcd $etcd_ver -> $bin"
log "GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

# Without these, the binaries report gitVersion v0.0.0-master+$Format:%H$.
vpkg() { printf -- '-X %s.%s=%s ' "$1" "$2" "$3"; }
k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" $(vpkg $p gitVersion "$k8s_ver") $(vpkg $p gitMajor 1) $(vpkg $p gitMinor "$k8s_minor")"
  k8s_ldflags+=" $(vpkg $p gitTreeState clean) $(vpkg $p buildDate 1970-01-01T00:00:00Z)"
done

build() {  # build <output name> <main package> <ldflags>
  local t0=$(date +%s)
  log "building $1 ($2)"
  go build -trimpath -ldflags="$3" -o "$bin/$1.tmp" "$2"
  mv -f "$bin/$1.tmp" "$bin/$1"
  log "built $1 in $(( $(date +%s) - t0 ))s"
}
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build etcd go.etcd.io/etcd/server/v3 "-s -w"

cd "$here/helm"
helm_ver="$(modver helm.sh/helm/v3)"
log "helm $helm_ver -> $bin"
# helm's own version, and the cluster version `helm template`/`helm lint` assume.
helm_ldflags="-s -w $(vpkg helm.sh/helm/v3/internal/version version "$helm_ver")"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" $(vpkg $p k8sVersionMajor 1) $(vpkg $p k8sVersionMinor "$k8s_minor")"
done
build helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"

# KubeRay CRDs: straight out of the pinned module, never hand-written.
cd "$here/kuberay"
kuberay_dir="$(go mod download -json github.com/ray-project/kuberay/ray-operator \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$kuberay_dir/config/crd/bases" ]] || { log "error: no CRDs under '$kuberay_dir'"; exit 1; }
rm -f "$crds"/*.yaml
for f in "$kuberay_dir"/config/crd/bases/ray.io_*.yaml; do
  install -m 0644 "$f" "$crds/"
  log "copied CRD $(basename "$f") ($(modver github.com/ray-project/kuberay/ray-operator))"
done

"$bin/kube-apiserver" --version >&2
# Never `| head` under pipefail: head exits after one line, the writer gets
# SIGPIPE on its next write and the pipeline fails (exit 141) depending on timing.
etcd_version="$("$bin/etcd" --version)"
log "${etcd_version%%$'\n'*}"
"$bin/helm" version --short >&2
echo "$want" >"$stamp"
log "done in $(( $(date +%s) - start ))s; outputs in $cache"
