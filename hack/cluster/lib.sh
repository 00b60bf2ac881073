# Shared settings and helpers of hack/cluster/*.sh (sourced, not run).
#
# Everything the single-node cluster creates on the host is named here, so that up.sh,
# down.sh and check-clean.sh agree on what is ours.

cache="${ANYTASKTUNE_CACHE:-$HOME/.cache/anytasktune}"
bin="$cache/bin"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# State: etcd, PKI, kubeconfigs, kubelet, logs (wiped by cluster-down) and containerd's
# image store (kept across cluster-down as a cache unless PURGE=1).
STATE="${ANYTASKTUNE_CLUSTER_STATE:-/var/lib/anytasktune-cluster}"
# Sockets and PID files.
RUN="/run/anytasktune-cluster"
KUBECONFIG_FILE="$STATE/kubeconfig"
HOST_BEFORE="$STATE/host-before.env"   # what up.sh found, for down.sh to put back
LOGS="$STATE/logs"

NODE_NAME="anytasktune-node"
BRIDGE="anytasktune0"                  # our bridge; pods' veths attach to it
BRIDGE_IP="10.217.0.1"                 # host side: apiserver, kubelet, CoreDNS, S3 bind here
POD_CIDR="10.217.0.0/24"
POD_RANGE_START="10.217.0.10"
POD_RANGE_END="10.217.0.250"
SERVICE_CIDR="10.217.128.0/24"
KUBERNETES_SVC_IP="10.217.128.1"
CLUSTER_DOMAIN="cluster.local"
FW_CHAIN="ANYTASKTUNE-FORWARD"         # keeps pod traffic on the bridge

# Fixed ports below both the range our tests pick their servers' free ports from
# (anytasktune.s3server.SERVER_PORTS, 20000-29999) and the ephemeral range (32768+), so
# nothing the other tiers start, or connect from, can take one.
ETCD_CLIENT_PORT=16379
ETCD_PEER_PORT=16380
APISERVER_PORT=16443
KCM_PORT=16257
SCHEDULER_PORT=16259
KUBELET_PORT=16250
KUBELET_HEALTHZ_PORT=16248
PROXY_HEALTHZ_PORT=16256
PROXY_METRICS_PORT=16249
COREDNS_READY_PORT=16181

CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
CGROUP_ROOT="anytasktune"              # kubelet's cgroupRoot: /anytasktune/kubepods/...
KUBERAY_NAMESPACE="kuberay-system"

# The daemons, in start order (down.sh stops them in reverse).
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (network, cgroups, containerd)"; }

pidfile() { echo "$RUN/$1.pid"; }

# One up.sh or down.sh at a time on this host: up.sh cleans up after a dead cluster with
# down.sh, and must never take another up.sh's half-started cluster for a dead one. Outside
# $RUN (down.sh removes it); the daemons do not inherit it (start closes it for them).
SCRIPTS_LOCK="/run/anytasktune-cluster-scripts.lock"
hold_scripts_lock() {
  # Held already by our caller (up.sh running down.sh): its descriptor is ours too.
  scripts_lock_fd="${ANYTASKTUNE_CLUSTER_SCRIPTS_LOCK_FD:-}"
  [[ -n "$scripts_lock_fd" && "$(readlink "/proc/$$/fd/$scripts_lock_fd")" == "$SCRIPTS_LOCK" ]] && return 0
  exec {scripts_lock_fd}>"$SCRIPTS_LOCK"
  if ! flock -n "$scripts_lock_fd"; then
    log "another make cluster or cluster-down is running; waiting for it"
    flock "$scripts_lock_fd"
  fi
  export ANYTASKTUNE_CLUSTER_SCRIPTS_LOCK_FD="$scripts_lock_fd"
}

# start <name> <binary> <args...>: in its own session, log in $LOGS, PID in $RUN.
start() {
  local name=$1 pid i; shift
  if [[ -n "${scripts_lock_fd:-}" ]]; then  # up.sh's lock is not the daemon's to hold
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 {scripts_lock_fd}>&- &
  else
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  fi
  pid=$!
  echo "$pid" >"$(pidfile "$name")"
  # Until the forked shell has exec'd the daemon, /proc/$pid/cmdline is this script's and
  # `alive` would call a starting daemon dead (it did, on a busy machine): wait for the exec.
  for (( i = 0; i < 500; i++ )); do
    [[ -d /proc/$pid ]] || return 0  # exited: wait_for reports it, with its log
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$name"* ]] && return 0
    sleep 0.01
  done
}

# alive <daemon>: its PID file names a live process running our binary.
alive() {
  local f pid cmd i
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] || return 1
  # While a process execs (setsid becoming the daemon), its cmdline reads empty for a moment:
  # the new image's arguments are not set up yet. Read again before calling it dead (CI run AK
  # was told CoreDNS "exited" while it ran). A zombie's stays empty: that one is dead.
  for (( i = 0; i < 50; i++ )); do
    [[ -d "/proc/$pid" ]] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    [[ -n "$cmd" ]] && break
    [[ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" == Z ]] && return 1
    sleep 0.02
  done
  [[ "$cmd" == *"$1"* ]]
}

kubectl_() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

cgroup_v2() { [[ -f /sys/fs/cgroup/cgroup.controllers ]]; }

# The cgroup v1 hierarchies mounted on this host (one folder per mount).
cgroup_v1_dirs() {
  local d
  for d in /sys/fs/cgroup/*; do
    [[ -d "$d" && ! -L "$d" ]] && mountpoint -q "$d" && echo "$d"
  done
}

# Every cgroup folder of ours: /sys/fs/cgroup[/<hierarchy>]/anytasktune.
our_cgroups() {
  if cgroup_v2; then
    [[ -d "/sys/fs/cgroup/$CGROUP_ROOT" ]] && echo "/sys/fs/cgroup/$CGROUP_ROOT"
  else
    local d
    while read -r d; do
      [[ -d "$d/$CGROUP_ROOT" ]] && echo "$d/$CGROUP_ROOT"
    done < <(cgroup_v1_dirs)
  fi
  return 0
}

# Mount points of ours: under our state/run folders, and the pod network namespaces that
# our containerd created (not in the list up.sh recorded before it started).
our_mounts() {
  local m before=""
  [[ -f "$HOST_BEFORE" ]] && before="$(sed -n 's/^NETNS_BEFORE=//p' "$HOST_BEFORE")"
  while read -r m; do
    m="$(printf '%b' "$m")"
    case "$m" in
      "$STATE"|"$STATE"/*|"$RUN"|"$RUN"/*|"$cache/images/storage"/*) echo "$m" ;;
      /run/netns/cni-*) [[ " $before " == *" ${m##*/} "* ]] || echo "$m" ;;
    esac
  done < <(findmnt -rn -o TARGET)
  return 0
}

# iptables chains that are ours (created by us, kube-proxy, the kubelet or the CNI plugins).
our_chains() {  # our_chains <iptables|ip6tables>
  local t
  for t in filter nat mangle raw; do
    "$1" -w -t "$t" -S 2>/dev/null | sed -n "s/^-N \(\(KUBE-\|CNI-\|ANYTASKTUNE-\)[^ ]*\)$/$t \1/p"
  done
  return 0
}

# The source folder of a module pinned by the go.mod in folder $1. `go list -m` alone
# prints "" for a module not yet in the module cache (a cold machine): download it first.
module_dir() { (cd "$1" && GOFLAGS=-mod=mod go mod download "$2" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$2"); }
