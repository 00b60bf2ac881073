#!/usr/bin/env bash
# Fail early and clearly when a step's files cannot fit, instead of pip's
# "[Errno 28] No space left on device" halfway through an install.
# usage: check-disk.sh WHAT PATH GiB [PATH GiB]...   (paths on one filesystem add up)
set -euo pipefail
what=$1; shift
declare -A need_on where_on probe_on  # per filesystem: GiB needed, paths, an existing folder on it
while (( $# >= 2 )); do
  dir=$1; while [[ ! -e $dir ]]; do dir=$(dirname "$dir"); done
  dev=$(stat -c %d "$dir")
  need_on[$dev]=$(( ${need_on[$dev]:-0} + $2 )); where_on[$dev]="${where_on[$dev]:-}${where_on[$dev]:+ and }$1"
  probe_on[$dev]=${probe_on[$dev]:-$dir}
  shift 2
done
for dev in "${!need_on[@]}"; do
  probe=${probe_on[$dev]}
  avail=$(df -Pk "$probe" | awk 'NR == 2 { print int($4 / 1048576) }')
  if (( avail < need_on[$dev] )); then
    echo "error: $what needs about ${need_on[$dev]} GiB free for ${where_on[$dev]}; that filesystem has ${avail} GiB free (df -h $probe)." >&2
    exit 1
  fi
done
