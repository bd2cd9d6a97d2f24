#!/usr/bin/env bash
# monitor.sh: sample the server box's counters into a CSV, alongside a run (the reference guide's §5.3
# "Automated Monitoring Script", corrected and extended for the AF_XDP datapath).
#
# Columns (one row per sample; counters are cumulative as the kernel reports them, so rates are the
# difference of two rows):
#   timestamp                 unix seconds with milliseconds
#   udp_in_datagrams, udp_out_datagrams, udp_rcvbuf_errors, udp_sndbuf_errors, udp_in_errors,
#   udp_no_ports, udp_in_csum_errors
#                             /proc/net/snmp "Udp:" (of this network namespace), matched by column name
#   xdp_redirected ... xdp_vlan_from_metadata
#                             the per-CPU `counters` map of the XDP program attached to --iface, summed
#                             over the CPUs (`bpftool map dump`; the names are xdp-prog's `enum counter`);
#                             empty without --iface, without an attached program or without bpftool
#   rss_kb, threads           VmRSS and Threads of --pid from /proc/PID/status; empty without --pid or
#                             once the process is gone
#   connections               empty: QUIC connections have no kernel state to count, and the server
#                             reports its connection counts in --stats-json at shutdown
#
# Corrections to the guide: it looped forever (this stops after --count samples); it summed the RSS of
# every process named `server` (this reads the one --pid); it wrote a `connections` header and never a
# value, so every row had one column fewer than the header; it read the Udp counters by position (right
# for today's kernels, but the InCsumErrors/NoPorts columns it did not read are what tell a checksum or
# steering problem: an AF_XDP program that misses packets shows up as NoPorts or tripwire traffic).
#
# Packages (Debian): bpftool (only with --iface), installed with `apt-get install -y -qq` when missing
# (as root, not --dry-run). Messages go to stderr; the CSV goes to --output or stdout.
set -euo pipefail

PROG=monitor
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MSG_FD=2 # messages to stderr: stdout may be the CSV
declare -A PKG_OF=([bpftool]=bpftool)
PKG_IT=it

usage() {
  cat <<'EOF'
Usage: monitor.sh [--interval S] [--count N] [--pid PID] [--iface IF] [--output FILE.csv] [--dry-run]
       monitor.sh --install-deps | --help
Sample UDP counters (/proc/net/snmp), the XDP program's counters on IF, and the server's RSS and thread
count every S seconds, N times, into a CSV with a header (stdout or FILE, replaced). Stops by itself.
  --interval S    seconds between samples (default 1; fractions allowed)
  --count N       number of samples (default 60)
  --pid PID       the server's pid (RSS, threads)
  --iface IF      the interface with the server's XDP program (counters; needs bpftool, root)
  --output FILE   write the CSV there (replacing it) instead of stdout
  --dry-run       print the commands one sample would run (prefixed '+ '), write nothing
  --install-deps  install the packages this script uses (bpftool) and exit
Exit: 0 done, 1 failure, 2 usage.
EOF
}

DRY=0
INTERVAL=1
COUNT=60
PID=""
IFACE=""
OUTPUT=""
INSTALL_ONLY=0
while (($#)); do
  case "$1" in
    --interval) val "$@"; INTERVAL=$2; shift ;;
    --interval=*) INTERVAL=${1#*=} ;;
    --count) val "$@"; COUNT=$2; shift ;;
    --count=*) COUNT=${1#*=} ;;
    --pid) val "$@"; PID=$2; shift ;;
    --pid=*) PID=${1#*=} ;;
    --iface) val "$@"; IFACE=$2; shift ;;
    --iface=*) IFACE=${1#*=} ;;
    --output) val "$@"; OUTPUT=$2; shift ;;
    --output=*) OUTPUT=${1#*=} ;;
    *) common_opt "$1" ;;
  esac
  shift
done

((!INSTALL_ONLY)) || install_deps_and_exit --root bpftool bpftool
if ! [[ $INTERVAL =~ ^([0-9]+(\.[0-9]*)?|\.[0-9]+)$ ]] ||
  ! awk -v s="$INTERVAL" 'BEGIN {exit !(s > 0 && s <= 86400)}'; then
  usage_err "--interval must be a number of seconds > 0, got '$INTERVAL'"
fi
if ! [[ $COUNT =~ ^[0-9]+$ ]] || ((COUNT < 1)); then usage_err "--count must be >= 1, got '$COUNT'"; fi
if [[ -n $PID ]] && ! [[ $PID =~ ^[0-9]+$ ]]; then usage_err "--pid must be a number, got '$PID'"; fi
[[ -z $IFACE ]] || check_iface "$IFACE"
if [[ -n $PID && ! -d /proc/$PID ]]; then
  err "no process $PID"
  exit 1
fi
if [[ -n $IFACE ]] && ! ip link show dev "$IFACE" >/dev/null 2>&1; then
  err "no interface $IFACE in this network namespace"
  exit 1
fi

UDP_COLS=(InDatagrams OutDatagrams RcvbufErrors SndbufErrors InErrors NoPorts InCsumErrors)
UDP_HDR="udp_in_datagrams,udp_out_datagrams,udp_rcvbuf_errors,udp_sndbuf_errors,udp_in_errors,udp_no_ports,udp_in_csum_errors"
# xdp-prog/src/bpf/canvas.bpf.c `enum counter`, in map-key order.
XDP_NAMES=(redirected redirect_failed passed_not_udp_port passed_other_vlan passed_not_ip passed_not_udp
  ip_fragment malformed_eth malformed_ip malformed_udp vlan_from_metadata)
XDP_HDR=$(printf 'xdp_%s,' "${XDP_NAMES[@]}")
XDP_HDR=${XDP_HDR%,}
XDP_EMPTY=$(printf '%*s' $((${#XDP_NAMES[@]} - 1)) '' | tr ' ' ',')
HEADER="timestamp,$UDP_HDR,$XDP_HDR,rss_kb,threads,connections"

if [[ -n $IFACE ]]; then install_pkgs bpftool || true; fi

# The attached program of IF and its `counters` map (re-resolved when the program changes).
PROG_ID="" MAP_ID="" XDP_NOTE=""
resolve_map() {
  local l id m
  l=$(ip -d -o link show dev "$IFACE" 2>/dev/null || true)
  if [[ ! $l =~ prog/xdp[a-z]*\ id\ ([0-9]+) ]]; then
    PROG_ID="" MAP_ID=""
    XDP_NOTE="no XDP program attached to $IFACE: xdp columns empty"
    return
  fi
  id=${BASH_REMATCH[1]}
  [[ $id != "$PROG_ID" || -z $MAP_ID ]] || return 0
  PROG_ID=$id MAP_ID=""
  if ! command -v bpftool >/dev/null 2>&1; then
    XDP_NOTE="bpftool missing (apt-get install bpftool): xdp columns empty"
    return
  fi
  for m in $(bpftool -j prog show id "$id" 2>/dev/null | grep -o '"map_ids":\[[0-9,]*\]' | grep -o '[0-9]\+' || true); do
    if bpftool -j map show id "$m" 2>/dev/null | grep -q '"type":"percpu_array","name":"counters"'; then
      MAP_ID=$m
      XDP_NOTE="xdp columns: program $id on $IFACE, its per-CPU map counters (id $m)"
      return
    fi
  done
  XDP_NOTE="program $id on $IFACE has no per-CPU 'counters' map (not the server's program?): xdp columns empty"
}

udp_row() {
  awk -v want="${UDP_COLS[*]}" '
    $1 == "Udp:" && !hdr {for (i = 2; i <= NF; i++) col[$i] = i; hdr = 1; next}
    $1 == "Udp:" && hdr {
      n = split(want, w, " "); out = ""
      for (j = 1; j <= n; j++) out = out (j > 1 ? "," : "") ((w[j] in col) ? $(col[w[j]]) : "")
      print out; exit
    }' /proc/net/snmp
}

xdp_row() { # after resolve_map (in this shell: it caches)
  if [[ -z $IFACE || -z $MAP_ID ]]; then
    echo "$XDP_EMPTY"
    return
  fi
  # bpftool prints the BTF-formatted dump: "key": K, then "value": V per CPU.
  bpftool map dump id "$MAP_ID" 2>/dev/null | awk -v n="${#XDP_NAMES[@]}" '
    /"key":/ {k = $2; gsub(/[^0-9]/, "", k); seen = 1}
    /"value":/ {v = $2; gsub(/[^0-9]/, "", v); s[k] += v}
    END {
      out = ""
      for (i = 0; i < n; i++) out = out (i ? "," : "") (seen ? sprintf("%.0f", s[i] + 0) : "")
      print out
    }' || echo "$XDP_EMPTY"
}

proc_row() {
  [[ -n $PID && -r /proc/$PID/status ]] || { echo ","; return; }
  awk '/^VmRSS:/ {r = $2} /^Threads:/ {t = $2} END {print r "," t}' "/proc/$PID/status" 2>/dev/null || echo ","
}

if ((DRY)); then
  msg "dry run: one sample every $INTERVAL s, $COUNT sample(s); nothing is written"
  [[ -z $OUTPUT ]] || echo "+ echo '$HEADER' > $OUTPUT"
  echo "+ cat /proc/net/snmp"
  if [[ -n $IFACE ]]; then
    resolve_map
    echo "+ ip -d -o link show dev $IFACE"
    if [[ -n $MAP_ID ]]; then echo "+ bpftool map dump id $MAP_ID"; else echo "+ bpftool map dump id <the counters map of $IFACE's program>"; fi
    msg "$XDP_NOTE"
  fi
  [[ -z $PID ]] || echo "+ cat /proc/$PID/status"
  echo "+ sleep $INTERVAL"
  msg "dry run: nothing to change, nothing written"
  exit 0
fi

if [[ -n $OUTPUT ]]; then
  [[ ! -e $OUTPUT ]] || msg "replacing $OUTPUT"
  exec 3>"$OUTPUT"
else
  exec 3>&1
fi
echo "$HEADER" >&3
xdp_noted="" pid_noted=0
for ((i = 1; i <= COUNT; i++)); do
  ts=$(date +%s.%3N)
  if [[ -n $IFACE ]]; then
    resolve_map
    if [[ $XDP_NOTE != "$xdp_noted" ]]; then
      msg "$XDP_NOTE"
      xdp_noted=$XDP_NOTE
    fi
  fi
  udp=$(udp_row)
  xdp=$(xdp_row)
  if [[ -n $PID && ! -d /proc/$PID ]] && ((!pid_noted)); then
    msg "process $PID exited: rss_kb and threads empty from now on"
    pid_noted=1
  fi
  echo "$ts,$udp,$xdp,$(proc_row)," >&3
  ((i == COUNT)) || sleep "$INTERVAL"
done
exec 3>&-
msg "$COUNT sample(s) written${OUTPUT:+ to $OUTPUT}"
exit 0
