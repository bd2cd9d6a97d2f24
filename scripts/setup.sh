#!/usr/bin/env bash
# Install what building and testing need on a fresh Debian 12 machine (run as root). Idempotent: installs
# only what is missing. quiche builds BoringSSL with cmake and bindgen (libclang); the XDP milestone adds
# clang, libelf, m4 and zlib for libbpf.
set -euo pipefail
pkgs=(build-essential clang libclang-dev cmake pkg-config libelf-dev m4 zlib1g-dev iproute2 iputils-ping procps bc python3-pip
  chromium ethtool bpftool nftables shellcheck)  # chromium: the live-page test (headless); shellcheck: the
  # ops-scripts test (required when CI=true); ethtool, bpftool, nftables: scripts/ops
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${missing[*]}: run this script as root (it uses apt-get)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "setup: installing matplotlib (PyPI)"
  python3 -m pip install --quiet matplotlib || python3 -m pip install --quiet --break-system-packages matplotlib
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
