#!/usr/bin/env bash
# Runs INSIDE the VM rig's guest (scripts/vm.sh boots it with virtme-ng and runs this with --exec; nothing
# here is meant for the host). Sets up the reference network's server side on the virtio NIC, then runs
# the cells one by one, handshaking with the host through files in RUNDIR (the --rwdir):
#   guest: setup.done (or setup.failed)      once eth1/eth1.4000 are up
#   guest: CELL.ready (or CELL.failed)       once the cell's server listens (or why it did not)
#   host:  CELL.done                          after the loadgen ran (or it gave up)
#   guest: CELL.collected                     after the server stopped (SIGINT) and the counters are saved
#   guest: guest.finished                     at the end; the host writes host.finished when it stops waiting
# Every wait is bounded. Results: RUNDIR/cell-CELL/ (server stdout/stderr, stats.json, ethtool -S before
# and after, /proc/interrupts, IRQ affinities), RUNDIR/tools/ (doctor, verify_network, tune_server
# --dry-run), RUNDIR/guest.log.
#
# Usage: guest.sh PARAMS [--setup-only]
#   PARAMS        the parameter file scripts/vm.sh wrote (the guest gets no environment from the host)
#   --setup-only  set up the network and huge pages, run no cell (the rig's `shell`)
set -uo pipefail

usage() { sed -n '/^# Usage:/,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }
PARAMS=""
SETUP_ONLY=0
while (($#)); do
  case "$1" in
    --setup-only) SETUP_ONLY=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "guest: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    *) [[ -z $PARAMS ]] || { usage >&2; exit 2; }; PARAMS=$1 ;;
  esac
  shift
done
[[ -n $PARAMS && -f $PARAMS ]] || { usage >&2; exit 2; }
SUITE="" CELLS="" REPO="" RUNDIR="" BIN="" GUEST4="" GUEST6="" HOST4="" HOST6="" VID="" WAIT_DONE=""
# shellcheck disable=SC1090
. "$PARAMS"
# shellcheck source-path=SCRIPTDIR source=cells.sh
. "$REPO/scripts/vm/cells.sh"
HUGEPAGES=160
LOG=$RUNDIR/guest.log

log() { echo "guest: $*" | tee -a "$LOG" >&2; }
t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

setup_fail() {
  log "SETUP FAILED: $*"
  echo "$*" >"$RUNDIR/setup.failed"
  : >"$RUNDIR/guest.finished"
  exit 1
}

# Wait (bounded) for a file written by the host; 0 when it appeared.
wait_host() { # seconds file
  local end=$(($(date +%s) + $1))
  while (($(date +%s) < end)); do
    [[ -e $RUNDIR/$2 ]] && return 0
    [[ -e $RUNDIR/host.finished ]] && return 1
    sleep 0.3
  done
  return 1
}

# ---------------------------------------------------------------- network
setup() {
  local d nic="" drv
  uname -r >"$RUNDIR/uname"
  log "$SUITE: $(uname -r), $(nproc) CPUs"
  # No udev in the guest: load the NIC's driver (and the VLAN module) by hand.
  modprobe virtio_net 2>/dev/null || true
  for d in /sys/class/net/*; do
    [[ -e $d/device/driver ]] || continue
    drv=$(basename "$(readlink -f "$d/device/driver")")
    if [[ $drv == virtio_net ]]; then nic=$(basename "$d"); break; fi
  done
  [[ -n $nic ]] || setup_fail "no virtio_net interface in the guest (have: $(echo /sys/class/net/*))"
  if [[ $nic != eth1 ]]; then
    ip link set dev "$nic" down
    ip link set dev "$nic" name eth1 || setup_fail "cannot rename $nic to eth1"
  fi
  modprobe 8021q || setup_fail "modprobe 8021q failed (the guest kernel's modules: /lib/modules/$(uname -r))"
  ip link set dev eth1 mtu 1500 up || setup_fail "eth1 up"
  ip link add link eth1 name "eth1.$VID" type vlan id "$VID" || setup_fail "ip link add eth1.$VID type vlan"
  ip link set dev "eth1.$VID" mtu 1400 up
  ip addr add "$GUEST4/24" dev "eth1.$VID" || setup_fail "address $GUEST4"
  ip -6 addr add "$GUEST6/64" dev "eth1.$VID" nodad || setup_fail "address $GUEST6"
  echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages
  local got
  got=$(cat /proc/sys/vm/nr_hugepages)
  ((got >= HUGEPAGES)) || log "WARNING: only $got of $HUGEPAGES huge pages reserved"
  # The host's side answers (ARP over the tagged wire): bounded.
  local i ok=0
  for ((i = 0; i < 20; i++)); do
    if ping -n -q -c 1 -W 1 "$HOST4" >/dev/null 2>&1; then ok=1; break; fi
  done
  ((ok)) || setup_fail "no ping reply from the host side $HOST4 over eth1.$VID"
  ok=0
  for ((i = 0; i < 10; i++)); do
    if ping -6 -n -q -c 1 -W 1 "$HOST6" >/dev/null 2>&1; then ok=1; break; fi
  done
  ((ok)) || setup_fail "no ping reply from the host side $HOST6 over eth1.$VID"
  {
    ip -d link show eth1
    ip -d addr show "eth1.$VID"
    ethtool -l eth1
    ethtool -i eth1
    grep -E 'virtio' /proc/interrupts
  } >"$RUNDIR/guest-net.txt" 2>&1
  log "network up on $(uname -r) after $(elapsed) s: eth1 (virtio_net), eth1.$VID $GUEST4 $GUEST6"
}

# The virtio input IRQs ("virtioN-input.Q"), one "IRQ NAME" line each.
input_irqs() {
  awk '/virtio[0-9]+-input\.[0-9]+/ { sub(":", "", $1); print $1, $NF }' /proc/interrupts
}

# The virtio input IRQs as "NAME IRQ CPUS", CPUS from /proc/irq/IRQ/$1: effective_affinity_list (where it
# runs) or smp_affinity_list (where it is told to go).
irq_cpus() {
  local irq name
  while read -r irq name; do
    printf '%s %s %s\n' "$name" "$irq" "$(cat "/proc/irq/$irq/$1" 2>/dev/null || echo '?')"
  done < <(input_irqs)
}
irq_affinities() { irq_cpus effective_affinity_list; }
irq_smp() { irq_cpus smp_affinity_list; }

# Put input queue 0's IRQ on CPU $1 and queue 1's on CPU $2 (the move takes effect at the next interrupt).
set_input_irqs() {
  local irq name
  while read -r irq name; do
    case "${name##*.}" in
      0) echo "$1" >"/proc/irq/$irq/smp_affinity_list" ;;
      1) echo "$2" >"/proc/irq/$irq/smp_affinity_list" ;;
    esac
  done < <(input_irqs)
}

# ---------------------------------------------------------------- per-kernel tools
tools() {
  local t="$RUNDIR/tools"
  mkdir -p "$t"
  timeout 60 "$BIN/server" doctor --mode xdp --iface eth1 --vlan "$VID" --listen "$GUEST4:4433" >"$t/doctor.txt" 2>&1
  echo "exit $?" >>"$t/doctor.txt"
  timeout 60 bash "$REPO/scripts/ops/verify_network.sh" --iface "eth1.$VID" --peer "$HOST4" >"$t/verify_network.txt" 2>&1
  echo "exit $?" >>"$t/verify_network.txt"
  timeout 60 bash "$REPO/scripts/ops/tune_server.sh" --dry-run --iface eth1 --limits-file "$t/limits.conf" >"$t/tune_server.txt" 2>&1
  echo "exit $?" >>"$t/tune_server.txt"
  log "tools: doctor $(tail -1 "$t/doctor.txt"), verify_network $(tail -1 "$t/verify_network.txt"), tune_server --dry-run $(tail -1 "$t/tune_server.txt")"
}

# ---------------------------------------------------------------- impaired link (uring cell)
# 1 % loss and reordering on the guest's wire, both ways (this needs sch_netem, which the guest kernels have
# and the host's testbed kernel may not): egress by a netem root qdisc on eth1, ingress by redirecting eth1's
# ingress to ifbeth1 and a netem root qdisc there. "delay 5ms reorder 25% 50%": a quarter of the packets (50 %
# correlated) leave at once, the rest 5 ms later, so later packets overtake earlier ones. Only the uring cell
# gets it: XDP runs before the ingress qdisc and XDP_TX never meets the egress one. NETEM_SPEC is the one
# description of the impairment; netem.txt in the cell's directory holds the spec and the qdiscs' counters.
NETEM_SPEC=(loss 1% delay 5ms reorder 25% 50% limit 10000)
netem_on() { # dir
  {
    echo "spec: ${NETEM_SPEC[*]}"
    modprobe -a sch_netem ifb act_mirred cls_matchall &&
      ip link add ifbeth1 type ifb &&
      ip link set dev ifbeth1 up &&
      tc qdisc add dev eth1 root netem "${NETEM_SPEC[@]}" &&
      tc qdisc add dev ifbeth1 root netem "${NETEM_SPEC[@]}" &&
      tc qdisc add dev eth1 handle ffff: ingress &&
      tc filter add dev eth1 parent ffff: matchall action mirred egress redirect dev ifbeth1
  } >"$1/netem-setup.txt" 2>&1
}
netem_off() { # dir
  {
    echo "spec: ${NETEM_SPEC[*]}"
    echo "== eth1 (egress)"
    tc -s qdisc show dev eth1
    echo "== ifbeth1 (eth1's ingress)"
    tc -s qdisc show dev ifbeth1
  } >"$1/netem.txt" 2>&1
  tc qdisc del dev eth1 ingress 2>/dev/null
  tc qdisc del dev eth1 root 2>/dev/null
  ip link del ifbeth1 2>/dev/null
  return 0
}

# ---------------------------------------------------------------- cells
run_cell() {
  local cell=$1 dir=$RUNDIR/cell-$1 pid rc
  mkdir -p "$dir"
  cell_server_args "$cell"
  local args=("${SERVER_ARGS[@]}" --stats-json "$dir/stats.json")
  # Pinning is tested against IRQs that did not start where the round-robin fallback would put workers:
  # xdp-native gathers every queue IRQ on CPU 0 and lets pin_irqs.sh spread them (it must move queue 1's);
  # v6 crosses them (queue 0 -> CPU 1, queue 1 -> CPU 0), so worker q must follow its IRQ, not its index.
  if [[ $cell == xdp-native ]]; then
    set_input_irqs 0 0
    irq_smp >"$dir/irq-before-pin_irqs.txt"
    timeout 60 bash "$REPO/scripts/ops/pin_irqs.sh" --iface eth1 --queues 2 >"$dir/pin_irqs.txt" 2>&1
    echo "exit $?" >>"$dir/pin_irqs.txt"
    irq_smp >"$dir/irq-after-pin_irqs.txt"
  elif [[ $cell == v6 ]]; then
    set_input_irqs 1 0
    irq_smp >"$dir/irq-crossed.txt"
  fi
  ethtool -S eth1 >"$dir/ethtool-before.txt" 2>&1
  if [[ $cell == uring ]]; then
    if netem_on "$dir"; then log "$cell: netem on eth1 both ways: ${NETEM_SPEC[*]}"
    else log "$cell: netem setup FAILED: $(tr '\n' ' ' <"$dir/netem-setup.txt")"; fi
  fi
  printf '%q ' "$BIN/server" "${args[@]}" >"$dir/server.cmd"
  "$BIN/server" "${args[@]}" >"$dir/server.out" 2>"$dir/server.err" </dev/null &
  pid=$!
  if wait_listening "$pid" "$dir/server.err" 120; then
    log "$cell: server listening ($(elapsed) s)"
    : >"$RUNDIR/$cell.ready"
    wait_host "$WAIT_DONE" "$cell.done" || log "$cell: the host did not finish the load in $WAIT_DONE s"
  else
    if kill -0 "$pid" 2>/dev/null; then
      echo "server did not print 'listening on' within 120 s; stderr tail:" >"$RUNDIR/$cell.failed"
    else
      echo "server exited before listening (exit code in cell-$cell/server.rc); stderr tail:" >"$RUNDIR/$cell.failed"
    fi
    tail -5 "$dir/server.err" >>"$RUNDIR/$cell.failed"
    log "$cell: FAILED to start: $(tr '\n' ' ' <"$RUNDIR/$cell.failed")"
    wait_host 60 "$cell.done" || true
  fi
  ethtool -S eth1 >"$dir/ethtool-after.txt" 2>&1
  cat /proc/interrupts >"$dir/interrupts.txt"
  irq_affinities >"$dir/irq-affinity.txt"
  stop_server "$pid" 2>>"$LOG"
  rc=$SERVER_RC
  [[ $cell != uring ]] || netem_off "$dir"
  echo "$rc" >"$dir/server.rc"
  log "$cell: server exit $rc ($(elapsed) s)"
  sleep 1 # an AF_XDP rebind to the same queue right after a close can fail with EBUSY for ~0.5 s
  : >"$RUNDIR/$cell.collected"
}

setup
if ((SETUP_ONLY)); then exit 0; fi
: >"$RUNDIR/setup.done"
tools
for cell in $CELLS; do run_cell "$cell"; done
log "all cells done after $(elapsed) s"
: >"$RUNDIR/guest.finished"
