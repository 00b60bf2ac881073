#!/usr/bin/env bash
# import-image.sh REF...: import images built by hack/images/build.sh (REF as written in
# $ANYTASKTUNE_CACHE/images/refs.env, e.g. localhost/anytasktune/trainjob:<key>) into the
# running cluster's containerd (namespace k8s.io, where the kubelet looks). An image that
# is already there is skipped: the tag is a hash of the image's inputs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
need_root
[[ -S "$CONTAINERD_SOCK" ]] || die "the cluster's containerd is not running (make cluster)"
present="$(ctr_ images ls -q)"
for ref in "$@"; do
  name="${ref##*/}"; name="${name%%:*}"; key="${ref##*:}"
  archive="$cache/images/$name-$key.oci.tar"
  if grep -qxF "$ref" <<<"$present"; then
    log "image $ref already in the cluster"
    continue
  fi
  [[ -s "$archive" ]] || die "no archive $archive for $ref (hack/images/build.sh $name)"
  t0=$(date +%s)
  ctr_ images import "$archive" >/dev/null
  present="$(ctr_ images ls -q)"
  grep -qxF "$ref" <<<"$present" || die "imported $archive but containerd has no image $ref"
  log "imported $ref in $(( $(date +%s) - t0 ))s"
  # Older builds of the same image: gone.
  while read -r old; do
    [[ "$old" == "${ref%:*}:"* && "$old" != "$ref" ]] || continue
    ctr_ images rm "$old" >/dev/null && log "removed the older $old"
  done <<<"$present"
done

# The kubelet's CRI keeps its own reference to every image it ran, by image ID
# (sha256:<config>): drop those whose manifest no named image uses any more, then let
# containerd's GC free their content and snapshots (a 5 GB training image per build).
listing="$(ctr_ images ls)"
named="$(awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}' <<<"$listing")"
orphans="$(awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' <<<"$listing" | while read -r id digest; do
  grep -qxF "$digest" <<<"$named" || echo "$id"
done)"
if [[ -n "$orphans" ]]; then
  # shellcheck disable=SC2086
  ctr_ images rm --sync $orphans >/dev/null
  log "removed $(wc -w <<<"$orphans") image IDs no named image uses; containerd collected their layers"
fi
