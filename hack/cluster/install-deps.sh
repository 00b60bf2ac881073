#!/usr/bin/env bash
# Installs the Debian packages the single-node cluster and the image builds need,
# when any is missing: containerd, runc, the CNI plugins, iptables, conntrack,
# debootstrap and buildah (daemonless image builds), openssl (the cluster's PKI) and curl. Non-interactive; no-op when
# everything is present.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack debootstrap buildah openssl curl)
missing=()
for p in "${pkgs[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
[[ $(id -u) == 0 ]] || { echo "[cluster] installing ${missing[*]} needs root" >&2; exit 1; }
echo "[cluster] installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: never let the package start containerd as a system service; the
# cluster scripts start their own containerd with their own config and state dirs.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
echo "[cluster] installed: ${missing[*]}" >&2
