#!/usr/bin/env bash
# make cluster-down: stop the single-node cluster of hack/cluster/up.sh and remove what it
# left on the host: processes (by PID file, then the containerd shims and container
# processes it started), mounts, pod network namespaces, iptables chains, the bridge,
# cgroups, /run/containerd (when it was not there before) and the sysctls it changed.
# Safe to run when nothing is up. PURGE=1 also deletes containerd's image store (kept
# by default: images imported once are reused by the next `make cluster`).
# Ends with hack/cluster/check-clean.sh, which fails if anything of ours is left.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
need_root
hold_scripts_lock
t0=$(date +%s)
phase() { log "$1 ($(( $(date +%s) - t0 ))s)"; }

# stop <daemon...>: SIGTERM to each (only the PID in its file), then SIGKILL to any still
# there after a grace period; all at once, so slow shutdowns overlap.
stop() {
  local d f pid i
  local -A pids=()
  for d in "$@"; do
    f="$(pidfile "$d")"
    if alive "$d"; then
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
      pids[$d]=$pid
    fi
    rm -f "$f"
  done
  for ((i = 0; i < 75; i++)); do
    for d in "${!pids[@]}"; do
      [[ -d "/proc/${pids[$d]}" ]] || { log "stopped $d (pid ${pids[$d]})"; unset "pids[$d]"; }
    done
    ((${#pids[@]})) || return 0
    sleep 0.2
  done
  for d in "${!pids[@]}"; do
    log "$d (pid ${pids[$d]}) ignored SIGTERM for 15s; killing it"
    kill -KILL "${pids[$d]}" 2>/dev/null || true
  done
  sleep 0.2
}

# The kubelet first, so nothing restarts containers while they are removed.
stop kubelet
phase "kubelet stopped"

# Every container of the k8s.io namespace (pods and their sandboxes): kill, delete (with
# its snapshot). Through our containerd's own socket, so nothing else is touched.
if alive containerd && [[ -S "$CONTAINERD_SOCK" ]]; then
  tasks="$(ctr_ tasks ls -q 2>/dev/null || true)"
  for id in $tasks; do ctr_ tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $tasks; do ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true; done
  containers="$(ctr_ containers ls -q 2>/dev/null || true)"
  for id in $containers; do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  [[ -n "$containers" ]] && log "removed $(wc -w <<<"$containers") containers"
fi
phase "containers removed"

stop kube-proxy
# kube-proxy removes its own iptables rules and chains (both families).
if [[ -x "$bin/kube-proxy" && -f "$STATE/config/kube-proxy.yaml" ]]; then
  "$bin/kube-proxy" --cleanup --config="$STATE/config/kube-proxy.yaml" >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
fi
stop coredns kube-scheduler kube-controller-manager kube-apiserver containerd
stop etcd  # last: the API server writes to it while it shuts down
phase "daemons stopped"

# Processes our containerd started that outlive it: runc shims (found by our socket on
# their command line) and anything still in one of our cgroups.
for p in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
  if [[ "$cmd" == *containerd-shim* && "$cmd" == *"$CONTAINERD_SOCK"* ]]; then
    kill -KILL "${p#/proc/}" 2>/dev/null && log "killed containerd shim ${p#/proc/}" || true
  fi
done
for _ in 1 2 3; do
  pids="$(our_cgroups | while read -r c; do find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -u)"
  [[ -z "$pids" ]] && break
  log "killing $(wc -w <<<"$pids") leftover processes in our cgroups"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.5
done

# Mounts (pod volumes, container rootfs, pod network namespaces), deepest first.
for _ in 1 2 3; do
  mounts="$(our_mounts | sort -r)"
  [[ -z "$mounts" ]] && break
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$mounts"
done
if [[ -f "$HOST_BEFORE" ]]; then
  before="$(sed -n 's/^NETNS_BEFORE=//p' "$HOST_BEFORE")"
  for ns in /run/netns/cni-*; do
    [[ -e "$ns" ]] || continue
    [[ " $before " == *" ${ns##*/} "* ]] || rm -f "$ns"
  done
fi

# cgroups: depth first (a v1 cgroup folder is removed with rmdir once empty).
while read -r c; do
  find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  [[ -d "$c" ]] && log "warning: cgroup $c could not be removed"
done < <(our_cgroups)

# iptables: our chain and whatever KUBE-/CNI- chains the kubelet or kube-proxy left
# (up.sh refuses to start when such chains exist beforehand, so they are ours).
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  "$ipt" -w -D FORWARD -j "$FW_CHAIN" 2>/dev/null || true
  chains="$(our_chains "$ipt")"
  [[ -z "$chains" ]] && continue
  # Drop every rule that jumps to one of them, then flush and delete them.
  for t in filter nat mangle raw; do
    "$ipt" -w -t "$t" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-|ANYTASKTUNE-)' | grep '^-A' \
      | while read -r rule; do
          # shellcheck disable=SC2086
          eval "$ipt -w -t $t -D ${rule#-A }" 2>/dev/null || true
        done || true
  done
  while read -r t c; do "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true; done <<<"$chains"
  while read -r t c; do "$ipt" -w -t "$t" -X "$c" 2>/dev/null || true; done <<<"$chains"
done

ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"

# Host settings, as up.sh found them.
if [[ -f "$HOST_BEFORE" ]]; then
  # shellcheck disable=SC1090
  source "$HOST_BEFORE"
  [[ -n "${IP_FORWARD:-}" ]] && sysctl -q -w "net.ipv4.ip_forward=$IP_FORWARD"
  [[ -n "${BRIDGE_NF_CALL_IPTABLES:-}" ]] && sysctl -q -w "net.bridge.bridge-nf-call-iptables=$BRIDGE_NF_CALL_IPTABLES"
  [[ -n "${BRIDGE_NF_CALL_IP6TABLES:-}" ]] && sysctl -q -w "net.bridge.bridge-nf-call-ip6tables=$BRIDGE_NF_CALL_IP6TABLES"
  # What containerd 1.6 and the kubelet write outside their own folders.
  [[ "${RUN_CONTAINERD_EXISTED:-1}" == 0 ]] && rm -rf /run/containerd
  [[ "${RUN_NETNS_EXISTED:-1}" == 0 ]] && rmdir /run/netns 2>/dev/null || true
  if [[ "${VAR_LOG_CONTAINERS_EXISTED:-1}" == 0 ]]; then
    rm -rf /var/log/containers
  else  # only our links: they point into our pod log folder
    find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  fi
fi

rm -rf "$RUN"
for f in etcd kubelet pki kubeconfigs cni config kuberay pod-logs containerd-opt kubeconfig host-before.env; do
  rm -rf "${STATE:?}/$f"
done
if [[ "${PURGE:-0}" == 1 ]]; then
  rm -rf "$STATE"
  log "purged $STATE (containerd's image store included)"
else
  log "kept containerd's image store in $STATE/containerd (PURGE=1 removes it)"
fi
log "down in $(( $(date +%s) - t0 ))s"
bash "$here/check-clean.sh"
