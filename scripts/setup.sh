#!/usr/bin/env bash
# Makes a fresh Debian 12 machine ready to build, test and demo podnet. Safe to run again.
# Installs Debian packages only; the Rust toolchain (cargo) must already be there.
set -euo pipefail

packages=(
  etcd-server etcd-client            # the lease store (the lab runs real etcd)
  iproute2 nftables                  # ip, bridge, nft: what tests read kernel state with
  iputils-ping iperf3 tcpdump ethtool  # traffic checks, benchmarks, offload settings
  containernetworking-plugins        # Debian's reference bridge/host-local/portmap, for comparisons
  iptables                           # what Debian's portmap plugin programs (chaining tests)
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types, to build the etcd client
  util-linux procps ca-certificates  # setpriv, pgrep
  openssl                            # test PKI for etcd mutual TLS
  containerd runc busybox-static     # a real runtime (containerd's CRI) for the CNI plugin's tests
  python3 python3-venv               # a private environment for the CRI API client (tests only)
)

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
  sudo=sudo
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# Python stubs for containerd's CRI API, to drive it the way kubelet does (tests only). Debian's
# python3 refuses `pip install` into the system (PEP 668), so they go into a venv of their own;
# tests/integration/cri.rs runs that venv's python3 (PODNET_CRI_PYTHON overrides it).
venv=/opt/podnet-test/cri-venv
if ! "$venv/bin/python3" -c 'import cri_api.v1.api_pb2' 2>/dev/null; then
  echo "setup: installing the CRI API client for python3 in $venv"
  $sudo python3 -m venv "$venv"
  $sudo "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check container-runtime-interface-api==2.0.1
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }
echo "setup: ready ($(cargo --version), etcd $(etcd --version | sed -n 's/^etcd Version: //p'), $(nft --version))"
