#!/usr/bin/env bash
# The VM rig: the server on a real driver (virtio_net: per-queue MSI-X IRQs, AF_XDP zero-copy on new
# kernels, a real 802.1Q VLAN device) in a QEMU guest booted with virtme-ng, under Debian's stock kernels.
# Docs: ../../shared/DESIGN.md "A real driver in a VM".
#
#   host:  network namespace canvas-vm (created here; nothing is added to the root namespace, nothing is
#          routed out): tap eth1 (multi_queue, 2 queues; QEMU runs inside the namespace and opens it),
#          eth1.4000 = passthru macvlan on it, MTU 1400, 10.0.1.21/24 + fd00:4000::21/64; VLAN 4000 is
#          tagged/untagged on the tap by tc-BPF (scripts/vm/vlan4000.bpf.c: this host kernel has neither
#          8021q nor the tc vlan action). The loadgen `client` runs in this namespace.
#   guest: QEMU TCG (KVM here cannot boot a guest), 2 vCPUs, the host filesystem read-only (9p), the run's
#          directory writable (--rwdir); virtio-net-pci mq=on, 2 queue pairs, iommu_platform=on (zero-copy
#          needs VIRTIO_F_ACCESS_PLATFORM), renamed eth1; eth1.4000 a real 8021q VLAN, 10.0.1.10/24 +
#          fd00:4000::10/64; huge pages reserved. scripts/vm/guest.sh runs the cells there.
#   kernels: Debian's linux-image-amd64 of a suite (bookworm: 6.1, trixie: 6.12, trixie-backports: newest),
#          resolved through a private apt configuration under the cache (never the system's sources), the
#          image/binary/modules packages downloaded and unpacked (dpkg -x, depmod) and cached per version.
#
# Usage: scripts/vm.sh kernels | shell SUITE | run SUITE | matrix | down  [options]
#   kernels       resolve, fetch (when new) and cache the three suites' kernels; print their versions
#   shell SUITE   an interactive guest with the NIC and VLAN set up (for humans; the namespace stays up
#                 while it runs: client in `ip netns exec canvas-vm ...`)
#   run SUITE     boot SUITE's kernel and run the cells; prints the table, writes OUT/vm-SUITE.json
#                 (SUITE `host`: the same cells on this machine's kernel over scripts/testbed.sh, no guest)
#   matrix        run every suite (host bookworm trixie trixie-backports); writes OUT/vm-matrix.json
#   down          remove what a crashed run left: processes in the namespace canvas-vm (by pid), the
#                 namespace (its tap goes with it)
# Options:
#   --cells LIST  comma-separated, from xdp-native,xdp-generic,uring,v6 (default: all four)
#   --clients N   loadgen connections per cell (default 50; canvas/1, all keep replicas)
#   --secs S      load duration per cell in seconds (default 10)
#   --out DIR     results (default out/ in the repository); each run gets DIR/vm-<suite>-<time>/
#   --cache DIR   kernel cache (default /var/lib/canvas-vm; not under /var/cache, which virtme-ng hides
#                 from the guest, and the guest loads its modules from here)
#   --offline     do not contact the archive: use the cached kernels
#   --mirror URL  the Debian archive (default: the one this machine's apt sources name; its security
#                 archive is taken from there too, else URL with -security appended)
# Exit: 0 every cell passed (kernels: all three kernels available), 1 a cell or the rig failed, 2 usage.
# Run it as root (namespaces, tap, tc). Needs qemu-system-x86, virtme-ng (vng), kmod, clang, tc, python3
# (scripts/setup.sh installs them). One rig per machine at a time (the namespace name is fixed).
set -Eeuo pipefail

usage() { sed -n '/^# Usage:/,/^# Run it as root/p' "$0" | sed 's/^# \{0,1\}//'; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SUITES=(bookworm trixie trixie-backports)
MATRIX=(host "${SUITES[@]}")
# shellcheck source-path=SCRIPTDIR source=vm/cells.sh
. "$HERE/vm/cells.sh" # ALL_CELLS, cell_client_args
NS=canvas-vm
TAP=eth1
VID=4000
HOST4=10.0.1.21
HOST6=fd00:4000::21
GUEST4=10.0.1.10
GUEST6=fd00:4000::10

CMD=""
SUITE=""
CELLS=$(IFS=,; echo "${ALL_CELLS[*]}")
CLIENTS=50
SECS=10
OUT=$REPO/out
CACHE=/var/lib/canvas-vm
OFFLINE=0
MIRROR=""
SECURITY_MIRROR=""
while (($#)); do
  case "$1" in
    kernels | matrix | down) [[ -z $CMD ]] || { usage >&2; exit 2; }; CMD=$1 ;;
    shell | run)
      [[ -z $CMD ]] || { usage >&2; exit 2; }
      CMD=$1 SUITE=${2:-}
      [[ -n $SUITE && $SUITE != -* ]] || { echo "vm: $1 needs a SUITE (${SUITES[*]})" >&2; exit 2; }
      shift ;;
    --cells) CELLS=${2:?--cells needs a value}; shift ;;
    --cells=*) CELLS=${1#*=} ;;
    --clients) CLIENTS=${2:?--clients needs a value}; shift ;;
    --clients=*) CLIENTS=${1#*=} ;;
    --secs) SECS=${2:?--secs needs a value}; shift ;;
    --secs=*) SECS=${1#*=} ;;
    --out) OUT=${2:?--out needs a value}; shift ;;
    --out=*) OUT=${1#*=} ;;
    --cache) CACHE=${2:?--cache needs a value}; shift ;;
    --cache=*) CACHE=${1#*=} ;;
    --offline) OFFLINE=1 ;;
    --mirror) MIRROR=${2:?--mirror needs a value}; shift ;;
    --mirror=*) MIRROR=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "vm: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n $CMD ]] || { usage >&2; exit 2; }
if [[ -n $SUITE ]] && ! [[ " ${MATRIX[*]} " == *" $SUITE "* ]]; then
  echo "vm: unknown suite '$SUITE' (one of: ${MATRIX[*]})" >&2; exit 2
fi
IFS=, read -r -a CELL_LIST <<<"$CELLS"
((${#CELL_LIST[@]})) || { echo "vm: --cells is empty" >&2; exit 2; }
for c in "${CELL_LIST[@]}"; do
  [[ " ${ALL_CELLS[*]} " == *" $c "* ]] || { echo "vm: unknown cell '$c' (one of: ${ALL_CELLS[*]})" >&2; exit 2; }
done
[[ $CLIENTS =~ ^[1-9][0-9]{0,4}$ ]] || { echo "vm: --clients must be 1..99999, got '$CLIENTS'" >&2; exit 2; }
[[ $SECS =~ ^[1-9][0-9]{0,3}$ ]] || { echo "vm: --secs must be 1..9999, got '$SECS'" >&2; exit 2; }
((EUID == 0)) || { echo "vm: must run as root (network namespace, tap, tc, apt cache)" >&2; exit 1; }

msg() { echo "vm: $*" >&2; }
die() { msg "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- requirements
need() { # command, what to do when missing
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"
}
need_run_tools() {
  need qemu-system-x86_64 "install qemu-system-x86 (apt-get install qemu-system-x86, or scripts/setup.sh)"
  need vng "install virtme-ng (python3 -m pip install virtme-ng, or scripts/setup.sh)"
  need depmod "install kmod (apt-get install kmod)"
  need clang "install clang (scripts/setup.sh): the host-side VLAN tagging is a tc-BPF program"
  need tc "install iproute2"
  need python3 "install python3"
  need ethtool "install ethtool (the guest runs the host's ethtool)"
  local b
  for b in server client; do
    [[ -x $REPO/target/release/$b ]] || die "$REPO/target/release/$b not built: cargo build --release --workspace"
  done
}
need_apt_tools() {
  need apt-get "this needs Debian's apt-get to fetch guest kernels"
  need dpkg "this needs dpkg to unpack guest kernels"
  need depmod "install kmod (apt-get install kmod)"
}

# ---------------------------------------------------------------- guest kernels (private apt)
# The Debian mirror this machine's apt already uses (its sources name it; --mirror overrides), so the rig
# reaches the archive the way apt-get does here, through whatever mirror or proxy the machine is set up with.
system_uri() { # path suffix: /debian or /debian-security
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    grep -hoE "(^deb(-src)? +(\[[^]]*\] +)?|^URIs: *)[a-z+]+://[^ ]+$1/?( |$)" "$f" 2>/dev/null |
      grep -oE "[a-z+]+://[^ ]+$1" | head -1
  done | head -1
}
suite_sources() { # the apt lines of a suite
  local m=${MIRROR:-$(system_uri /debian)} s=${SECURITY_MIRROR:-$(system_uri /debian-security)}
  [[ -n $m ]] || die "no Debian archive in this machine's apt sources (/etc/apt/sources.list*): pass --mirror URL"
  [[ -n $s ]] || s=${m%/debian}/debian-security
  case "$1" in
    bookworm) printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' "$m" "$m" "$s" ;;
    trixie) printf 'deb %s trixie main\ndeb %s trixie-updates main\ndeb %s trixie-security main\n' "$m" "$m" "$s" ;;
    trixie-backports) printf 'deb %s trixie-backports main\n' "$m" ;;
  esac
}
APT_OPTS=()
apt_setup() { # suite: a private apt tree under the cache; fills APT_OPTS
  local a=$CACHE/$1/apt
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/prefs.d" "$a/parts.d"
  suite_sources "$1" >"$a/sources.list"
  APT_OPTS=(-o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=$a/parts.d"
    -o "Dir::Etc::preferences=$a/preferences" -o "Dir::Etc::preferencesparts=$a/prefs.d"
    -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o "Dir::State::status=$a/status"
    -o "Acquire::Languages=none" -o "APT::Get::List-Cleanup=1" -o "Debug::NoLocking=1"
    -o "Acquire::Retries=2" -o "Acquire::http::Timeout=30")
  : >"$a/preferences"
  : >"$a/status"
}

# Resolve, fetch and unpack SUITE's kernel; sets K_VER (package version), K_REL (uname -r), K_IMG, K_ROOT,
# K_NOTE. The unpacked tree: $CACHE/SUITE/VERSION/root/{boot/vmlinuz-REL,lib/modules/REL}.
K_VER="" K_REL="" K_IMG="" K_NOTE=""
load_env() { # version-dir: its kernel.env (paths in it are relative to the dir: the cache can move)
  local K_IMG_IN=""
  # shellcheck disable=SC1091
  . "$1/kernel.env"
  K_IMG=$1/$K_IMG_IN
}
use_cached() { # suite [note]
  local cur=$CACHE/$1/current
  [[ -L $cur && -f $cur/kernel.env ]] || return 1
  K_VER=$(basename "$(readlink "$cur")")
  load_env "$CACHE/$1/$K_VER"
  K_NOTE=${2:-}
  [[ -f $K_IMG ]]
}
fetch_kernel() {
  local suite=$1 t0 meta abi dir p v pkgs=() log
  t0=$(now)
  K_NOTE=""
  need_apt_tools
  mkdir -p "$CACHE/$suite"
  log=$CACHE/$suite/apt.log
  if ((OFFLINE)); then
    use_cached "$suite" "offline: cached kernel, archive not contacted" ||
      die "$suite: --offline and no cached kernel in $CACHE/$suite: run 'scripts/vm.sh kernels' with network"
    return 0
  fi
  apt_setup "$suite"
  if ! timeout 180 apt-get "${APT_OPTS[@]}" -q update >"$log" 2>&1 ||
    grep -qE '^(W|E): (Failed to fetch|Some index files failed)' "$log"; then
    if use_cached "$suite" "archive unreachable (see $log): using the cached kernel"; then
      msg "$suite: WARNING: $K_NOTE $K_VER"
      return 0
    fi
    cat "$log" >&2
    die "$suite: cannot reach Debian's archive ($(suite_sources "$suite" | head -1 | cut -d' ' -f2)) and no cached kernel in $CACHE/$suite:" \
      "give this machine access to the archive (apt-get through a proxy works: set Acquire::http::Proxy)"
  fi
  v=$(apt-cache "${APT_OPTS[@]}" policy linux-image-amd64 | awk '/Candidate:/ {print $2}')
  [[ -n $v && $v != "(none)" ]] || die "$suite: linux-image-amd64 has no candidate in the archive index ($log)"
  meta=$(apt-cache "${APT_OPTS[@]}" show "linux-image-amd64=$v" | sed -n 's/^Depends: //p' | head -1)
  abi=$(tr ',' '\n' <<<"$meta" | sed -n 's/^ *linux-image-\([^ ]*\) .*/\1/p' | head -1)
  [[ -n $abi ]] || die "$suite: cannot find the image package in linux-image-amd64 $v's Depends: $meta"
  dir=$CACHE/$suite/$v
  if [[ -f $dir/kernel.env ]]; then
    load_env "$dir"
    K_VER=$v
    ln -sfn "$v" "$CACHE/$suite/current"
    [[ -f $K_IMG ]] && { msg "$suite: $v (cached)"; return 0; }
  fi
  rm -rf "$dir"
  mkdir -p "$dir/debs" "$dir/root"
  # The kernel (linux-image-ABI; from 7.x on its binary is linux-binary-ABI) and its modules (linux-modules-ABI
  # from 7.x on; before that inside the image package).
  for p in "linux-image-$abi" "linux-binary-$abi" "linux-modules-$abi"; do
    if apt-cache "${APT_OPTS[@]}" show "$p=$v" >/dev/null 2>&1; then pkgs+=("$p=$v"); fi
  done
  msg "$suite: linux-image-amd64 $v -> downloading ${pkgs[*]}"
  (cd "$dir/debs" && timeout 900 apt-get "${APT_OPTS[@]}" -q download "${pkgs[@]}") >>"$log" 2>&1 || {
    tail -5 "$log" >&2
    rm -rf "$dir"
    if use_cached "$suite" "download of $v failed (see $log): using the cached kernel"; then
      msg "$suite: WARNING: $K_NOTE $K_VER"
      return 0
    fi
    die "$suite: downloading ${pkgs[*]} failed (see $log)"
  }
  for p in "$dir"/debs/*.deb; do dpkg -x "$p" "$dir/root"; done
  # Modules in usr/lib/modules (usrmerge): virtme-ng and depmod look in ROOT/lib/modules.
  if [[ ! -d $dir/root/lib/modules && -d $dir/root/usr/lib/modules ]]; then ln -s usr/lib "$dir/root/lib"; fi
  # The image: boot/vmlinuz-REL (6.1, 6.12), lib/modules/REL/vmlinuz (7.x).
  K_IMG=""
  for p in "$dir"/root/boot/vmlinuz-* "$dir"/root/lib/modules/*/vmlinuz; do
    [[ -f $p ]] && { K_IMG=$p; break; }
  done
  [[ -n $K_IMG ]] || die "$suite: no boot/vmlinuz-* or lib/modules/*/vmlinuz in ${pkgs[*]}"
  if [[ $K_IMG == */vmlinuz ]]; then K_REL=$(basename "$(dirname "$K_IMG")"); else K_REL=${K_IMG##*/vmlinuz-}; fi
  [[ -d $dir/root/lib/modules/$K_REL ]] || die "$suite: no lib/modules/$K_REL in ${pkgs[*]}"
  depmod -b "$dir/root" "$K_REL" 2>>"$log" || die "$suite: depmod -b $dir/root $K_REL failed"
  printf 'K_REL=%q\nK_IMG_IN=%q\n' "$K_REL" "${K_IMG#"$dir/"}" >"$dir/kernel.env"
  K_VER=$v
  ln -sfn "$v" "$CACHE/$suite/current"
  # Older versions of this suite are removed (the cache keeps the current one).
  for p in "$CACHE/$suite"/*/; do
    p=${p%/}
    [[ ! -L $p ]] || continue
    case "${p##*/}" in apt | "$v") ;; *) if [[ -f $p/kernel.env ]]; then rm -rf "$p"; fi ;; esac
  done
  rm -rf "$dir/debs"
  msg "$suite: $v ($K_REL) fetched and unpacked in $(since "$t0") s"
}

# ---------------------------------------------------------------- host namespace + tap
NS_MADE=0
SUB_PID=""
VNG_PID=""
RUNDIR=""
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS"; }
# Stop every process inside the rig's namespace (QEMU, vng, a client: all started by this rig), by pid:
# TERM, then KILL after 5 s.
stop_ns_procs() {
  local pids p i
  ns_exists || return 0
  pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ' || true)
  [[ -n ${pids// /} ]] || return 0
  msg "stopping processes in $NS: $pids(SIGTERM)"
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ' || true)
    [[ -n ${pids// /} ]] || return 0
    sleep 0.1
  done
  msg "still alive after 5 s in $NS: $pids(SIGKILL)"
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  sleep 0.2
}
do_down() {
  if [[ -n $VNG_PID ]]; then kill -TERM "$VNG_PID" 2>/dev/null || true; fi
  stop_ns_procs
  if ns_exists; then ip netns del "$NS" && msg "namespace $NS removed"; fi
  VNG_PID=""
}
cleanup() { # [exit code: 130 for SIGINT, 143 for SIGTERM]
  local rc=${1:-$?}
  trap - EXIT INT TERM ERR
  ((rc != 130 && rc != 143)) || msg "interrupted: cleaning up"
  if [[ -n $SUB_PID ]]; then
    kill -TERM "$SUB_PID" 2>/dev/null || true
    wait "$SUB_PID" 2>/dev/null || true
  fi
  if ((NS_MADE)) || [[ -n $VNG_PID ]]; then do_down || true; fi
  exit "$rc"
}

net_up() {
  local obj
  if ns_exists; then
    msg "namespace $NS exists (a crashed run?): removing it first"
    do_down
  fi
  obj=$RUNDIR/vlan$VID.o
  clang -O2 -g -target bpf -DVID=$VID -c "$HERE/vm/vlan4000.bpf.c" -o "$obj" ||
    die "compiling scripts/vm/vlan4000.bpf.c failed (clang -target bpf)"
  ip netns add "$NS"
  NS_MADE=1
  ip -n "$NS" link set lo up
  ip -n "$NS" tuntap add dev "$TAP" mode tap multi_queue
  ip netns exec "$NS" sysctl -q -w "net.ipv6.conf.$TAP.disable_ipv6=1"
  ip -n "$NS" link set "$TAP" mtu 1500 up
  ip -n "$NS" link add link "$TAP" name "$TAP.$VID" type macvlan mode passthru
  tc -n "$NS" qdisc add dev "$TAP" clsact
  tc -n "$NS" filter add dev "$TAP" egress bpf direct-action obj "$obj" sec tc/tap_egress
  tc -n "$NS" filter add dev "$TAP" ingress bpf direct-action obj "$obj" sec tc/tap_ingress
  ip -n "$NS" link set "$TAP.$VID" mtu 1400 up
  ip -n "$NS" addr add "$HOST4/24" dev "$TAP.$VID"
  ip -n "$NS" -6 addr add "$HOST6/64" dev "$TAP.$VID" nodad
}

# ---------------------------------------------------------------- the guest
# vng command line for suite's kernel; the guest runs `guest.sh PARAMS` (or a shell).
VNG=()
vng_cmd() { # exec-command (empty: interactive)
  VNG=(vng --run "$K_IMG" --verbose --disable-kvm --disable-microvm --cpus 2 --memory 2560M --name canvas-vm
    --rwdir "$RUNDIR"
    --qemu-opts="-netdev tap,id=vmnet,ifname=$TAP,queues=2,script=no,downscript=no,vhost=off"
    --qemu-opts="-device virtio-net-pci,netdev=vmnet,mq=on,vectors=6,iommu_platform=on,disable-legacy=on"
  )
  if [[ -n $1 ]]; then VNG+=(--exec "$1"); fi
}

# Start the guest in the background (QEMU in the rig's namespace, the lock's fd closed for it); VNG_PID.
boot_guest() {
  rm -f "$RUNDIR/vng.rc"
  (
    rc=0
    ip netns exec "$NS" "${VNG[@]}" </dev/null >"$RUNDIR/console.log" 2>&1 9>&- || rc=$?
    echo "$rc" >"$RUNDIR/vng.rc"
  ) &
  VNG_PID=$!
}

write_params() { # suite
  {
    printf 'SUITE=%q\n' "$1"
    printf 'CELLS=%q\n' "${CELL_LIST[*]}"
    printf 'CLIENTS=%q\nSECS=%q\n' "$CLIENTS" "$SECS"
    printf 'REPO=%q\nRUNDIR=%q\nBIN=%q\n' "$REPO" "$RUNDIR" "$RUNDIR/bin"
    printf 'GUEST4=%q\nGUEST6=%q\nHOST4=%q\nHOST6=%q\nVID=%q\n' "$GUEST4" "$GUEST6" "$HOST4" "$HOST6" "$VID"
    printf 'WAIT_DONE=%q\n' "$((SECS + 150))"
  } >"$RUNDIR/params"
}

# Wait for one of the files (relative to RUNDIR) to exist, while the guest runs; bounded. Sets w to the
# one that appeared, or to "timeout" / "guest-exited" (then returns 1). Runs in this shell (not in $(...)):
# a signal's trap then runs within half a second.
w=""
wait_file() { # timeout-seconds file...
  local end f
  end=$(($(date +%s) + $1))
  shift
  while (($(date +%s) < end)); do
    for f in "$@"; do
      if [[ -e $RUNDIR/$f ]]; then w=$f; return 0; fi
    done
    if [[ -n $VNG_PID ]] && ! kill -0 "$VNG_PID" 2>/dev/null; then
      for f in "$@"; do
        if [[ -e $RUNDIR/$f ]]; then w=$f; return 0; fi
      done
      w=guest-exited
      return 1
    fi
    sleep 0.5
  done
  w=timeout
  return 1
}

# A snapshot of the binaries in RUNDIR/bin (they may be rebuilt while this runs), RUNDIR/run.info (what ran
# where) and the guest's parameter file.
snapshot_run() { # suite kernel-package kernel-release note
  mkdir -p "$RUNDIR/bin"
  cp "$REPO/target/release/server" "$REPO/target/release/client" "$RUNDIR/bin/"
  {
    echo "suite=$1"
    echo "kernel_package=$2"
    echo "kernel_release=$3"
    echo "kernel_note=$4"
    echo "commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- 2>/dev/null || echo '+dirty')"
    echo "server_sha256=$(sha256sum "$RUNDIR/bin/server" | cut -d' ' -f1)"
    echo "server_mtime=$(date -r "$REPO/target/release/server" -Is)"
  } >"$RUNDIR/run.info"
  write_params "$1"
}

# The host row: the same cells on this machine's kernel over the testbed (veth), no guest.
run_host_suite() {
  local t0
  t0=$(now)
  SUITE_RC=1
  snapshot_run host host "$(uname -r)" "this machine's kernel, on the veth testbed (no IRQs, no zero-copy)"
  msg "host: $(uname -r), cells on the testbed -> $RUNDIR"
  bash "$HERE/vm/host_cells.sh" "$RUNDIR" "${CELL_LIST[*]}" "$CLIENTS" "$SECS" || true
  echo 0 >"$RUNDIR/boot_seconds"
  since "$t0" >"$RUNDIR/suite_seconds"
  if python3 "$HERE/vm/report.py" suite "$RUNDIR" >"$RUNDIR/table.txt"; then SUITE_RC=0; fi
  cat "$RUNDIR/table.txt"
  msg "host: $(since "$t0") s; results in $RUNDIR"
}

# One suite: boot, run the cells, collect. Sets SUITE_RC; the records go to RUNDIR/records.json.
run_suite() {
  local suite=$1 t0 tboot cell rc c dir tc0
  if [[ $suite == host ]]; then run_host_suite; return; fi
  t0=$(now)
  SUITE_RC=1
  fetch_kernel "$suite"
  snapshot_run "$suite" "$K_VER" "$K_REL" "$K_NOTE"
  net_up
  vng_cmd "bash $HERE/vm/guest.sh $RUNDIR/params"
  local attempt
  for attempt in 1 2; do
    msg "$suite: booting $K_REL (TCG) -> $RUNDIR (attempt $attempt)"
    boot_guest
    wait_file 240 setup.done setup.failed || true
    [[ $w == guest-exited && ! -s $RUNDIR/guest.log && $attempt == 1 ]] || break
    # The guest died before running anything (seen once under TCG, no output): one more boot.
    mv "$RUNDIR/console.log" "$RUNDIR/console-attempt1.log"
    msg "$suite: WARNING: the guest exited without output (vng exit $(cat "$RUNDIR/vng.rc" 2>/dev/null)); booting again"
    echo "boot_retry=1 (vng exit $(cat "$RUNDIR/vng.rc" 2>/dev/null))" >>"$RUNDIR/run.info"
    stop_ns_procs
  done
  tboot=$(since "$t0")
  if [[ $w != setup.done ]]; then
    msg "$suite: the guest did not come up ($w after $tboot s; vng exit $(cat "$RUNDIR/vng.rc" 2>/dev/null || echo -)); console:"
    tail -30 "$RUNDIR/console.log" >&2
    [[ ! -f $RUNDIR/setup.failed ]] || cat "$RUNDIR/setup.failed" >&2
  else
    msg "$suite: guest up, $(cat "$RUNDIR/uname" 2>/dev/null), $tboot s after start"
    for cell in "${CELL_LIST[@]}"; do
      dir=$RUNDIR/cell-$cell
      tc0=$(now)
      wait_file 300 "$cell.ready" "$cell.failed" || true
      if [[ $w == "$cell.ready" ]]; then
        cell_client_args "$cell" "vm-$cell" "$dir/summary.json" "$([[ $cell == uring ]] && echo impaired)"
        c=(ip netns exec "$NS" timeout -k 10 "$((SECS + 150))" "$RUNDIR/bin/client" "${CLIENT_ARGS[@]}")
        printf '%q ' "${c[@]}" >"$dir/client.cmd"
        rc=0
        # In the background and waited for: a signal's trap runs at once (and stops it with the namespace).
        "${c[@]}" >"$dir/client.out" 2>&1 </dev/null 9>&- &
        wait $! || rc=$?
        echo "$rc" >"$dir/client.rc"
        msg "$suite/$cell: client exit $rc"
      else
        msg "$suite/$cell: the server did not listen ($w)"
        [[ ! -f $RUNDIR/$cell.failed ]] || sed 's/^/  /' "$RUNDIR/$cell.failed" >&2
      fi
      : >"$RUNDIR/$cell.done"
      # The guest stops the server and collects; wait for that before the next cell.
      wait_file 120 "$cell.collected" || msg "$suite/$cell: the guest did not finish the cell ($w)"
      since "$tc0" >"$dir/host_seconds" 2>/dev/null || true
      [[ $w == "$cell.collected" ]] || break
    done
  fi
  : >"$RUNDIR/host.finished"
  wait_file 120 guest.finished || true
  # The guest powers off after guest.sh; give QEMU a bounded while, then stop it.
  local i
  for ((i = 0; i < 60; i++)); do kill -0 "$VNG_PID" 2>/dev/null || break; sleep 0.5; done
  do_down
  since "$t0" >"$RUNDIR/suite_seconds"
  echo "$tboot" >"$RUNDIR/boot_seconds"
  if python3 "$HERE/vm/report.py" suite "$RUNDIR" >"$RUNDIR/table.txt"; then SUITE_RC=0; fi
  rm -rf "${RUNDIR:?}/bin" # run.info has their sha256
  cat "$RUNDIR/table.txt"
  msg "$suite: $(since "$t0") s (boot $tboot s); results in $RUNDIR"
}

# One rig per machine: the namespace name is fixed. A second invocation fails instead of tearing down the
# first one's guest. (QEMU gets the lock's descriptor closed: a killed script leaves no lock behind.)
LOCK=/run/canvas-vm.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  die "another scripts/vm.sh is running (pid $(cat /run/canvas-vm.pid 2>/dev/null || echo ?)); wait for it, or stop it"
fi
echo $$ >/run/canvas-vm.pid
trap cleanup EXIT
trap 'cleanup 130' INT
trap 'cleanup 143' TERM

case "$CMD" in
  down)
    do_down
    ;;
  kernels)
    rc=0
    for s in "${SUITES[@]}"; do
      if (fetch_kernel "$s" && printf '%-17s %-24s %s %s\n' "$s" "$K_VER" "$K_REL" "${K_NOTE:+($K_NOTE)}"); then :; else rc=1; fi
    done
    exit "$rc"
    ;;
  shell)
    [[ $SUITE != host ]] || { echo "vm: shell needs a guest kernel suite (${SUITES[*]})" >&2; exit 2; }
    need_run_tools
    fetch_kernel "$SUITE"
    RUNDIR=$OUT/vm-$SUITE-shell-$(date +%Y%m%d-%H%M%S)
    mkdir -p "$RUNDIR/bin"
    cp "$REPO/target/release/server" "$REPO/target/release/client" "$RUNDIR/bin/"
    CELL_LIST=()
    write_params "$SUITE"
    net_up
    vng_cmd "bash $HERE/vm/guest.sh $RUNDIR/params --setup-only; exec bash -i"
    msg "guest shell on $K_REL; eth1.4000 is $GUEST4 there; the host side: ip netns exec $NS ..."
    ip netns exec "$NS" "${VNG[@]}" || true
    ;;
  run)
    need_run_tools
    mkdir -p "$OUT"
    RUNDIR=$OUT/vm-$SUITE-$(date +%Y%m%d-%H%M%S)
    run_suite "$SUITE"
    cp "$RUNDIR/records.json" "$OUT/vm-$SUITE.json"
    msg "wrote $OUT/vm-$SUITE.json"
    exit "$SUITE_RC"
    ;;
  matrix)
    need_run_tools
    mkdir -p "$OUT"
    T0=$(now)
    rc=0
    dirs=()
    NS_MADE=1 # the suites run in subshells: clean up after them here too
    for s in "${MATRIX[@]}"; do
      RUNDIR=$OUT/vm-$s-$(date +%Y%m%d-%H%M%S)
      dirs+=("$RUNDIR")
      # A subshell per suite (a failing suite exits it), in the background and waited for: a signal's
      # trap runs at once here (and passes the signal on to it).
      (
        trap cleanup EXIT
        trap 'cleanup 130' INT
        trap 'cleanup 143' TERM
        run_suite "$s"
        exit "$SUITE_RC"
      ) &
      SUB_PID=$!
      if ! wait "$SUB_PID"; then rc=1; fi
      SUB_PID=""
    done
    python3 "$HERE/vm/report.py" matrix "$OUT/vm-matrix.json" "${dirs[@]}" || rc=1
    msg "matrix: $(since "$T0") s; wrote $OUT/vm-matrix.json"
    exit "$rc"
    ;;
esac
