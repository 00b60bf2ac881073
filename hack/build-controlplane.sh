#!/usr/bin/env bash
# Builds the real Kubernetes pieces the tests run against, from pinned Go modules only
# (no docker, no prebuilt binaries):
#
#   build-controlplane.sh            (make controlplane: the integration tier)
#     $ANYTASKTUNE_CACHE/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                             kubelet,kube-proxy}   hack/controlplane/go.mod, ONE go build
#     $ANYTASKTUNE_CACHE/bin/etcd                  hack/controlplane/go.mod
#     $ANYTASKTUNE_CACHE/bin/helm                  hack/helm/go.mod
#     $ANYTASKTUNE_CACHE/crds/kuberay/ray.io_*.yaml hack/kuberay/go.mod
#
#   build-controlplane.sh cluster    (make cluster: the single-node cluster tier) adds
#     $ANYTASKTUNE_CACHE/bin/coredns               hack/coredns/go.mod
#     $ANYTASKTUNE_CACHE/bin/kuberay-operator      hack/kuberay/go.mod
#     $ANYTASKTUNE_CACHE/bin/pause                 hack/pause (the pod sandbox binary)
#
# Needs only Go and the Go module proxy. Idempotent: one stamp file per part records a
# hash of its go.mod/go.sum files and this script; when it matches and every output
# exists, nothing is rebuilt. GOMODCACHE/GOCACHE keep their default locations so warm
# rebuilds are fast. Set FORCE=1 to rebuild anyway.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ANYTASKTUNE_CACHE:-$HOME/.cache/anytasktune}"
bin="$cache/bin"
crds="$cache/crds/kuberay"
part="${1:-controlplane}"
[[ "$part" == controlplane || "$part" == cluster ]] \
  || { echo "usage: $0 [controlplane|cluster]" >&2; exit 2; }

log() { printf '[build-controlplane] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }

k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# fresh <stamp file> <hash> <outputs...>: exit status 0 when nothing needs rebuilding.
fresh() {
  local stamp="$1" want="$2"; shift 2
  [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
  local f
  for f in "$@"; do [[ -e "$f" ]] || return 1; done
}

hash_files() { (cd "$here" && cat "$@" | sha256sum | cut -d' ' -f1); }

# -mod=mod: the pins are in go.mod/go.sum; there is no vendor dir. go build
# downloads (and checksums) just the modules it needs.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
# Static binaries; no C toolchain needed.
export CGO_ENABLED=0

modver() { go list -m -f '{{.Version}}' "$1"; }
# Without these, the binaries report gitVersion v0.0.0-master+$Format:%H$.
vpkg() { printf -- '-X %s.%s=%s ' "$1" "$2" "$3"; }

# build <main packages...> (with $ldflags): one `go build -o DIR` for all of them, so
# packages they share compile once; each binary lands atomically in $bin.
build() {
  local t0 tmp p
  t0=$(date +%s)
  tmp="$(mktemp -d "$bin/.build.XXXXXX")"
  log "building ${*##*/}"
  go build -trimpath -ldflags="$ldflags" -o "$tmp/" "$@"
  for p in "$@"; do mv -f "$tmp/${p##*/}" "$bin/"; done
  rmdir "$tmp"
  log "built ${*##*/} in $(( $(date +%s) - t0 ))s"
}
# build_as <output name> <main package>: one binary under a name of our choosing.
build_as() {
  local t0
  t0=$(date +%s)
  log "building $1 ($2)"
  go build -trimpath -ldflags="$ldflags" -o "$bin/$1.tmp" "$2"
  mv -f "$bin/$1.tmp" "$bin/$1"
  log "built $1 in $(( $(date +%s) - t0 ))s"
}

mkdir -p "$bin" "$crds"
rm -rf "$bin"/.build.*  # leftovers of an interrupted build

# ------------------------------------------------------------ part 1: controlplane
cp_stamp="$cache/controlplane.stamp"
cp_outputs=("${k8s_binaries[@]/#/$bin/}" "$bin/etcd" "$bin/helm"
            "$crds/ray.io_rayjobs.yaml" "$crds/ray.io_rayclusters.yaml")
cp_want="$(hash_files controlplane/go.mod controlplane/go.sum helm/go.mod helm/go.sum \
             kuberay/go.mod kuberay/go.sum build-controlplane.sh)"

if fresh "$cp_stamp" "$cp_want" "${cp_outputs[@]}"; then
  log "control plane up to date in $cache (stamp $cp_want)"
else
  start=$(date +%s)
  cd "$here/controlplane"
  k8s_ver="$(modver k8s.io/kubernetes)"          # e.g. v1.32.13
  etcd_ver="$(modver go.etcd.io/etcd/server/v3)"
  k8s_minor="$(cut -d. -f2 <<<"$k8s_ver")"
  log "kubernetes $k8s_ver, etcd $etcd_ver -> $bin"
  log "GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" $(vpkg $p gitVersion "$k8s_ver") $(vpkg $p gitMajor 1) $(vpkg $p gitMinor "$k8s_minor")"
    ldflags+=" $(vpkg $p gitTreeState clean) $(vpkg $p buildDate 1970-01-01T00:00:00Z)"
  done
  build "${k8s_binaries[@]/#/k8s.io/kubernetes/cmd/}"
  ldflags="-s -w"
  build_as etcd go.etcd.io/etcd/server/v3

  cd "$here/helm"
  helm_ver="$(modver helm.sh/helm/v3)"
  log "helm $helm_ver -> $bin"
  # helm's own version, and the cluster version `helm template`/`helm lint` assume.
  ldflags="-s -w $(vpkg helm.sh/helm/v3/internal/version version "$helm_ver")"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" $(vpkg $p k8sVersionMajor 1) $(vpkg $p k8sVersionMinor "$k8s_minor")"
  done
  build_as helm helm.sh/helm/v3/cmd/helm

  # KubeRay CRDs: straight out of the pinned module, never hand-written.
  cd "$here/kuberay"
  # `go list -m` alone prints "" for a module not in the module cache yet (a cold machine).
  go mod download github.com/ray-project/kuberay/ray-operator
  kuberay_dir="$(go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)"
  [[ -d "$kuberay_dir/config/crd/bases" ]] || { log "error: no CRDs under '$kuberay_dir'"; exit 1; }
  rm -f "$crds"/*.yaml
  for f in "$kuberay_dir"/config/crd/bases/ray.io_*.yaml; do
    install -m 0644 "$f" "$crds/"
    log "copied CRD $(basename "$f") ($(modver github.com/ray-project/kuberay/ray-operator))"
  done

  "$bin/kube-apiserver" --version >&2
  "$bin/kubelet" --version >&2
  # Never `| head` under pipefail: head exits after one line, the writer gets
  # SIGPIPE on its next write and the pipeline fails (exit 141) depending on timing.
  etcd_version="$("$bin/etcd" --version)"
  log "${etcd_version%%$'\n'*}"
  "$bin/helm" version --short >&2
  echo "$cp_want" >"$cp_stamp"
  log "control plane done in $(( $(date +%s) - start ))s; outputs in $cache"
fi

[[ "$part" == cluster ]] || exit 0

# ------------------------------------------------------ part 2: the cluster's extras
cl_stamp="$cache/cluster-binaries.stamp"
cl_outputs=("$bin/coredns" "$bin/kuberay-operator" "$bin/pause")
cl_want="$(hash_files coredns/go.mod coredns/go.sum kuberay/go.mod kuberay/go.sum \
             pause/go.mod pause/main.go build-controlplane.sh)"
if fresh "$cl_stamp" "$cl_want" "${cl_outputs[@]}"; then
  log "cluster binaries up to date in $cache (stamp $cl_want)"
  exit 0
fi
start=$(date +%s)

cd "$here/coredns"
log "coredns $(modver github.com/coredns/coredns) -> $bin"
ldflags="-s -w"
build_as coredns github.com/coredns/coredns
"$bin/coredns" -version >&2

cd "$here/kuberay"
log "KubeRay operator $(modver github.com/ray-project/kuberay/ray-operator) -> $bin"
build_as kuberay-operator github.com/ray-project/kuberay/ray-operator

cd "$here/pause"
build_as pause github.com/anytasktune/hack/pause

echo "$cl_want" >"$cl_stamp"
log "cluster binaries done in $(( $(date +%s) - start ))s; outputs in $cache"
