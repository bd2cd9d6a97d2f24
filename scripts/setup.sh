#!/usr/bin/env bash
# Install what building and testing need on a fresh Debian 12 machine (run as root). Idempotent: installs
# only what is missing. quiche builds BoringSSL with cmake and bindgen (libclang); the XDP milestone adds
# clang, libelf, m4 and zlib for libbpf.
set -euo pipefail
pkgs=(build-essential clang libclang-dev cmake pkg-config libelf-dev m4 zlib1g-dev iproute2 iputils-ping procps bc python3-pip
  chromium ethtool bpftool nftables shellcheck qemu-system-x86 kmod busybox-static file nats-server)  # chromium:
  # the live-page test (headless); shellcheck: the ops-scripts test (required when CI=true); ethtool, bpftool,
  # nftables: scripts/ops; qemu-system-x86, kmod (depmod), busybox-static (the guest's initramfs), file (the
  # kernel version of an image): scripts/vm.sh with virtme-ng (below); nats-server: --cluster (the tests start
  # their own servers; the package's system service is switched off below when this script installed it)
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
  # Debian's nats-server package enables and starts a system-wide server on :4222; nothing here uses it.
  if [[ " ${missing[*]} " == *" nats-server "* ]] && [[ -d /run/systemd/system ]]; then
    echo "setup: switching off the nats-server system service the package started (the tests run their own)"
    systemctl disable --now nats-server.service >/dev/null 2>&1 || true
  fi
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "setup: installing matplotlib (PyPI)"
  python3 -m pip install --quiet matplotlib || python3 -m pip install --quiet --break-system-packages matplotlib
fi
# virtme-ng pinned: the rig relies on its command line (--run IMAGE finding the modules beside it, the
# --qemu-opts=… form) and its guest init; 1.42 is the version the rig was built and measured with.
VNG_VERSION=1.42
if ! command -v vng >/dev/null 2>&1 || [[ $(vng --version 2>/dev/null) != *"$VNG_VERSION"* ]]; then
  echo "setup: installing virtme-ng $VNG_VERSION (PyPI; scripts/vm.sh boots its guests with vng)"
  python3 -m pip install --quiet "virtme-ng==$VNG_VERSION" ||
    python3 -m pip install --quiet --break-system-packages "virtme-ng==$VNG_VERSION"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
