#!/usr/bin/env bash
# tune.sh --role server|client: kernel, limits and conntrack tuning of the canvas server box (server) and
# of the load-generator boxes (client) (the reference guide's §3.2 and §4.1 tuning scripts, corrected).
# tune_server.sh and tune_client.sh run it with their role (`exec tune.sh --role ROLE "$@"`); `--help`
# prints the usage of each role (without a role: of both).
#
# Every setting prints `name: current -> wanted` and is applied, or ends in `: ok` and is left alone when
# it already is as wanted (so a second run changes nothing and says so). --dry-run prints every command
# that would change something (prefixed `+ `) and changes nothing.
#
# Packages (Debian): procps (sysctl), nftables (nft; iptables is used instead when only it exists),
# ethtool (--iface), iproute2 (ip). Missing ones are installed with `apt-get install -y -qq` when run as
# root and not --dry-run (the command is printed with --dry-run); --install-deps does only that.
#
# Namespaces: run inside a child network namespace (`ip netns exec NS ...`, the testbed), the
# per-namespace settings (net.ipv4.udp_*_min, somaxconn, optmem_max, ip_local_port_range, the nftables
# rules, the NIC) are applied there; the ones the kernel keeps global (net.core.{r,w}mem_*,
# netdev_max_backlog, busy_poll, udp_mem, nf_conntrack_max: absent or read-only in a child namespace) are
# reported as "global: set in the root namespace" (--strict: and the script exits 1). fs.*, vm.* and
# cpufreq are machine-wide wherever this runs; they are applied and marked "machine-wide".
#
# Corrections to the guide:
#   - `ulimit -n`/`ulimit -l` inside a script only affect that script's shell: the limits go to a
#     limits.d file (new login sessions; root needs its own lines, `*` does not cover it) and the systemd
#     settings are printed. nofile is 1048576, not 4194304: a QUIC server holds one UDP socket (or AF_XDP
#     socket) per worker, not one per connection, and nofile above fs.nr_open (1048576 by default, reset at
#     every boot) makes pam_limits refuse logins.
#   - The guide's loadgen targets 10.0.0.10; the server is 10.0.1.10 (tune_client.sh --server, default
#     10.0.1.10, scopes the client's NOTRACK rules to it).
#   - rmem_default/wmem_default: 4 MiB, not 64 MiB (the default applies to every UDP socket on the box that
#     does not size itself; the server and the loadgen size theirs: --socket-recv-buf/--socket-send-buf,
#     and as root they force it past rmem_max).
#   - udp_mem is in pages, not bytes: the guide's "8388608 16777216 33554432" is 32/64/128 GiB, not "64GB
#     max"; here it is min(guide, half the RAM) for the maximum, with pressure = max/2 and min = max/4
#     (the client's guide value, 64 GiB, was all of an AX52's RAM).
#   - The NOTRACK rules are added only when missing (the guide appended duplicates on every run), in an
#     nftables table of their own (`inet canvas_notrack`, IPv4 and IPv6) replaced atomically, or with
#     `iptables -C` first.
#   - ip_local_port_range 1024-65535 is for the clients: on the server it would let an ephemeral bind take
#     port 4433 before the server starts, so it is not set there.
#   - ASLR is left on (kernel.randomize_va_space): the guide's "marginal" gain is not worth a machine
#     without it. THP stays as it is (the server madvises its canvas; hugetlb pages: hugepages.sh).
#   - irqbalance is stopped by pin_irqs.sh, which also pins the queue IRQs (the guide's tune script stopped
#     it without pinning anything).
#   - RFS (§6.3) is not set up: it needs RPS on the queue to do anything, and with one pinned worker per
#     NIC queue (AF_XDP) or per SO_REUSEPORT socket it only adds an inter-CPU hop.
#   - Nothing here survives a reboot; rerun it (it is idempotent) or copy the values to /etc/sysctl.d.
set -euo pipefail

PROG=tune
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PKG_WARN="WARN: "

ROLE=""
# set_role ROLE: the role of this run (once), and what follows from it.
set_role() {
  [[ $1 == server || $1 == client ]] || usage_err "--role must be server or client, got '$1'"
  ROLE=$1 PROG=tune_$1
  SELF=$(dirname "$0")/$PROG.sh
}
usage() {
  local extra="" what="the canvas server box" cmd="$PROG.sh"
  if [[ $ROLE == client ]]; then
    extra=" [--server IP]" what="a load-generator box"
  elif [[ -z $ROLE ]]; then
    extra=" [--server IP]" what="the server box or a load-generator box"
    cmd="tune.sh --role server|client"
  fi
  cat <<EOF
Usage: $cmd [--dry-run] [--strict] [--iface IF] [--port PORT]$extra [--limits-file PATH]
       $cmd --install-deps | --help
Tune $what: sysctls, conntrack NOTRACK rules for the QUIC port, nofile limits, the CPU
frequency governor and (--iface) the NIC. Each setting prints 'name: current -> wanted' and is applied
only when it differs; a second run changes nothing and says so.
EOF
  if [[ -z $ROLE ]]; then
    echo "  --role ROLE      server: the canvas server box (tune_server.sh); client: a load-generator box (tune_client.sh)"
  fi
  cat <<EOF
  --dry-run        print every command that would change something (prefixed '+ '), change nothing
  --strict         exit 1 when a global setting could not be applied because this runs inside a child
                   network namespace (default: report it as "global: set in the root namespace", go on)
  --iface IF       also tune the NIC: ring sizes to the hardware maximum (ethtool -G), txqueuelen 10000
  --port PORT      the served UDP port, for the NOTRACK rules (default 4433)
EOF
  if [[ $ROLE != server ]]; then
    echo "  --server IP      the server's address, for the NOTRACK rules (default 10.0.1.10, not the guide's 10.0.0.10)$(
      [[ -n $ROLE ]] || echo "; client only")"
  fi
  cat <<EOF
  --limits-file F  where the limits go (default /etc/security/limits.d/90-canvas-${ROLE:-ROLE}.conf)
  --install-deps   install the packages this script uses (procps nftables ethtool iproute2) and exit
Run as root. Exit: 0 done or nothing to do, 1 a setting failed (or --strict and a global setting was
left to the root namespace), 2 usage.
EOF
}

DRY=0
STRICT=0
IFACE=""
PORT=4433
SERVER_IP=10.0.1.10 SERVER_GIVEN=0
LIMITS_FILE="" LIMITS_GIVEN=0
INSTALL_ONLY=0
while (($#)); do
  case "$1" in
    --role | --role=*)
      # Once: a second --role (e.g. tune_server.sh --role client) is not an argument the script knows.
      [[ -z $ROLE ]] || usage_err "unknown argument '$1'"
      if [[ $1 == --role ]]; then val "$@"; set_role "$2"; shift; else set_role "${1#*=}"; fi ;;
    --strict) STRICT=1 ;;
    --iface) val "$@"; IFACE=$2; shift ;;
    --iface=*) IFACE=${1#*=} ;;
    --port) val "$@"; PORT=$2; shift ;;
    --port=*) PORT=${1#*=} ;;
    --limits-file) val "$@"; LIMITS_FILE=$2 LIMITS_GIVEN=1; shift ;;
    --limits-file=*) LIMITS_FILE=${1#*=} LIMITS_GIVEN=1 ;;
    --server | --server=*)
      [[ -z $ROLE || $ROLE == client ]] || usage_err "--server is a tune_client.sh option"
      SERVER_GIVEN=1
      if [[ $1 == --server ]]; then val "$@"; SERVER_IP=$2; shift; else SERVER_IP=${1#*=}; fi ;;
    *) common_opt "$1" ;;
  esac
  shift
done
[[ -n $ROLE ]] || usage_err "--role server|client is required (or run tune_server.sh / tune_client.sh)"
((!SERVER_GIVEN)) || [[ $ROLE == client ]] || usage_err "--server is a tune_client.sh option"
check_port "$PORT"
[[ -z $IFACE ]] || check_iface "$IFACE"
((LIMITS_GIVEN)) || LIMITS_FILE=/etc/security/limits.d/90-canvas-$ROLE.conf
[[ -n $LIMITS_FILE ]] || usage_err "--limits-file needs a value"
[[ $SERVER_IP =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || usage_err "--server must be an IPv4 address, got '$SERVER_IP'"
need_root "sysctl, nft, ethtool"

# ---------------------------------------------------------------- packages
# Packages by command (lib.sh's install_pkgs installs the missing ones; prints the command with --dry-run).
declare -A PKG_OF=([sysctl]=procps [nft]=nftables [ethtool]=ethtool [ip]=iproute2)

need_cmds=(sysctl ip)
command -v iptables >/dev/null 2>&1 || need_cmds+=(nft)
[[ -z $IFACE ]] || need_cmds+=(ethtool)
((!INSTALL_ONLY)) || install_deps_and_exit "procps nftables ethtool iproute2" sysctl ip nft ethtool
install_pkgs "${need_cmds[@]}" || true

# A child network namespace: only the initial one has net.core.netdev_max_backlog (and the other global
# net.core entries); else compare with pid 1's namespace when that is readable.
IN_CHILD=0
NS_NAME=$(ip netns identify 2>/dev/null || true)
if [[ ! -e /proc/sys/net/core/netdev_max_backlog ]]; then
  IN_CHILD=1
elif self=$(readlink /proc/self/ns/net 2>/dev/null) && init=$(readlink /proc/1/ns/net 2>/dev/null) &&
  [[ $self != "$init" ]]; then
  IN_CHILD=1
fi

CHANGES=0 OKS=0 GLOBALS=0 FAILS=0
changed() { CHANGES=$((CHANGES + 1)); }
ok() {
  msg "$*: ok"
  OKS=$((OKS + 1))
}
failed() {
  msg "FAIL: $*"
  FAILS=$((FAILS + 1))
}
left_global() { # WHAT WHY
  msg "$1: global: set in the root namespace ($2)"
  GLOBALS=$((GLOBALS + 1))
}

norm() { tr -s ' \t\n' '   ' <<<"$1" | sed 's/^ //; s/ $//'; }

# set_sysctl NAME WANTED eq|min [NOTE]: min = at least WANTED (a larger value is kept).
set_sysctl() {
  local name=$1 want=$2 mode=$3 note=${4:+ ($4)} f cur
  f=/proc/sys/${name//.//}
  if [[ ! -e $f ]]; then
    if ((IN_CHILD)); then
      left_global "$name: ? -> $want$note" "not visible in this network namespace"
    else
      msg "$name: n/a -> $want$note: not in this kernel (or its module is not loaded): skipped"
    fi
    return 0
  fi
  cur=$(norm "$(<"$f")")
  if [[ $cur == "$want" ]]; then
    ok "$name: $cur -> $want$note"
    return 0
  fi
  if [[ $mode == min && $cur =~ ^[0-9]+$ ]] && ((cur >= want)); then
    ok "$name: $cur -> at least $want$note"
    return 0
  fi
  if [[ ! -w $f ]] && ((EUID == 0)); then
    if ((IN_CHILD)); then
      left_global "$name: $cur -> $want$note" "read-only in this network namespace"
    else
      failed "$name: $cur -> $want$note: $f is not writable"
    fi
    return 0
  fi
  msg "$name: $cur -> $want$note"
  if run sysctl -q -w "$name=$want"; then changed; else failed "$name: sysctl -w failed"; fi
}

# ---------------------------------------------------------------- what is wanted
mem_pages=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 1024 / $(getconf PAGESIZE)))
udp_mem() { # CAP (pages): max = min(CAP, RAM/2), pressure = max/2, min = max/4
  local max=$((mem_pages / 2))
  ((max <= $1)) || max=$1
  echo "$((max / 4)) $((max / 2)) $max"
}

if ((IN_CHILD)); then
  msg "running in a child network namespace${NS_NAME:+ ($NS_NAME)}: settings the kernel keeps global are" \
    "reported, not set"
fi
if ((DRY)); then msg "dry run: printing the commands, changing nothing"; fi
msg "== sysctls ($ROLE)"
if [[ $ROLE == server ]]; then
  set_sysctl fs.file-max 4194304 min "machine-wide"
  set_sysctl vm.max_map_count 16777216 min "machine-wide"
  set_sysctl net.core.rmem_max 134217728 min
  set_sysctl net.core.wmem_max 134217728 min
  set_sysctl net.core.rmem_default 4194304 eq
  set_sysctl net.core.wmem_default 4194304 eq
  set_sysctl net.core.optmem_max 2048000 min
  set_sysctl net.core.netdev_max_backlog 300000 min
  set_sysctl net.core.somaxconn 65535 min
  set_sysctl net.core.busy_poll 50 eq
  set_sysctl net.core.busy_read 50 eq
  set_sysctl net.ipv4.udp_rmem_min 65536 min
  set_sysctl net.ipv4.udp_wmem_min 65536 min
  set_sysctl net.ipv4.udp_mem "$(udp_mem 33554432)" eq "pages"
  set_sysctl net.netfilter.nf_conntrack_max 2097152 min
else
  set_sysctl fs.file-max 4194304 min "machine-wide"
  set_sysctl net.core.rmem_max 67108864 min
  set_sysctl net.core.wmem_max 67108864 min
  set_sysctl net.core.netdev_max_backlog 300000 min
  set_sysctl net.ipv4.udp_mem "$(udp_mem 16777216)" eq "pages"
  set_sysctl net.ipv4.ip_local_port_range "1024 65535" eq
fi

# ---------------------------------------------------------------- conntrack: NOTRACK for the QUIC traffic
msg "== conntrack: NOTRACK for UDP port $PORT"
NFT_TABLE=canvas_notrack
if [[ $ROLE == server ]]; then
  pre_rule="udp dport $PORT notrack"
  out_rule="udp sport $PORT notrack"
  ipt_rules=("PREROUTING -p udp --dport $PORT -j CT --notrack" "OUTPUT -p udp --sport $PORT -j CT --notrack")
else
  pre_rule="ip saddr $SERVER_IP udp sport $PORT notrack"
  out_rule="ip daddr $SERVER_IP udp dport $PORT notrack"
  ipt_rules=("PREROUTING -s $SERVER_IP -p udp --sport $PORT -j CT --notrack"
    "OUTPUT -d $SERVER_IP -p udp --dport $PORT -j CT --notrack")
fi
if command -v nft >/dev/null 2>&1; then
  have=""
  if ! nft list tables >/dev/null 2>&1; then
    msg "nft: cannot read the ruleset (not root?): assuming the table is absent"
  else
    have=$(nft list table inet "$NFT_TABLE" 2>/dev/null || true)
  fi
  nrules=$(grep -cE '[[:space:]]notrack$' <<<"$have" || true)
  what="nft table inet $NFT_TABLE: prerouting '$pre_rule', output '$out_rule'"
  if [[ $have == *"$pre_rule"* && $have == *"$out_rule"* && $nrules == 2 ]]; then
    ok "$what"
  else
    msg "$what: $([[ -n $have ]] && echo "the table has other rules: replacing it" || echo "absent: adding it")"
    script="table inet $NFT_TABLE
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
	chain prerouting { type filter hook prerouting priority raw; policy accept; $pre_rule; }
	chain output { type filter hook output priority raw; policy accept; $out_rule; }
}"
    if run_stdin "$script" nft -f -; then changed; else failed "nft -f: could not load the NOTRACK table"; fi
  fi
elif command -v iptables >/dev/null 2>&1; then
  for r in "${ipt_rules[@]}"; do
    read -ra spec <<<"$r"
    if iptables -t raw -C "${spec[@]}" 2>/dev/null; then
      ok "iptables -t raw: $r"
    else
      msg "iptables -t raw: $r: missing: adding it"
      if run iptables -t raw -A "${spec[@]}"; then changed; else failed "iptables -t raw -A $r"; fi
    fi
  done
else
  failed "neither nft nor iptables: cannot add the NOTRACK rules (apt-get install nftables)"
fi

# ---------------------------------------------------------------- limits (nofile, memlock)
msg "== limits: $LIMITS_FILE"
if [[ $ROLE == server ]]; then
  limits="# Written by scripts/ops/tune_server.sh: open files and locked memory (AF_XDP UMEM on kernels
# before 5.11) for the canvas server. root needs its own lines: '*' does not apply to root.
# New login sessions only; for a systemd unit set LimitNOFILE=1048576 and LimitMEMLOCK=infinity.
*    soft nofile   1048576
*    hard nofile   1048576
root soft nofile   1048576
root hard nofile   1048576
*    soft memlock  unlimited
*    hard memlock  unlimited
root soft memlock  unlimited
root hard memlock  unlimited"
  limits_what="nofile 1048576, memlock unlimited"
else
  limits="# Written by scripts/ops/tune_client.sh: open files for the loadgen processes. root needs its
# own lines: '*' does not apply to root. New login sessions only; systemd: LimitNOFILE=1048576.
*    soft nofile   1048576
*    hard nofile   1048576
root soft nofile   1048576
root hard nofile   1048576"
  limits_what="nofile 1048576"
fi
if [[ -f $LIMITS_FILE && $(<"$LIMITS_FILE") == "$limits" ]]; then
  ok "$LIMITS_FILE: $limits_what -> $limits_what"
else
  msg "$LIMITS_FILE: $([[ -e $LIMITS_FILE ]] && echo "other content" || echo "absent") -> $limits_what"
  dir=$(dirname -- "$LIMITS_FILE")
  [[ -d $dir ]] || run mkdir -p -- "$dir"
  if write_file "$limits" "$LIMITS_FILE"; then changed; else failed "write $LIMITS_FILE"; fi
fi

# ---------------------------------------------------------------- CPU frequency governor
msg "== cpufreq"
shopt -s nullglob
govs=(/sys/devices/system/cpu/cpufreq/policy*/scaling_governor)
shopt -u nullglob
if ((${#govs[@]} == 0)); then
  msg "cpufreq: not exposed on this machine (a VM, or the firmware controls it): skipped"
else
  for g in "${govs[@]}"; do
    pol=${g%/scaling_governor}
    cur=$(<"$g")
    if [[ $cur == performance ]]; then
      ok "${pol##*/} governor: performance -> performance (machine-wide)"
    elif ! grep -qw performance "$pol/scaling_available_governors" 2>/dev/null; then
      msg "${pol##*/} governor: $cur -> performance: not offered by this driver: left as is"
    else
      msg "${pol##*/} governor: $cur -> performance (machine-wide)"
      if write_file performance "$g"; then changed; else failed "${pol##*/} governor: write failed"; fi
    fi
  done
fi

# ---------------------------------------------------------------- the NIC (--iface)
if [[ -n $IFACE ]]; then
  msg "== interface $IFACE"
  if [[ ! -e /sys/class/net/$IFACE ]]; then
    failed "no interface $IFACE in this network namespace"
  else
    # Ring sizes: to the hardware maximum.
    if ! command -v ethtool >/dev/null 2>&1; then
      failed "$IFACE rings: ethtool missing (apt-get install ethtool)"
    elif ! rings=$(ethtool -g "$IFACE" 2>/dev/null); then
      msg "$IFACE rings: the driver has no ring parameters (ethtool -g; e.g. veth): skipped"
    else
      args=()
      for k in RX TX; do
        max=$(ethtool_value "$rings" max $k) cur=$(ethtool_value "$rings" cur $k)
        [[ $max =~ ^[0-9]+$ && $cur =~ ^[0-9]+$ ]] || continue
        if ((cur < max)); then
          msg "$IFACE ring ${k,,}: $cur -> $max"
          args+=("${k,,}" "$max")
        else
          ok "$IFACE ring ${k,,}: $cur -> $max (the maximum)"
        fi
      done
      if ((${#args[@]})); then
        if run ethtool -G "$IFACE" "${args[@]}"; then changed; else failed "ethtool -G $IFACE ${args[*]}"; fi
      fi
    fi
    # txqueuelen: room for the GSO bursts of the io_uring path.
    cur=$(<"/sys/class/net/$IFACE/tx_queue_len")
    if ((cur >= 10000)); then
      ok "$IFACE txqueuelen: $cur -> at least 10000"
    else
      msg "$IFACE txqueuelen: $cur -> 10000"
      if run ip link set dev "$IFACE" txqueuelen 10000; then changed; else failed "ip link set $IFACE txqueuelen"; fi
    fi
  fi
fi

# ---------------------------------------------------------------- summary
msg "== summary"
msg "note: limits.d covers new login sessions; in this shell: ulimit -n 1048576$(
  [[ $ROLE == server ]] && echo "; ulimit -l unlimited")"
if ((GLOBALS)); then
  msg "$GLOBALS global setting(s) left to the root namespace: run this script there (without ip netns exec)"
fi
report_changes "" " ($OKS setting(s) already as wanted)"
if ((FAILS)); then
  msg "FAILED: $FAILS setting(s) could not be applied"
  exit 1
fi
if ((STRICT && GLOBALS)); then
  msg "FAILED (--strict): $GLOBALS global setting(s) not applied in this namespace"
  exit 1
fi
exit 0
