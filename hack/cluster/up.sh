#!/usr/bin/env bash
# make cluster: a real single-node Kubernetes on this host, with the KubeRay operator
# running inside it as a Deployment. Idempotent: when the cluster is already up it says
# so and changes nothing. Facts and traps: hack/README.md ("The single-node cluster").
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#   CoreDNS, the KubeRay operator: built from pinned Go modules (hack/build-controlplane.sh)
#   containerd, runc, CNI plugins, iptables, conntrack: Debian packages (installed if missing)
#   images (pause, KubeRay operator): built here (hack/images/build.sh), never pulled
#
# Prints the kubeconfig path on stdout; everything else goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
need_root
hold_scripts_lock

t_start=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - t_start) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
declare -a phases=()
phase() { phases+=("$1 at $(elapsed)s"); log "$1 ($(elapsed)s)"; }

# ------------------------------------------------------------ already up, or half up?
running=()
for d in "${DAEMONS[@]}"; do alive "$d" && running+=("$d"); done
if ((${#running[@]} == ${#DAEMONS[@]})) && kubectl_ get --raw /readyz >/dev/null 2>&1; then
  log "already up (${#running[@]} daemons running, API server ready); nothing to do"
  log "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "$KUBECONFIG_FILE"
  exit 0
fi
if ((${#running[@]})); then
  die "a previous cluster is partly up (running: ${running[*]}); run 'make cluster-down' first"
fi
# None of our daemons runs, yet a cluster of ours was here: the host restarted, or they were
# killed. Nothing of it can be lost (up.sh starts from an empty etcd anyway): clean up first.
if [[ -f "$HOST_BEFORE" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "a previous cluster's daemons are gone but what they left is here; cleaning it up first (make cluster-down)"
  bash "$here/down.sh" >&2
fi
if cgroup_v2; then
  log "cgroup v2 host: untested here (this tier was built on cgroup v1); see hack/README.md"
fi
if [[ -n "$(our_chains iptables)" ]]; then
  die "iptables already has KUBE-/CNI-/ANYTASKTUNE- chains (another Kubernetes on this host?)"
fi
ip link show "$BRIDGE" >/dev/null 2>&1 && die "interface $BRIDGE already exists"

# ------------------------------------------------------------------------ prerequisites
bash "$repo/hack/cluster/install-deps.sh"
bash "$repo/hack/build-controlplane.sh" cluster
bash "$repo/hack/images/build.sh" pause kuberay-operator
# shellcheck disable=SC1091
source "$cache/images/refs.env"
phase "binaries and images ready"

# --------------------------------------------------------- remember the host as it was
rm -rf "$STATE/etcd" "$STATE/kubelet" "$STATE/pki" "$STATE/kubeconfigs" "$STATE/cni" "$LOGS" "$STATE/config"
mkdir -p "$STATE" "$RUN" "$LOGS" "$STATE/pki" "$STATE/kubeconfigs" "$STATE/config" "$STATE/cni/net.d"
chmod 700 "$STATE/pki" "$STATE/kubeconfigs"
{
  echo "IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)"
  echo "BRIDGE_NF_CALL_IPTABLES=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo)"
  echo "BRIDGE_NF_CALL_IP6TABLES=$(cat /proc/sys/net/bridge/bridge-nf-call-ip6tables 2>/dev/null || echo)"
  echo "RUN_CONTAINERD_EXISTED=$([[ -e /run/containerd ]] && echo 1 || echo 0)"
  echo "VAR_LOG_CONTAINERS_EXISTED=$([[ -e /var/log/containers ]] && echo 1 || echo 0)"
  echo "RUN_NETNS_EXISTED=$([[ -e /run/netns ]] && echo 1 || echo 0)"
  echo "NETNS_BEFORE=$(ls /run/netns 2>/dev/null | tr '\n' ' ')"
} >"$HOST_BEFORE"

# ------------------------------------------------------------------------------- PKI
pki="$STATE/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=anytasktune-cluster-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
# sign <name> <subject> [subjectAltName]: a key and a certificate signed by our CA.
sign() {
  local ext="$pki/$1.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' >"$ext"
  if [[ -n "${3:-}" ]]; then
    printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >>"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >>"$ext"
  fi
  openssl_quiet req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
  openssl_quiet x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$pki/$1.crt"
  rm -f "$pki/$1.csr" "$ext"
}
sign apiserver "/CN=kube-apiserver" \
  "IP:$BRIDGE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
sign kubelet "/CN=$NODE_NAME" "IP:$BRIDGE_IP,DNS:$NODE_NAME"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
chmod 600 "$pki"/*.key

# Static bearer tokens, one identity per component (the bootstrap RBAC policy binds the
# system:kube-* users; the Node authorizer knows system:node:<name>).
tokens="$pki/tokens.csv"
: >"$tokens"
declare -A TOKEN
for who in admin kubelet kube-proxy kube-controller-manager kube-scheduler coredns; do
  TOKEN[$who]="$(openssl rand -hex 16)"
done
{
  echo "${TOKEN[admin]},anytasktune-admin,anytasktune-admin,\"system:masters\""
  echo "${TOKEN[kubelet]},system:node:$NODE_NAME,system:node:$NODE_NAME,\"system:nodes\""
  echo "${TOKEN[kube-proxy]},system:kube-proxy,system:kube-proxy"
  echo "${TOKEN[kube-controller-manager]},system:kube-controller-manager,system:kube-controller-manager"
  echo "${TOKEN[kube-scheduler]},system:kube-scheduler,system:kube-scheduler"
  echo "${TOKEN[coredns]},anytasktune:coredns,anytasktune:coredns"
} >>"$tokens"
chmod 600 "$tokens"

kubeconfig() {  # kubeconfig <file> <token>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: anytasktune
  cluster:
    server: https://$BRIDGE_IP:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: anytasktune
  user:
    token: $2
contexts:
- name: anytasktune
  context: {cluster: anytasktune, user: anytasktune}
current-context: anytasktune
EOF
  chmod 600 "$1"
}
for who in kubelet kube-proxy kube-controller-manager kube-scheduler coredns; do
  kubeconfig "$STATE/kubeconfigs/$who.kubeconfig" "${TOKEN[$who]}"
done
kubeconfig "$KUBECONFIG_FILE" "${TOKEN[admin]}"

# --------------------------------------------------------------------------- network
ip link add "$BRIDGE" type bridge
ip addr add "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# ClusterIP traffic goes bridge -> host -> bridge; Services need bridged packets to pass
# iptables (br_netfilter). Both are put back by cluster-down.
sysctl -q -w net.ipv4.ip_forward=1
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -q -w net.bridge.bridge-nf-call-iptables=1
# Pod traffic stays on the bridge: nothing is forwarded between it and other interfaces
# (and there is no NAT), so pods reach the host's bridge address and each other only.
iptables -w -N "$FW_CHAIN"
iptables -w -A "$FW_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
iptables -w -A "$FW_CHAIN" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP
iptables -w -I FORWARD 1 -j "$FW_CHAIN"

cat >"$STATE/cni/net.d/10-anytasktune.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "anytasktune",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "$POD_RANGE_START", "rangeEnd": "$POD_RANGE_END", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/networks"
      }
    }
  ]
}
EOF

# ---------------------------------------------------------------------------- cgroups
# kubelet's cgroupRoot: every pod cgroup lives under /anytasktune, so teardown can find them.
if cgroup_v2; then
  mkdir -p "/sys/fs/cgroup/$CGROUP_ROOT"
  for c in cpuset cpu io memory pids; do
    echo "+$c" >"/sys/fs/cgroup/$CGROUP_ROOT/cgroup.subtree_control" 2>/dev/null || true
  done
else
  while read -r d; do
    mkdir -p "$d/$CGROUP_ROOT"
    if [[ -f "$d/cpuset.cpus" ]]; then  # a v1 cpuset child starts empty
      cat "$d/cpuset.cpus" >"$d/$CGROUP_ROOT/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d/$CGROUP_ROOT/cpuset.mems"
    fi
  done < <(cgroup_v1_dirs)
fi

# ------------------------------------------------------------------------ the daemons
# wait_for <what> <seconds> <daemon> <command...>: poll until the command succeeds.
wait_for() {
  local what=$1 timeout=$2 daemon=$3 deadline
  shift 3
  deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$daemon"; then
      tail -25 "$LOGS/$daemon.log" >&2 || true
      die "$daemon exited while waiting for $what (log: $LOGS/$daemon.log); run 'make cluster-down'"
    fi
    if (( $(date +%s) > deadline )); then
      tail -25 "$LOGS/$daemon.log" >&2 || true
      die "timed out after ${timeout}s waiting for $what (log: $LOGS/$daemon.log); run 'make cluster-down'"
    fi
    sleep 0.3
  done
}
probe() { curl -fsS --max-time 2 --cacert "$pki/ca.crt" "$@"; }

start etcd "$bin/etcd" --name=anytasktune --data-dir="$STATE/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="anytasktune=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls="" --unsafe-no-fsync --log-level=warn
wait_for "etcd" 30 etcd curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address="$BRIDGE_IP" --advertise-address="$BRIDGE_IP" --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$tokens" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --allow-privileged=true --profiling=false --v=1
wait_for "the API server" 60 kube-apiserver probe "https://$BRIDGE_IP:$APISERVER_PORT/readyz"
phase "API server ready"

start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-name=anytasktune --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE/pki/kcm" \
  --profiling=false --v=1
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
  --cert-dir="$STATE/pki/scheduler" --profiling=false --v=1

# containerd: our own config, root, state and socket; the CRI plugin runs pods with the
# sandbox image built here. restrict_oom_score_adj: without CAP_SYS_RESOURCE, runc cannot
# lower oom_score_adj below the parent's (the sandbox asks for -998) and every pod fails
# with "can't get final child's PID from pipe: EOF".
mkdir -p "$STATE/containerd" "$RUN/containerd"
cat >"$STATE/config/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
start containerd containerd --config "$STATE/config/containerd.toml"
wait_for "containerd" 30 containerd ctr_ version
for img in PAUSE_IMAGE KUBERAY_OPERATOR_IMAGE; do
  bash "$repo/hack/cluster/import-image.sh" "${!img}"
done
phase "containerd ready, images imported"

cat >"$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
clusterDNS: [$BRIDGE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: ""
failSwapOn: false
podLogsDir: $STATE/pod-logs
volumePluginDir: $STATE/kubelet/volume-plugins
# Images cannot be pulled again here: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
maxPods: 60
EOF
start kubelet "$bin/kubelet" --config="$STATE/config/kubelet.yaml" \
  --kubeconfig="$STATE/kubeconfigs/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
  --cert-dir="$STATE/pki/kubelet" --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP" --v=1
node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for "node $NODE_NAME Ready" 90 kubelet node_ready
phase "node Ready"

cat >"$STATE/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kubeconfigs/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$BRIDGE_IP/32"]
iptables: {localhostNodePorts: false}
# 0: leave the host's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$bin/kube-proxy" --config="$STATE/config/kube-proxy.yaml" --v=1
wait_for "kube-proxy" 30 kube-proxy curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"

# CoreDNS on the host at the bridge address: only the kubernetes plugin, no forwarding,
# so a pod asking for anything outside the cluster gets an answer at once (REFUSED).
kubectl_ apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "anytasktune:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "anytasktune:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "anytasktune:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "anytasktune:coredns"}]
EOF
cat >"$STATE/config/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $BRIDGE_IP
    errors
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $STATE/kubeconfigs/coredns.kubeconfig anytasktune
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
start coredns "$bin/coredns" -conf "$STATE/config/Corefile"
wait_for "CoreDNS" 30 coredns curl -fsS --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready"
phase "kube-proxy and CoreDNS ready"

# ------------------------------------------------------------- KubeRay, as users run it
# The upstream kustomize base of the pinned module (config/default: CRDs, RBAC, the
# operator Deployment), with our image, never pulled, in its own namespace.
kuberay_src="$(module_dir "$repo/hack/kuberay" github.com/ray-project/kuberay/ray-operator)"
kdir="$STATE/kuberay"
rm -rf "$kdir"; mkdir -p "$kdir/overlay"
cp -r "$kuberay_src/config" "$kdir/config"; chmod -R u+w "$kdir/config"
cat >"$kdir/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $KUBERAY_NAMESPACE
resources:
- namespace.yaml
- ../config/default
images:
- name: quay.io/kuberay/operator
  newName: ${KUBERAY_OPERATOR_IMAGE%:*}
  newTag: ${KUBERAY_OPERATOR_IMAGE##*:}
patches:
- target: {kind: Deployment, name: kuberay-operator}
  patch: |-
    - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
EOF
printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$KUBERAY_NAMESPACE" >"$kdir/overlay/namespace.yaml"
# Server-side: the RayJob CRD is too big for client-side apply's annotation.
kubectl_ kustomize "$kdir/overlay" | kubectl_ apply --server-side --force-conflicts -f - >/dev/null
crds_established() {
  local c
  for c in rayjobs.ray.io rayclusters.ray.io rayservices.ray.io; do
    [[ "$(kubectl_ get crd "$c" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" == True ]] || return 1
  done
}
wait_for "the KubeRay CRDs" 60 kube-apiserver crds_established
kuberay_available() {
  [[ "$(kubectl_ -n "$KUBERAY_NAMESPACE" get deploy kuberay-operator -o jsonpath='{.status.availableReplicas}')" == 1 ]]
}
wait_for "the KubeRay operator Deployment" 180 kubelet kuberay_available
phase "KubeRay operator available"

log "up in $(elapsed)s: ${phases[*]}"
log "export KUBECONFIG=$KUBECONFIG_FILE    (logs: $LOGS; stop: make cluster-down)"
echo "$KUBECONFIG_FILE"
