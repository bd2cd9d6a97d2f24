#!/usr/bin/env bash
# verify_network.sh: check a box of the reference network before a benchmark (the reference guide's §2.5
# "Verify Connectivity", corrected and extended with what the server needs): the interface and its
# address, the MTU along the path (DF pings of the interface MTU), the VLAN, the peers' reachability and
# latency, XDP programs attached, rp_filter, the served UDP port, and the sysctls/conntrack rules/huge pages
# the tuning scripts set. Prints one PASS/WARN/FAIL line per check; exits 1 when any check FAILs.
#
# Corrections to the guide: it ran from client 1 only and checked nothing on the server; `nc -u -z` cannot
# tell an open UDP port from a closed one (UDP has no handshake: it reports "open" whenever no ICMP error
# comes back), so the port is checked locally with ss instead; "ping < 0.5 ms" says nothing about the MTU:
# DF pings of the interface MTU do (a VLAN MTU above what the vSwitch carries drops large QUIC packets
# silently); iperf3 is left to the guide (it needs a server on the other end).
#
# Packages (Debian): iputils-ping (ping), iproute2 (ip, ss, tc). Installed with `apt-get install -y -qq`
# when missing (as root, not --dry-run). Runs in the current network namespace; changes nothing.
set -euo pipefail

PROG=verify_network
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
declare -A PKG_OF=([ping]=iputils-ping [ip]=iproute2 [ss]=iproute2 [tc]=iproute2)

usage() {
  cat <<'EOF'
Usage: verify_network.sh [--iface IF] [--peer IP]... [--port PORT] [--dry-run]
       verify_network.sh --install-deps | --help
Check the network of this box: interface, address, MTU (DF pings of the interface MTU to each peer),
VLAN, peer reachability and latency, XDP programs, rp_filter, the UDP port, and the sysctls, NOTRACK rules
and huge pages the server wants. One PASS/WARN/FAIL line per check; read-only.
  --iface IF      the benchmark interface (default eth1.4000)
  --peer IP       a peer to check (repeatable; default: the other reference hosts of 10.0.1.10/.21/.22
                  when IF has one of those addresses)
  --port PORT     the server's UDP port (default 4433)
  --dry-run       print the probe commands (pings) instead of running them; the passive checks still run
  --install-deps  install the packages this script uses (iputils-ping iproute2) and exit
Exit: 0 no FAIL (WARNs allowed), 1 at least one FAIL, 2 usage.
EOF
}

is_ipv4() { [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; }

DRY=0
IFACE=eth1.4000
PEERS=()
PORT=4433
INSTALL_ONLY=0
while (($#)); do
  case "$1" in
    --iface) val "$@"; IFACE=$2; shift ;;
    --iface=*) IFACE=${1#*=} ;;
    --peer) val "$@"; PEERS+=("$2"); shift ;;
    --peer=*) PEERS+=("${1#*=}") ;;
    --port) val "$@"; PORT=$2; shift ;;
    --port=*) PORT=${1#*=} ;;
    *) common_opt "$1" ;;
  esac
  shift
done
check_iface "$IFACE"
check_port "$PORT"
for p in "${PEERS[@]}"; do is_ipv4 "$p" || usage_err "--peer must be an IPv4 address, got '$p'"; done

# ip ss tc before ping: install_pkgs names the packages in that order (iproute2 iputils-ping), as before.
((!INSTALL_ONLY)) || install_deps_and_exit --root "iputils-ping iproute2" ip ss tc ping
install_pkgs ip ss tc ping || true

NPASS=0 NWARN=0 NFAIL=0
pass() {
  printf 'PASS %s\n' "$*"
  NPASS=$((NPASS + 1))
}
warn() {
  printf 'WARN %s\n' "$*"
  NWARN=$((NWARN + 1))
}
fail() {
  printf 'FAIL %s\n' "$*"
  NFAIL=$((NFAIL + 1))
}
# probe CMD...: print it (`+ cmd`); run it unless --dry-run (then return 125 = not run).
probe() {
  printf '+ %s\n' "$*"
  ((DRY)) && return 125
  "$@"
}
sysctl_val() { local f=/proc/sys/${1//.//}; [[ -r $f ]] && tr -s ' \t' '  ' <"$f"; }

((DRY)) && msg "dry run: printing the probe commands instead of running them"
ns=$(ip netns identify 2>/dev/null || true)
msg "checking $IFACE${ns:+ in network namespace $ns}"

# ---------------------------------------------------------------- interface, address
link=$(ip -d -o link show dev "$IFACE" 2>/dev/null || true)
if [[ -z $link ]]; then
  fail "interface: no $IFACE in this network namespace (ip link show: $(ip -br link show | awk '{print $1}' | tr '\n' ' '))"
  msg "$NPASS PASS, $NWARN WARN, $NFAIL FAIL"
  exit 1
fi
flags=""
[[ $link =~ \<([^>]*)\> ]] && flags=",${BASH_REMATCH[1]},"
parent=""
[[ $link =~ ^[0-9]+:\ [^@:]+@([^:]+): ]] && parent=${BASH_REMATCH[1]}
[[ $parent == if* || $parent == NONE ]] && parent="" # a veth's peer index, not a parent
if [[ $flags != *,UP,* ]]; then
  fail "interface: $IFACE is down (ip link set dev $IFACE up)"
elif [[ $flags != *,LOWER_UP,* ]]; then
  fail "interface: $IFACE is up but has no carrier (LOWER_UP missing${parent:+: check $parent})"
else
  pass "interface: $IFACE is up${parent:+ (on $parent)}"
fi
mapfile -t addrs < <(ip -4 -o addr show dev "$IFACE" | awk '{print $4}')
if ((${#addrs[@]} == 0)); then
  fail "address: $IFACE has no IPv4 address (the reference: 10.0.1.10/24 on the server, .21/.22 on the clients)"
else
  pass "address: $IFACE has ${addrs[*]}"
fi
if ((${#PEERS[@]} == 0)); then
  for a in "${addrs[@]}"; do
    case "${a%/*}" in
      10.0.1.10) PEERS=(10.0.1.21 10.0.1.22) ;;
      10.0.1.21) PEERS=(10.0.1.10 10.0.1.22) ;;
      10.0.1.22) PEERS=(10.0.1.10 10.0.1.21) ;;
    esac
  done
  ((${#PEERS[@]})) && msg "peers (the reference hosts): ${PEERS[*]}"
fi

# ---------------------------------------------------------------- MTU, VLAN
mtu=$(awk '{for (i = 1; i < NF; i++) if ($i == "mtu") {print $(i + 1); exit}}' <<<"$link")
if ((mtu < 1228)); then
  fail "mtu: $IFACE MTU $mtu is below 1228 (QUIC needs 1200-byte UDP payloads over IPv4)"
elif ((mtu > 1400)) && [[ $IFACE == *.* || $link == *" vlan "* ]]; then
  warn "mtu: $IFACE MTU $mtu: the reference vSwitch VLAN carries at most 1400 (guide §2.4); DF pings below tell"
else
  pass "mtu: $IFACE MTU $mtu"
fi
if [[ -n $parent ]]; then
  pmtu=$(ip -o link show dev "$parent" 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "mtu") {print $(i + 1); exit}}')
  if [[ -n $pmtu ]] && ((pmtu < mtu)); then
    fail "mtu: parent $parent MTU $pmtu is below $IFACE's $mtu"
  elif [[ -n $pmtu ]]; then
    pass "mtu: parent $parent MTU $pmtu >= $mtu"
  fi
fi
has_bpf_tagging() { # DEV: tc BPF filters on both its egress and ingress (the testbed's --vlan bpf)
  [[ $(tc filter show dev "$1" egress 2>/dev/null || true) == *bpf* &&
    $(tc filter show dev "$1" ingress 2>/dev/null || true) == *bpf* ]]
}
if [[ $link =~ vlan\ protocol\ (802\.1[Qq]|802\.1ad)\ id\ ([0-9]+) ]]; then
  pass "vlan: $IFACE is ${BASH_REMATCH[1]} VLAN ${BASH_REMATCH[2]} on ${parent:-?}"
elif [[ $IFACE =~ ^(.+)\.([0-9]{1,4})$ && -n $parent ]] && has_bpf_tagging "$parent"; then
  pass "vlan: $IFACE: VLAN ${BASH_REMATCH[2]} tagged and untagged by tc-BPF programs on $parent" \
    "($(grep -o 'macvlan mode [a-z]*' <<<"$link" || echo "not an 802.1Q device"); the testbed's --vlan bpf)"
else
  kids=$(ip -d -o link show 2>/dev/null | grep "@$IFACE:" | grep -o 'vlan protocol 802.1Q id [0-9]*' |
    awk '{print $NF}' | tr '\n' ' ' || true)
  if [[ -n $kids ]]; then
    pass "vlan: $IFACE carries VLAN(s) ${kids% } (802.1Q devices on it)"
  elif has_bpf_tagging "$IFACE"; then
    pass "vlan: $IFACE tags and untags with tc-BPF programs (the testbed's --vlan bpf)"
  else
    warn "vlan: no VLAN on $IFACE (the reference network is VLAN 4000 on eth1: eth1.4000; fine on an untagged network)"
  fi
fi

# ---------------------------------------------------------------- peers: route, reachability, path MTU
for peer in "${PEERS[@]}"; do
  route=$(ip route get "$peer" 2>/dev/null | head -1 || true)
  rdev=$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}' <<<"$route")
  if [[ -z $rdev ]]; then
    fail "route: no route to $peer"
    continue
  elif [[ $rdev != "$IFACE" ]]; then
    warn "route: $peer is reached via $rdev, not $IFACE"
  fi
  set +e
  out=$(probe ping -n -q -c 3 -i 0.2 -W 1 "$peer" 2>&1)
  rc=$?
  set -e
  if ((rc == 125)); then
    echo "$out"
  elif ((rc != 0)); then
    fail "reach: $peer does not answer pings from $IFACE ($(grep -o '[0-9.]*% packet loss' <<<"$out" || echo "ping exit $rc"))"
    continue
  else
    loss=$(grep -o '[0-9.]*% packet loss' <<<"$out" || true)
    avg=$(grep -oE '= [0-9.]+/[0-9.]+/' <<<"$out" | cut -d/ -f2 || true)
    if [[ $loss != "0% packet loss" ]]; then
      warn "reach: $peer answers, with $loss"
    elif [[ -n $avg ]] && awk -v a="$avg" 'BEGIN {exit !(a > 0.5)}'; then
      warn "reach: $peer answers, rtt avg $avg ms (same-DC vSwitch: expect < 0.5 ms)"
    else
      pass "reach: $peer answers, rtt avg ${avg:-?} ms"
    fi
  fi
  size=$((mtu - 28))
  set +e
  out=$(probe ping -n -q -M "do" -s "$size" -c 1 -W 1 "$peer" 2>&1)
  rc=$?
  set -e
  if ((rc == 125)); then
    echo "$out"
  elif ((rc == 0)); then
    pass "path mtu: a DF packet of $mtu bytes ($size-byte payload) reaches $peer"
  else
    set +e
    small=$(ping -n -q -M "do" -s 1200 -c 1 -W 1 "$peer" 2>&1)
    src=$?
    set -e
    if ((src == 0)); then
      fail "path mtu: a DF packet of $mtu bytes does not reach $peer, one of 1228 does: the path MTU is below" \
        "$IFACE's $mtu (lower it: the reference VLAN MTU is 1400)"
    else
      fail "path mtu: DF packets of $mtu and of 1228 bytes do not reach $peer ($(tail -1 <<<"$small"))"
    fi
  fi
done
((${#PEERS[@]})) || warn "reach: no peer given (--peer IP) and no reference address on $IFACE: reachability not checked"

# ---------------------------------------------------------------- XDP
listener=$(ss -Hulpn "sport = :$PORT" 2>/dev/null | head -1 || true)
for dev in "$IFACE" ${parent:+"$parent"}; do
  l=$(ip -d -o link show dev "$dev" 2>/dev/null || true)
  if [[ $l =~ prog/(xdp[a-z]*)\ id\ ([0-9]+)(\ name\ ([^ ]+))? ]]; then
    kind=${BASH_REMATCH[1]} id=${BASH_REMATCH[2]} name=${BASH_REMATCH[4]:-?}
    if [[ $name == canvas_xdp && $listener == *'"server"'* ]]; then
      pass "xdp: $dev has the server's program ($name, id $id, $kind) and the server listens on UDP $PORT"
    else
      warn "xdp: $dev has an XDP program attached ($name, id $id, $kind) and no server listens on UDP $PORT:" \
        "server --mode xdp refuses an interface that already has one (a stale program? ip link set dev $dev xdp off)"
    fi
  else
    pass "xdp: no XDP program on $dev (server --mode xdp attaches its own at start)"
  fi
done

# ---------------------------------------------------------------- rp_filter
rp_all=$(sysctl_val net.ipv4.conf.all.rp_filter || echo 0)
rp_if=$(cat "/proc/sys/net/ipv4/conf/$IFACE/rp_filter" 2>/dev/null || echo 0)
rp=$((rp_all > rp_if ? rp_all : rp_if))
case $rp in
  0) pass "rp_filter: off (all=$rp_all, $IFACE=$rp_if)" ;;
  2) pass "rp_filter: loose (all=$rp_all, $IFACE=$rp_if)" ;;
  *)
    bad=""
    for peer in "${PEERS[@]}"; do
      d=$(ip route get "$peer" 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
      [[ $d == "$IFACE" ]] || bad+="$peer "
    done
    if [[ -z $bad ]]; then
      pass "rp_filter: strict (all=$rp_all, $IFACE=$rp_if), and the peers are routed via $IFACE"
    else
      warn "rp_filter: strict, but ${bad% } not routed via $IFACE: their packets would be dropped (rp_filter=2)"
    fi
    ;;
esac

# ---------------------------------------------------------------- the UDP port
if [[ -z $listener ]]; then
  pass "udp port: $PORT is free (the server can bind it)"
elif [[ $listener == *'"server"'* ]]; then
  pass "udp port: $PORT is bound by the server ($(grep -o 'pid=[0-9]*' <<<"$listener" | head -1))"
else
  warn "udp port: $PORT is bound by another process: $(grep -o 'users:.*' <<<"$listener")"
fi

# ---------------------------------------------------------------- what the server wants
# at_least KEY WANT UNREADABLE LOW: PASS when sysctl KEY >= WANT; else the line UNREADABLE ("pass|warn
# TEXT") when it cannot be read here, or a WARN that it is lower, followed by LOW.
at_least() {
  local v
  v=$(sysctl_val "$1" || true)
  if [[ -z $v ]]; then
    "${3%% *}" "sysctl: $1 ${3#* }"
  elif ((v >= $2)); then
    pass "sysctl: $1 = $v (>= $2)"
  else
    warn "sysctl: $1 = $v < $2$4"
  fi
}
low=": socket buffers above it need root (the server then forces them); tune_server.sh sets it (global:"
for k in net.core.rmem_max net.core.wmem_max; do
  at_least "$k" 67108864 "warn not readable here" "$low in the root namespace)"
done
at_least net.core.netdev_max_backlog 300000 \
  "pass is global (not visible in this network namespace): check it in the root namespace" " (tune_server.sh)"
if [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; then
  rules=""
  if command -v nft >/dev/null 2>&1; then rules+=$(nft list ruleset 2>/dev/null || true); fi
  if command -v iptables-save >/dev/null 2>&1; then rules+=$(iptables-save -t raw 2>/dev/null || true); fi
  nft_re="(dport|sport) ${PORT}[^0-9].*notrack" ipt_re="-(dport|sport) ${PORT} .*(NOTRACK|--notrack)"
  if [[ $rules =~ $nft_re || $rules =~ $ipt_re ]]; then
    pass "conntrack: NOTRACK rule for UDP $PORT present"
  else
    warn "conntrack: no NOTRACK rule for UDP $PORT: every QUIC flow takes a conntrack entry (tune_server.sh adds them)"
  fi
fi
nr=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if ((nr > 0)); then
  pass "hugepages: $nr reserved, $free free (2 MiB pages for the UMEM and the canvas)"
else
  warn "hugepages: none reserved: the server falls back to 4 KiB pages (hugepages.sh reserve N; 8 per queue + the canvas)"
fi

msg "$NPASS PASS, $NWARN WARN, $NFAIL FAIL (read-only checks: nothing to change, nothing changed)"
if ((NFAIL)); then exit 1; fi
exit 0
