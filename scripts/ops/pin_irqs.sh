#!/usr/bin/env bash
# pin_irqs.sh: give the server's NIC N queues and put each queue's IRQ on the CPU the server will pin that
# queue's worker to (the reference guide's §3.3 "NIC IRQ Affinity", corrected for AF_XDP).
#
# With AF_XDP the kernel runs a queue's NAPI poll (and the XDP program) on the CPU that takes the queue's
# interrupt, and `server --mode xdp --pin irq` (the default) puts worker q on the CPU serving queue q's
# IRQ. This script decides that CPU with the server's own fallback rule (datapath/src/pin/mod.rs) and moves
# the IRQ there, so IRQ q, worker q and queue q's softirq share one CPU and the master gets its own:
#   A = the allowed CPUs (this shell's affinity ∩ online, or --cpus), ascending; W = N workers.
#   |A| > W: queue q -> A[q] and the last CPU of A is left to the master;
#   else:    queue q -> A[q mod |A|] and the master shares a CPU (the highest with the fewest workers).
# Queue q's IRQ is found as the server finds it: by action name in /proc/interrupts (`eth1-TxRx-3`,
# `i40e-eth1-TxRx-3`, `virtio2-input.3`, `mlx5_comp3@pci:0000:3b:00.0`, ...; a label naming RX beats a
# bare index, then the lowest IRQ; TX-only and misc vectors never match), else by the device's msi_irqs in
# IRQ order minus misc vectors.
#
# Corrections to the guide: it pinned queue IRQs to "cores 48+" away from the workers (wrong for AF_XDP,
# where the IRQ's CPU does the queue's packet work for the worker); its `grep "${NIC}-${i}"` also matched
# queue 1 in `eth1-10`; it counted queues from sysfs instead of setting them; it left irqbalance running,
# which moves the IRQs back.
#
# Packages (Debian): ethtool, procps (pgrep). Installed with `apt-get install -y -qq` when missing (run as
# root, not --dry-run; the command is printed with --dry-run). The IRQ affinities are machine-wide;
# the interface is looked up in the current network namespace.
set -euo pipefail

PROG=pin_irqs
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
declare -A PKG_OF=([ethtool]=ethtool [pgrep]=procps)
PKG_WARN="WARN: "

usage() {
  cat <<'EOF'
Usage: pin_irqs.sh --iface IF --queues N [--cpus LIST] [--dry-run]
       pin_irqs.sh --install-deps | --help
Set IF's channel count to N (ethtool -L IF combined N; rx/tx N on drivers with separate channels),
stop irqbalance if it runs, pin each queue's IRQ to the CPU the server will pin worker q to, and print
the queue -> IRQ -> CPU map. A virtual device (veth, macvlan: no IRQs) is reported and left alone (exit 0).
  --iface IF      the interface the server serves (AF_XDP: the parent NIC, e.g. eth1)
  --queues N      queues = workers (server -w defaults to the queue count in xdp mode)
  --cpus LIST     the CPUs the server will be allowed to use (default: this shell's affinity ∩ online)
  --dry-run       print every command that would change something (prefixed '+ '), change nothing
  --install-deps  install the packages this script uses (ethtool procps) and exit
Run as root. Exit: 0 done or nothing to do, 1 failure, 2 usage.
EOF
}

DRY=0
IFACE=""
QUEUES=""
CPUS_ARG=""
INSTALL_ONLY=0
while (($#)); do
  case "$1" in
    --iface) val "$@"; IFACE=$2; shift ;;
    --iface=*) IFACE=${1#*=} ;;
    --queues) val "$@"; QUEUES=$2; shift ;;
    --queues=*) QUEUES=${1#*=} ;;
    --cpus) val "$@"; CPUS_ARG=$2; shift ;;
    --cpus=*) CPUS_ARG=${1#*=} ;;
    *) common_opt "$1" ;;
  esac
  shift
done

((!INSTALL_ONLY)) || install_deps_and_exit --root "ethtool procps" ethtool pgrep
[[ -n $IFACE ]] || usage_err "--iface is required"
check_iface "$IFACE"
[[ -n $QUEUES ]] || usage_err "--queues is required"
if ! [[ $QUEUES =~ ^[0-9]+$ ]] || ((QUEUES < 1 || QUEUES > 4096)); then
  usage_err "--queues must be 1..4096, got '$QUEUES'"
fi
need_root "ethtool -L, /proc/irq"
install_pkgs ethtool pgrep || true
((DRY)) && msg "dry run: printing the commands, changing nothing"
[[ -e /sys/class/net/$IFACE ]] || { err "no interface $IFACE in this network namespace"; exit 1; }

CHANGES=0 WARNS=0
warn() {
  msg "WARN: $*"
  WARNS=$((WARNS + 1))
}

# ---------------------------------------------------------------- CPU lists
# Expand "0-3,8" into "0 1 2 3 8" (empty for an empty list); returns 1 when malformed.
expand_cpus() {
  local s=${1//[[:space:]]/} part lo hi out=() c
  [[ -n $s ]] || return 0
  IFS=, read -ra parts <<<"$s"
  for part in "${parts[@]}"; do
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
      lo=$((10#${BASH_REMATCH[1]})) hi=$((10#${BASH_REMATCH[2]}))
    elif [[ $part =~ ^[0-9]+$ ]]; then
      lo=$((10#$part)) hi=$lo
    else
      return 1
    fi
    ((lo <= hi)) || return 1
    for ((c = lo; c <= hi; c++)); do out+=("$c"); done
  done
  printf '%s\n' "${out[@]}" | sort -n -u | tr '\n' ' ' | sed 's/ $//'
}
online=$(expand_cpus "$(cat /sys/devices/system/cpu/online)") || { err "cannot parse the online CPUs"; exit 1; }
if [[ -n $CPUS_ARG ]]; then
  mask=$(expand_cpus "$CPUS_ARG") || usage_err "--cpus: bad CPU list '$CPUS_ARG'"
else
  mask=$(expand_cpus "$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)") ||
    { err "cannot parse Cpus_allowed_list"; exit 1; }
fi
ALLOWED=()
for c in $mask; do [[ " $online " == *" $c "* ]] && ALLOWED+=("$c"); done
((${#ALLOWED[@]})) || { err "no allowed CPU is online (allowed: ${mask:-none}, online: $online)"; exit 1; }
W=$QUEUES NA=${#ALLOWED[@]}
# The server's fallback rule, which this script makes the IRQ rule too.
cpu_for_queue() { if ((NA > W)); then echo "${ALLOWED[$1]}"; else echo "${ALLOWED[$(($1 % NA))]}"; fi; }
master_cpu() {
  if ((NA > W)); then
    echo "${ALLOWED[NA - 1]}"
    return
  fi
  # Every CPU has workers: the fewest workers, the highest CPU on a tie.
  local -A n=()
  local q c best="" bn=""
  for ((q = 0; q < W; q++)); do c=$(cpu_for_queue "$q") && n[$c]=$((${n[$c]:-0} + 1)); done
  for c in "${ALLOWED[@]}"; do
    if [[ -z $bn ]] || ((${n[$c]:-0} <= bn)); then best=$c bn=${n[$c]:-0}; fi
  done
  echo "$best"
}

# ---------------------------------------------------------------- channels
msg "== channels of $IFACE (wanted: $QUEUES)"
xdp_prog=$(ip -d link show dev "$IFACE" 2>/dev/null | grep -o 'prog/xdp[a-z]* id [0-9]*' | head -1 || true)
CHANNEL_FAIL=0
if ! command -v ethtool >/dev/null 2>&1; then
  warn "ethtool missing (apt-get install ethtool): channel count not checked"
elif ! ch=$(ethtool -l "$IFACE" 2>&1); then
  msg "$IFACE has no channels (ethtool -l: ${ch##*: }): queue count left as is" \
    "($(find "/sys/class/net/$IFACE/queues" -maxdepth 1 -name 'rx-*' 2>/dev/null | wc -l) rx queue(s))"
else
  num() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0)); }
  declare -A CH_MAX=() CH_CUR=()
  for k in Combined RX TX; do CH_MAX[$k]=$(ethtool_value "$ch" max "$k") CH_CUR[$k]=$(ethtool_value "$ch" cur "$k"); done
  if num "${CH_MAX[Combined]}"; then
    kinds=(Combined)
  elif num "${CH_MAX[RX]}" || num "${CH_MAX[TX]}"; then
    # Separate rx/tx channels (veth, some drivers): set both.
    msg "$IFACE has no combined channels, separate rx/tx ones (rx ${CH_CUR[RX]} of ${CH_MAX[RX]}," \
      "tx ${CH_CUR[TX]} of ${CH_MAX[TX]})"
    kinds=(RX TX)
  else
    msg "$IFACE has no channels to set (ethtool -l shows none): queue count left as is"
    kinds=()
  fi
  args=()
  for k in "${kinds[@]}"; do
    d=${k,,} m=${CH_MAX[$k]} c=${CH_CUR[$k]}
    num "$m" || continue
    if ((QUEUES > m)); then
      err "$IFACE has at most $m $d channels; --queues $QUEUES is too many"
      exit 1
    elif [[ $c == "$QUEUES" ]]; then
      msg "$IFACE $d channels: $c -> $QUEUES: ok"
    else
      msg "$IFACE $d channels: $c -> $QUEUES"
      args+=("$d" "$QUEUES")
    fi
  done
  if ((${#args[@]})); then
    [[ -z $xdp_prog ]] || warn "$IFACE has an XDP program attached ($xdp_prog): many drivers refuse to change" \
      "channels under AF_XDP sockets; stop the server first"
    if run ethtool -L "$IFACE" "${args[@]}"; then CHANGES=$((CHANGES + 1)); else CHANNEL_FAIL=1; fi
  fi
fi
if ((CHANNEL_FAIL)); then
  err "setting the channel count of $IFACE failed"
  exit 1
fi

# ---------------------------------------------------------------- virtual device: no IRQs
plan_note="the server's rule: allowed CPUs ${ALLOWED[*]}, $W worker(s)"
if [[ ! -e /sys/class/net/$IFACE/device ]]; then
  msg "== $IFACE is a virtual device (no IRQs): nothing to pin"
  msg "the server pins its workers round-robin instead ($plan_note):"
  for ((q = 0; q < W; q++)); do msg "  queue $q -> IRQ - (none) -> CPU $(cpu_for_queue "$q")"; done
  msg "  master -> CPU $(master_cpu)"
  report_changes
  exit 0
fi

# ---------------------------------------------------------------- find the queue IRQs (as datapath/src/pin/irq.rs does)
MISC_WORDS=(async config mailbox mbox mbx misc ctrl ctl cmd adminq mgmt mgmnt event link other err fdir)
dev=$(readlink -f "/sys/class/net/$IFACE/device")
DEV_NAME=${dev##*/}
PCI="" MSI_DIR=""
is_pci() { [[ $1 =~ ^[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+\.[0-9a-fA-F]+$ ]]; }
if is_pci "$DEV_NAME"; then
  PCI=$DEV_NAME MSI_DIR=$dev/msi_irqs
elif is_pci "$(basename "$(dirname "$dev")")"; then
  PCI=$(basename "$(dirname "$dev")") MSI_DIR=$(dirname "$dev")/msi_irqs
fi

# /proc/interrupts: per IRQ, the tokens after the per-CPU counts, split on whitespace and commas.
declare -A TOKENS=()
IRQS=()
ncpu=$(head -1 /proc/interrupts | tr -s ' ' '\n' | grep -c '^CPU' || true)
while IFS= read -r line; do
  key=${line%%:*}
  key=${key//[[:space:]]/}
  [[ $key =~ ^[0-9]+$ ]] || continue
  read -ra toks <<<"${line#*:}"
  i=0
  while ((i < ncpu && i < ${#toks[@]})) && [[ ${toks[i]} =~ ^[0-9]+$ ]]; do i=$((i + 1)); done
  out=()
  for t in "${toks[@]:i}"; do
    IFS=, read -ra parts <<<"$t"
    for p in "${parts[@]}"; do [[ -z $p ]] || out+=("$p"); done
  done
  TOKENS[$key]="${out[*]}"
  IRQS+=("$key")
done < <(tail -n +2 /proc/interrupts)

# classify_label LABEL: prints 0 (names RX) or 1 (bare/other); returns 1 for TX-only or misc.
classify_label() {
  local l=${1,,} w
  if [[ -z $l ]]; then
    echo 1
    return 0
  fi
  for w in "${MISC_WORDS[@]}"; do [[ $l != *"$w"* ]] || return 1; done
  if [[ $l == *rx* || $l == input || $l == *comp* ]]; then
    echo 0
    return 0
  fi
  [[ $l != *tx* && $l != output ]] || return 1
  echo 1
}
# queue_suffix REST ("-TxRx-3", "-3", ".input.3", "_comp3"): prints "RANK QUEUE".
queue_suffix() {
  local rest=$1 body digits label rank
  [[ ${rest:0:1} == [-_.] ]] || return 1
  body=${rest:1}
  # all the trailing digits (at most 6), after a label that ends in a non-digit
  [[ $body =~ ^(.*[^0-9])?([0-9]{1,6})$ ]] || return 1
  digits=${BASH_REMATCH[2]} label=${BASH_REMATCH[1]}
  while [[ -n $label && ${label: -1} == [-_.] ]]; do label=${label%?}; done
  [[ $label =~ ^[A-Za-z_-]*$ ]] || return 1
  rank=$(classify_label "$label") || return 1
  echo "$rank $((10#$digits))"
}
# match_after TOKEN NAME: NAME inside TOKEN at a boundary (start, or after - _ : @), then a queue suffix.
match_after() {
  local tok=$1 name=$2 done_len=0 rest=$1 before prefix
  [[ -n $name ]] || return 1
  while [[ $rest == *"$name"* ]]; do
    before=${rest%%"$name"*}
    prefix=${tok:0:done_len+${#before}}
    if [[ -z $prefix || ${prefix: -1} == [-_:@] ]]; then
      queue_suffix "${rest:${#before}+${#name}}" && return 0
    fi
    done_len=$((done_len + ${#before} + 1))
    rest=${tok:done_len}
  done
  return 1
}
token_queue() { # TOKEN: prints "RANK QUEUE"
  local tok=$1 left right sfx
  match_after "$tok" "$IFACE" && return 0
  match_after "$tok" "$DEV_NAME" && return 0
  [[ -n $PCI && $tok == *@* ]] || return 1
  left=${tok%%@*} right=${tok#*@}
  right=${right#pci:}
  [[ $right == "$PCI" && $left == *[-_]* ]] || return 1
  sfx=${left#"${left%%[-_]*}"}
  queue_suffix "$sfx"
}
is_misc_vector() { # IRQ
  local t l w toks
  read -ra toks <<<"${TOKENS[$1]}"
  for t in "${toks[@]}"; do
    l=${t,,}
    [[ $t != "$IFACE" ]] || return 0
    for w in "${MISC_WORDS[@]}"; do [[ $l != *"$w"* ]] || return 0; done
    [[ $l != *output* ]] || return 0
    if [[ ($l == *-tx* || $l == *_tx*) && $l != *rx* ]]; then return 0; fi
  done
  return 1
}

declare -A BEST_RANK=() BEST_IRQ=() BEST_NAME=()
found_any=0
for irq in "${IRQS[@]}"; do
  read -ra toks <<<"${TOKENS[$irq]}"
  for t in "${toks[@]}"; do
    m=$(token_queue "$t") || continue
    found_any=1
    read -r rank q <<<"$m"
    ((q < W)) || continue
    if [[ -z ${BEST_IRQ[$q]:-} ]] || ((rank < BEST_RANK[$q] || (rank == BEST_RANK[$q] && irq < BEST_IRQ[$q]))); then
      BEST_RANK[$q]=$rank BEST_IRQ[$q]=$irq BEST_NAME[$q]=$t
    fi
  done
done
method="by name in /proc/interrupts"
if ((!found_any)); then
  method="by the device's msi_irqs in IRQ order (no queue-named vector)"
  msi=()
  if [[ -n $MSI_DIR && -d $MSI_DIR ]]; then
    for f in "$MSI_DIR"/*; do [[ -e $f ]] && msi+=("${f##*/}"); done
  fi
  vecs=()
  for irq in $(printf '%s\n' "${msi[@]}" | sort -n); do
    [[ -n ${TOKENS[$irq]+x} ]] || continue
    is_misc_vector "$irq" || vecs+=("$irq")
  done
  for ((q = 0; q < W && q < ${#vecs[@]}; q++)); do
    BEST_IRQ[$q]=${vecs[q]}
    BEST_NAME[$q]=$(awk '{print $NF}' <<<"${TOKENS[${vecs[q]}]}")
  done
fi
nfound=0
for ((q = 0; q < W; q++)); do [[ -z ${BEST_IRQ[$q]:-} ]] || nfound=$((nfound + 1)); done
msg "== IRQs of $IFACE (device $DEV_NAME${PCI:+, PCI $PCI}): $nfound of $W queue(s) found $method"
if ((nfound == 0)); then
  warn "no queue IRQ found for $IFACE: nothing to pin; the server falls back to round-robin ($plan_note)"
fi
if ((DRY)) && ((CHANGES)); then
  msg "note: the channel count was not changed (dry run): the IRQs below are the current ones"
fi

# ---------------------------------------------------------------- irqbalance
if ((nfound)); then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
    msg "irqbalance: running (systemd) -> stopped (it would move the IRQs back; 'systemctl disable" \
      "irqbalance' keeps it off after a reboot)"
    run systemctl stop irqbalance
    CHANGES=$((CHANGES + 1))
  elif pids=$(pgrep -x irqbalance 2>/dev/null) && [[ -n $pids ]]; then
    msg "irqbalance: running (pid ${pids//$'\n'/, }) outside systemd -> stopped"
    for p in $pids; do run kill -TERM "$p"; done
    CHANGES=$((CHANGES + 1))
  else
    msg "irqbalance: not running: ok"
  fi
fi

# ---------------------------------------------------------------- pin
FAILS=0
affinity_of() { # IRQ: effective affinity when present and non-empty, else smp_affinity_list
  local e="" s=""
  e=$(cat "/proc/irq/$1/effective_affinity_list" 2>/dev/null || true)
  s=$(cat "/proc/irq/$1/smp_affinity_list" 2>/dev/null || true)
  if [[ -n ${e//[[:space:]]/} ]]; then echo "$e"; else echo "$s"; fi
}
MAP=()
for ((q = 0; q < W; q++)); do
  cpu=$(cpu_for_queue "$q")
  irq=${BEST_IRQ[$q]:-}
  if [[ -z $irq ]]; then
    ((nfound == 0)) || warn "queue $q: no IRQ found (the server pins worker $q to CPU $cpu anyway)"
    MAP+=("queue $q -> IRQ - (not found) -> CPU $cpu (worker $q by the fallback rule)")
    continue
  fi
  smp=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo "?")
  name=${BEST_NAME[$q]}
  if [[ $(expand_cpus "$smp" 2>/dev/null || true) == "$cpu" ]]; then
    msg "IRQ $irq ($name, queue $q) smp_affinity_list: $smp -> $cpu: ok"
  else
    msg "IRQ $irq ($name, queue $q) smp_affinity_list: $smp -> $cpu"
    printf '+ echo %s > %s\n' "$cpu" "/proc/irq/$irq/smp_affinity_list"
    if ! ((DRY)); then
      if e=$({ echo "$cpu" >"/proc/irq/$irq/smp_affinity_list"; } 2>&1); then
        CHANGES=$((CHANGES + 1))
      elif [[ $e == *"Input/output error"* ]]; then
        warn "IRQ $irq: the kernel manages its affinity (EIO): left at $(affinity_of "$irq"); the server" \
          "follows the IRQ wherever it is"
      else
        msg "FAIL: IRQ $irq: cannot write smp_affinity_list: ${e##*: }"
        FAILS=$((FAILS + 1))
      fi
    else
      CHANGES=$((CHANGES + 1))
    fi
  fi
  eff=$(affinity_of "$irq")
  if [[ $(expand_cpus "$eff" 2>/dev/null || true) == "$cpu" ]] || ((DRY)); then
    MAP+=("queue $q -> IRQ $irq ($name) -> CPU $cpu (effective now: $eff)")
  else
    MAP+=("queue $q -> IRQ $irq ($name) -> CPU $cpu (effective now: $eff; the kernel moves it at its next interrupt)")
  fi
done

msg "== map ($plan_note)"
for l in "${MAP[@]}"; do msg "  $l"; done
msg "  master -> CPU $(master_cpu)"
report_changes "; start the server with --pin irq (the default in xdp mode)"
((WARNS == 0)) || msg "$WARNS warning(s)"
if ((FAILS)); then
  msg "FAILED: $FAILS IRQ(s) could not be pinned"
  exit 1
fi
exit 0
