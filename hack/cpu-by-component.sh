#!/usr/bin/env bash
# Where a command's CPU goes, by component (Python, Ray Train, kube-apiserver, kubectl, the node…),
# from the kernel's process accounting (Debian's `acct`, installed if missing). Root.
#
#   sudo bash hack/cpu-by-component.sh -- CI=true bash .ci/run
#   sudo bash hack/cpu-by-component.sh -- make test-e2e
#
# Accounting is machine-wide while it is on: run nothing else beside it. It takes over the
# kernel's one accounting file, so a system `acct` service's records stop for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: sudo bash hack/cpu-by-component.sh -- COMMAND [ARG...]" >&2; exit 2; }
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || usage
if [ "$(id -u)" != 0 ]; then echo "cpu-by-component: needs root (process accounting)" >&2; exit 2; fi
if ! command -v accton >/dev/null || ! command -v dump-acct >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q acct >/dev/null
fi
records=$(mktemp /tmp/anytasktune-pacct.XXXXXX)
accton "$records" >/dev/null
trap 'accton off >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
rc=0
env "$@" || rc=$?
wall=$(( $(date +%s) - start ))
accton off >/dev/null
echo "== CPU by component: '$*' (exit $rc), records in $records"
python3 hack/cpu_by_component.py "$records" --wall "$wall" --cores "$(nproc)"
exit "$rc"
