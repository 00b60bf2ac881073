#!/usr/bin/env bash
# Builds Kueue (sigs.k8s.io/kueue, pinned in hack/kueue/go.mod) for the cluster tier's
# tests/cluster/test_kueue.py, from the Go module only (no docker, no prebuilt binaries):
#
#     $ANYTASKTUNE_CACHE/bin/kueue      the controller manager (cmd/kueue)
#
# Its manifests are not copied here: hack/cluster/kueue.sh renders them from the same
# module's config/default (kustomize) when it deploys.
#
# A script of its own rather than a part of build-controlplane.sh: that script's stamps
# hash the script itself, so adding Kueue there would rebuild Kubernetes, coredns and
# KubeRay. Same rules otherwise: one stamp (a hash of hack/kueue/go.{mod,sum} and this
# script); when it matches and every output exists nothing is rebuilt; FORCE=1 rebuilds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ANYTASKTUNE_CACHE:-$HOME/.cache/anytasktune}"
bin="$cache/bin"
stamp="$cache/kueue.stamp"

log() { printf '[build-kueue] %s\n' "$*" >&2; }
command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }

want="$(cd "$here" && cat kueue/go.mod kueue/go.sum build-kueue.sh | sha256sum | cut -d' ' -f1)"
outputs=("$bin/kueue")
fresh=1
[[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || fresh=0
for f in "${outputs[@]}"; do [[ -e "$f" ]] || fresh=0; done
if [[ $fresh == 1 ]]; then
  log "kueue up to date in $bin (stamp $want)"
  exit 0
fi

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export CGO_ENABLED=0
mkdir -p "$bin"
start=$(date +%s)
cd "$here/kueue"
ver="$(go list -m -f '{{.Version}}' sigs.k8s.io/kueue)"
log "Kueue $ver -> $bin/kueue (GOCACHE=$(go env GOCACHE))"
# Without these the binary reports v0.0.0-main.
ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$ver"
ldflags+=" -X sigs.k8s.io/kueue/pkg/version.BuildDate=1970-01-01T00:00:00Z"
go build -trimpath -ldflags="$ldflags" -o "$bin/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue
mv -f "$bin/kueue.tmp" "$bin/kueue"
log "built kueue in $(( $(date +%s) - start ))s ($(du -m "$bin/kueue" | cut -f1) MiB)"

echo "$want" >"$stamp"

