#!/usr/bin/env bash
# check-clean.sh: exit 1 (listing them) if anything of the single-node cluster is left on
# the host: a process of ours (daemons, containerd shims, anything in our cgroups), a
# mount under our folders or a pod network namespace, our bridge or a veth on it, an
# iptables chain of ours (KUBE-*, CNI-*, ANYTASKTUNE-*), our cgroups, /run/containerd,
# or our run folder. (down.sh itself puts ip_forward and the bridge sysctls back.)
# make cluster-down runs it last; it also runs on its own.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
need_root

left=()
# Ours: every daemon names a file under $STATE or $RUN on its command line (the integration
# tier runs the same binaries from /tmp: not ours); the shims name our containerd's socket.
for p in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
  if [[ "$cmd" == *"$STATE/"* || "$cmd" == *"$RUN/"* ]]; then
    left+=("process ${p#/proc/}: ${cmd:0:200}")
  fi
done
while read -r c; do
  [[ -n "$c" ]] && left+=("cgroup $c")
done < <(our_cgroups)
while read -r m; do
  [[ -n "$m" ]] && left+=("mount $m")
done < <(our_mounts)
if ip link show "$BRIDGE" >/dev/null 2>&1; then left+=("interface $BRIDGE"); fi
while read -r v; do
  [[ -n "$v" ]] && left+=("interface $v (master $BRIDGE)")
done < <(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}')
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  while read -r t c; do
    [[ -n "$c" ]] && left+=("$ipt chain $t/$c")
  done < <(our_chains "$ipt")
  rules="$("$ipt" -w -S FORWARD 2>/dev/null || true)"
  [[ "$rules" == *"$FW_CHAIN"* ]] && left+=("$ipt FORWARD rule -j $FW_CHAIN")
done
[[ -e "$RUN" ]] && left+=("folder $RUN")
[[ -f "$HOST_BEFORE" ]] && left+=("file $HOST_BEFORE (cluster-down did not finish)")
# /run/containerd: ours unless another containerd runs on this host.
if [[ -e /run/containerd ]] && ! [[ -S /run/containerd/containerd.sock ]]; then
  left+=("folder /run/containerd (no system containerd owns it)")
fi
for ns in /run/netns/cni-*; do
  [[ -e "$ns" ]] && left+=("network namespace file $ns")
done

if ((${#left[@]})); then
  log "NOT clean: ${#left[@]} leftover(s):"
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
log "clean: no process, mount, network namespace, bridge, iptables chain, cgroup or run folder of the cluster is left"
