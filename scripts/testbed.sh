#!/usr/bin/env bash
# One-box replica of the reference network (docs: ../../shared/DESIGN.md "the testbed"; the guide's §2):
# network namespaces standing for the three machines and the Hetzner vSwitch.
#
#   ${P}-server   eth1 (veth, N rx/tx queues) + eth1.4000 (MTU 1400) 10.0.1.10/24 fd00:4000::10/64
#   ${P}-client1  eth1 (veth)                 + eth1.4000 (MTU 1400) 10.0.1.21/24 fd00:4000::21/64
#   ${P}-client2  eth1 (veth)                 + eth1.4000 (MTU 1400) 10.0.1.22/24 fd00:4000::22/64
#   ${P}-switch   br0 with the peers s-srv (N queues), s-c1, s-c2: only VLAN 4000, tagged, passes
#
# With --hosts cluster (scripts/cluster.sh: several servers sharing one canvas through NATS), six more hosts
# on the same VLAN, built the same way:
#   ${P}-server2 10.0.1.11  ${P}-server3 10.0.1.12 (N queues each)   ${P}-client3 10.0.1.23
#   ${P}-nats1   10.0.1.31  ${P}-nats2   10.0.1.32  ${P}-nats3 10.0.1.33 (fd00:4000::HOST alike)
#
# Nothing is created in the root network namespace (every veth is created inside the namespaces), nothing
# is routed out, and addresses exist only inside the namespaces. The VLAN is dual-stack: beside the guide's
# IPv4 addresses, a ULA prefix (fd00:4000::/64, never routed), added with `nodad` and with router solicitation
# and autoconfiguration off. IPv6 is disabled everywhere else in the namespaces (eth1, lo, the bridge) so the
# wire carries only what the benchmark sends (no router solicitations / MLD / DAD in an XDP program's way).
#
# VLAN 4000 is built one of two ways (--vlan, default auto = 8021q when the kernel has it, else bpf):
#   8021q  the guide's commands: `ip link add link eth1 name eth1.4000 type vlan id 4000` and a bridge with
#          `vlan_filtering 1` whose ports carry VLAN 4000 tagged (`bridge vlan add vid 4000 dev PORT`).
#   bpf    for kernels without CONFIG_VLAN_8021Q (no vlan links, no bridge VLAN filtering; this repo's
#          CI VM kernel, 6.18 without modules, is one): eth1.4000 is a macvlan in passthru mode on eth1
#          (same MAC as eth1, like a VLAN device), and tc-BPF programs do the 802.1Q work: eth1 egress pushes
#          tag 4000, eth1 ingress drops anything but VLAN 4000 and pops the tag, and every switch port drops
#          anything but VLAN 4000 (checked: untagged frames and unpopped tags do not get through). The wire
#          (host eth1 <-> switch) carries tagged frames either way, the tag as skb metadata (hw-accel
#          form) as 8021q over veth does; an XDP program on eth1 therefore finds it in the rx-vlan metadata,
#          not in the frame (expected from the kernel code, not measured here), and one on eth1.4000 sees
#          untagged frames. Needs clang (BPF target) and tc with libbpf; the program is compiled on `up`.
#
# Socket buffer caps: net.core.{r,w}mem_{max,default} are visible inside a network namespace but read-only
# there (a live view of the root namespace's values; kernel selftest net/netns-sysctl.sh), so they cannot
# be set per namespace and this script does not touch them. The server runs as root and uses
# SO_RCVBUFFORCE/SO_SNDBUFFORCE (so does the client), which ignore the caps; `status` prints them.
# Checksums: veth leaves UDP checksums partial (TX offload on); the kernel UDP path accepts them, so TX
# offload is left on; an XDP/AF_XDP receiver must not reject them as bad.
#
# Usage: scripts/testbed.sh up|down|status [--queues N] [--prefix P] [--vlan auto|8021q|bpf]
#                                          [--hosts base|cluster] [--dry-run] [--keep-on-failure]
#   up      build the testbed and verify it with pings (client1 -> server, client2 -> server,
#           client1 -> client2, 56-byte and 1372-byte DF payloads over eth1.4000). Idempotent: a complete
#           testbed is left alone (only re-verified); a partial or different one is torn down and rebuilt.
#           On failure the partial testbed is removed (unless --keep-on-failure).
#   down    stop processes left inside the namespaces (by pid: TERM, then KILL after 5 s) and delete the
#           namespaces (their veths and bridge go with them). Succeeds when nothing exists.
#   status  print every namespace with its links and addresses; exit 1 when the testbed is incomplete.
#   --hosts    base (default): server, client1, client2; cluster: also server2, server3, client3, nats1..3
#              (give the same value to up, down and status)
#   --dry-run  print the commands instead of running them (a shell script on stdout; its checks use
#              ping); the state is still read to decide what would be done. Messages go to stderr.
# Run it as root. One invocation per prefix at a time (different prefixes are independent).
# Then:  ip netns exec ${P}-server target/release/server --listen 10.0.1.10:4433 ...
#        ip netns exec ${P}-client1 target/release/client --target https://10.0.1.10:4433 ...
set -Eeuo pipefail

usage() { sed -n '/^# Usage:/,/^# Run it as root/p' "$0" | sed 's/^# \{0,1\}//'; }

CMD=""
QUEUES=2
QUEUES_SET=0
PREFIX=cv
VLAN=auto
HOSTSET=base
DRY=0
KEEP=0
while (($#)); do
  case "$1" in
    up | down | status) [[ -z $CMD ]] || { usage >&2; exit 2; }; CMD=$1 ;;
    --queues) QUEUES=${2:?--queues needs a value} QUEUES_SET=1; shift ;;
    --queues=*) QUEUES=${1#*=} QUEUES_SET=1 ;;
    --prefix) PREFIX=${2:?--prefix needs a value}; shift ;;
    --prefix=*) PREFIX=${1#*=} ;;
    --vlan) VLAN=${2:?--vlan needs a value}; shift ;;
    --vlan=*) VLAN=${1#*=} ;;
    --hosts) HOSTSET=${2:?--hosts needs a value}; shift ;;
    --hosts=*) HOSTSET=${1#*=} ;;
    --dry-run) DRY=1 ;;
    --keep-on-failure) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "testbed: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n $CMD ]] || { usage >&2; exit 2; }
if ! [[ $QUEUES =~ ^[0-9]+$ ]] || ((QUEUES < 1 || QUEUES > 256)); then
  echo "testbed: --queues must be 1..256, got '$QUEUES'" >&2; exit 2
fi
[[ $PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$ ]] || {
  echo "testbed: --prefix must match [A-Za-z0-9][A-Za-z0-9_-]{0,39}, got '$PREFIX'" >&2; exit 2; }
[[ $VLAN =~ ^(auto|8021q|bpf)$ ]] || { echo "testbed: --vlan must be auto, 8021q or bpf" >&2; exit 2; }
[[ $HOSTSET =~ ^(base|cluster)$ ]] || { echo "testbed: --hosts must be base or cluster" >&2; exit 2; }
if ((EUID != 0)) && ! ((DRY)); then
  echo "testbed: must run as root (network namespaces and links); --dry-run works without" >&2
  exit 1
fi

VID=4000
SW="$PREFIX-switch"
HOSTS=(server client1 client2)
declare -A PORT=([server]=s-srv [client1]=s-c1 [client2]=s-c2)
declare -A ADDR=([server]=10.0.1.10 [client1]=10.0.1.21 [client2]=10.0.1.22)
declare -A ADDR6=([server]=fd00:4000::10 [client1]=fd00:4000::21 [client2]=fd00:4000::22)
declare -A NQ=([server]=$QUEUES [client1]=1 [client2]=1)
if [[ $HOSTSET == cluster ]]; then
  HOSTS+=(server2 server3 client3 nats1 nats2 nats3)
  PORT+=([server2]=s-srv2 [server3]=s-srv3 [client3]=s-c3 [nats1]=s-n1 [nats2]=s-n2 [nats3]=s-n3)
  ADDR+=([server2]=10.0.1.11 [server3]=10.0.1.12 [client3]=10.0.1.23 [nats1]=10.0.1.31 [nats2]=10.0.1.32
    [nats3]=10.0.1.33)
  ADDR6+=([server2]=fd00:4000::11 [server3]=fd00:4000::12 [client3]=fd00:4000::23 [nats1]=fd00:4000::31
    [nats2]=fd00:4000::32 [nats3]=fd00:4000::33)
  NQ+=([server2]=$QUEUES [server3]=$QUEUES [client3]=1 [nats1]=1 [nats2]=1 [nats3]=1)
fi
ALL_NS=()
for h in "${HOSTS[@]}"; do ALL_NS+=("$PREFIX-$h"); done
ALL_NS+=("$SW")
ns_of() { echo "$PREFIX-$1"; }

msg() { echo "testbed: $*" >&2; }
PHASE=""
TMPD=""
cleanup_tmp() { [[ -z $TMPD ]] || rm -rf "$TMPD"; }
trap cleanup_tmp EXIT
on_err() {
  local rc=$? cmd=$BASH_COMMAND line=${BASH_LINENO[0]}
  trap - ERR
  msg "FAILED (exit $rc) at line $line: $cmd"
  abort_build
  exit "$rc"
}
trap on_err ERR
abort_build() {
  if [[ $PHASE == building ]] && ! ((DRY)); then
    if ((KEEP)); then
      msg "leaving the partial testbed for inspection (--keep-on-failure)"
      msg "remove it with: $0 down --prefix $PREFIX"
    else
      msg "removing the partial testbed (use --keep-on-failure to inspect it)"
      PHASE=""
      do_down || true
    fi
  fi
}
fail() {
  msg "$*"
  trap - ERR
  abort_build
  exit 1
}

# Run a command, or print it (shell-quoted) with --dry-run.
run() {
  if ((DRY)); then
    local out="" a
    for a in "$@"; do
      if [[ $a =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
    done
    echo "${out% }"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- state (read-only, also with --dry-run)
NS_LIST=""
refresh_ns() { NS_LIST=$'\n'"$(ip netns list 2>/dev/null | awk '{print $1}')"$'\n'; }
ns_exists() { [[ $NS_LIST == *$'\n'"$1"$'\n'* ]]; }
# One line per link (`ip -o -d`), empty when absent or not readable.
link_of() { ip -n "$1" -d -o link show dev "$2" 2>/dev/null || true; }
flags_of() { [[ $1 =~ \<([^>]*)\> ]] && echo ",${BASH_REMATCH[1]}," || echo ""; }
is_up() { [[ $(flags_of "$1") == *,UP,* ]]; }
has() { [[ $1 == *"$2"* ]]; }

kernel_has_8021q() {
  [[ -d /proc/net/vlan ]] && return 0
  if ((DRY)); then
    { zcat /proc/config.gz 2>/dev/null || true; } | grep -q '^CONFIG_VLAN_8021Q=m' && return 0
    return 1
  fi
  command -v modprobe >/dev/null 2>&1 && modprobe -q 8021q 2>/dev/null && [[ -d /proc/net/vlan ]]
}

# The mode an existing testbed was built with (from the server's eth1.4000), or "".
existing_mode() {
  local l
  l=$(link_of "$PREFIX-server" eth1.4000)
  if has "$l" "vlan protocol 802.1Q"; then echo 8021q; elif has "$l" "macvlan"; then echo bpf; fi
}

resolve_mode() {
  case "$VLAN" in
    8021q | bpf) echo "$VLAN" ;;
    auto) if kernel_has_8021q; then echo 8021q; else echo bpf; fi ;;
  esac
}

# Checks that the testbed is complete for MODE; fills REASONS. Returns 0 when complete.
REASONS=()
bad() { REASONS+=("$*"); }
# present NS DEV [WHAT]: sets l (check's) to DEV's line in NS; false, with a reason, when DEV is missing.
present() {
  l=$(link_of "$1" "$2")
  [[ -n $l ]] || { bad "$1: ${3:-$2} missing"; return 1; }
}
check() {
  local mode=$1 ns h n p l q a
  REASONS=()
  refresh_ns
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" || bad "namespace $ns missing"; done
  ((${#REASONS[@]} == 0)) || return 1
  for ns in "${ALL_NS[@]}"; do is_up "$(link_of "$ns" lo)" || bad "$ns: lo is not up"; done
  if present "$SW" br0; then
    has "$l" " bridge " || bad "$SW: br0 is not a bridge"
    is_up "$l" || bad "$SW: br0 is not up"
    [[ $mode != 8021q ]] || has "$l" "vlan_filtering 1" || bad "$SW: br0 has no vlan_filtering"
  fi
  for h in "${HOSTS[@]}"; do
    n=$(ns_of "$h") p=${PORT[$h]} q=${NQ[$h]} a=${ADDR[$h]}
    if present "$SW" "$p" "port $p"; then
      has "$l" " veth " || bad "$SW: $p is not a veth"
      has "$l" "master br0" || bad "$SW: $p is not a port of br0"
      is_up "$l" || bad "$SW: $p is not up"
      has "$l" "link-netns $n " || bad "$SW: $p's peer is not in $n"
      has "$l" "numtxqueues $q numrxqueues $q " || bad "$SW: $p does not have $q rx/tx queues"
      if [[ $mode == 8021q ]]; then
        local v
        v=$(bridge -n "$SW" vlan show dev "$p" 2>/dev/null || true)
        [[ $v =~ (^|[[:space:]])$VID([[:space:]]|$) && $v != *Untagged* ]] ||
          bad "$SW: $p does not carry VLAN $VID tagged"
      else
        has "$(tc -n "$SW" filter show dev "$p" ingress 2>/dev/null || true)" port_ingress ||
          bad "$SW: $p has no VLAN $VID filter (tc ingress port_ingress)"
      fi
    fi
    if present "$n" eth1; then
      has "$l" " veth " || bad "$n: eth1 is not a veth"
      is_up "$l" || bad "$n: eth1 is not up"
      has "$l" " mtu 1500 " || bad "$n: eth1 MTU is not 1500"
      has "$l" "link-netns $SW " || bad "$n: eth1's peer is not in $SW"
      has "$l" "numtxqueues $q numrxqueues $q " || bad "$n: eth1 does not have $q rx/tx queues"
      if [[ $mode == bpf ]]; then
        has "$(tc -n "$n" filter show dev eth1 egress 2>/dev/null || true)" host_egress ||
          bad "$n: eth1 has no VLAN $VID tagging (tc egress host_egress)"
        has "$(tc -n "$n" filter show dev eth1 ingress 2>/dev/null || true)" host_ingress ||
          bad "$n: eth1 has no VLAN $VID untagging (tc ingress host_ingress)"
      fi
    fi
    if present "$n" "eth1.$VID"; then
      has "$l" "eth1.$VID@eth1:" || bad "$n: eth1.$VID is not on eth1"
      is_up "$l" || bad "$n: eth1.$VID is not up"
      has "$l" " mtu 1400 " || bad "$n: eth1.$VID MTU is not 1400"
      if [[ $mode == 8021q ]]; then
        has "$l" "vlan protocol 802.1Q id $VID " || bad "$n: eth1.$VID is not an 802.1Q VLAN $VID link"
      else
        has "$l" "macvlan mode passthru" || bad "$n: eth1.$VID is not a passthru macvlan (--vlan bpf)"
      fi
      local got
      got=$(ip -n "$n" -4 -o addr show dev "eth1.$VID" 2>/dev/null | awk '{print $4}' | tr '\n' ' ' || true)
      [[ $got == "$a/24 " ]] || bad "$n: eth1.$VID has '${got% }', expected $a/24 only"
      if [[ -d /proc/sys/net/ipv6 ]]; then
        got=$(ip -n "$n" -6 -o addr show dev "eth1.$VID" scope global 2>/dev/null | awk '{print $4}' |
          tr '\n' ' ' || true)
        [[ $got == "${ADDR6[$h]}/64 " ]] || bad "$n: eth1.$VID has IPv6 '${got% }', expected ${ADDR6[$h]}/64 only"
      fi
    fi
  done
  ((${#REASONS[@]} == 0))
}

# ---------------------------------------------------------------- down
do_down() {
  local ns pids p any=0 i
  refresh_ns
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    any=1
    if ! ((DRY)); then
      pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
      if [[ -n ${pids// /} ]]; then
        msg "stopping processes still in $ns: $pids(SIGTERM)"
        for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
        for ((i = 0; i < 50; i++)); do
          pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
          [[ -n ${pids// /} ]] || break
          sleep 0.1
        done
        if [[ -n ${pids// /} ]]; then
          msg "still alive after 5 s in $ns: $pids(SIGKILL)"
          for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
        fi
      fi
    fi
    run ip netns del "$ns"
  done
  if ((any)); then msg "testbed '$PREFIX' removed"; else msg "testbed '$PREFIX': nothing to remove"; fi
}

# ---------------------------------------------------------------- up
BPF_SRC='// 802.1Q VLAN for kernels without 8021q: tc direct-action programs (no headers needed).
typedef unsigned short __u16;
typedef unsigned int __u32;
struct __sk_buff { /* UAPI prefix of struct __sk_buff */
  __u32 len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto;
};
#define SEC(n) __attribute__((section(n), used))
#define BE16(x) ((__u16)__builtin_bswap16(x))
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_8021Q 0x8100
static long (*skb_vlan_push)(struct __sk_buff *, __u16, __u16) = (void *)18; /* BPF_FUNC_skb_vlan_push */
static long (*skb_vlan_pop)(struct __sk_buff *) = (void *)19;                /* BPF_FUNC_skb_vlan_pop */
/* At tc ingress the kernel has already moved an in-band tag into the skb metadata. */
static int ours(struct __sk_buff *s) {
  return s->vlan_present && s->vlan_proto == BE16(ETH_P_8021Q) && (s->vlan_tci & 0x0fff) == VID;
}
/* host eth1 egress: tag everything that is not tagged yet (what eth1.VID sends). */
SEC("tc/host_egress") int host_egress(struct __sk_buff *s) {
  if (s->vlan_present || s->protocol == BE16(ETH_P_8021Q)) return TC_ACT_OK;
  return skb_vlan_push(s, BE16(ETH_P_8021Q), VID) ? TC_ACT_SHOT : TC_ACT_OK;
}
/* host eth1 ingress: only VLAN VID, untagged for eth1.VID. */
SEC("tc/host_ingress") int host_ingress(struct __sk_buff *s) {
  if (!ours(s)) return TC_ACT_SHOT;
  return skb_vlan_pop(s) ? TC_ACT_SHOT : TC_ACT_OK;
}
/* switch port ingress: the vSwitch carries VLAN VID only, tagged. */
SEC("tc/port_ingress") int port_ingress(struct __sk_buff *s) { return ours(s) ? TC_ACT_OK : TC_ACT_SHOT; }
char _license[] SEC("license") = "GPL";'

build_bpf() {
  command -v clang >/dev/null 2>&1 || fail "--vlan bpf needs clang (scripts/setup.sh installs it)"
  command -v tc >/dev/null 2>&1 || fail "--vlan bpf needs tc (iproute2)"
  if ((DRY)); then
    BPF_OBJ=/tmp/testbed-vlan$VID.o
    echo "cat > /tmp/testbed-vlan$VID.c <<'EOF'"
    echo "$BPF_SRC"
    echo "EOF"
    run clang -O2 -g -target bpf -DVID=$VID -c /tmp/testbed-vlan$VID.c -o "$BPF_OBJ"
  else
    TMPD=$(mktemp -d)
    BPF_OBJ=$TMPD/vlan$VID.o
    printf '%s\n' "$BPF_SRC" >"$TMPD/vlan$VID.c"
    clang -O2 -g -target bpf -DVID=$VID -c "$TMPD/vlan$VID.c" -o "$BPF_OBJ" ||
      fail "compiling the VLAN tc program failed (clang -target bpf)"
  fi
}

build() {
  local mode=$1 ns h n p q a
  [[ $mode != bpf ]] || build_bpf
  for ns in "${ALL_NS[@]}"; do
    run ip netns add "$ns"
    if [[ -d /proc/sys/net/ipv6 ]]; then
      run ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    fi
    run ip -n "$ns" link set lo up
  done
  if [[ $mode == 8021q ]]; then
    run ip -n "$SW" link add br0 type bridge vlan_filtering 1 vlan_default_pvid 0
  else
    run ip -n "$SW" link add br0 type bridge
  fi
  run ip -n "$SW" link set br0 up
  for h in "${HOSTS[@]}"; do
    n=$(ns_of "$h") p=${PORT[$h]} q=${NQ[$h]} a=${ADDR[$h]}
    run ip -n "$n" link add eth1 numtxqueues "$q" numrxqueues "$q" type veth \
      peer name "$p" netns "$SW" numtxqueues "$q" numrxqueues "$q"
    run ip -n "$SW" link set "$p" master br0
    if [[ $mode == 8021q ]]; then
      run bridge -n "$SW" vlan add vid $VID dev "$p"
    else
      run tc -n "$SW" qdisc add dev "$p" clsact
      run tc -n "$SW" filter add dev "$p" ingress bpf direct-action obj "$BPF_OBJ" sec tc/port_ingress
    fi
    run ip -n "$SW" link set "$p" up
    run ip -n "$n" link set eth1 mtu 1500 up
    if [[ $mode == 8021q ]]; then
      run ip -n "$n" link add link eth1 name eth1.$VID type vlan id $VID
    else
      run ip -n "$n" link add link eth1 name eth1.$VID type macvlan mode passthru
      run tc -n "$n" qdisc add dev eth1 clsact
      run tc -n "$n" filter add dev eth1 egress bpf direct-action obj "$BPF_OBJ" sec tc/host_egress
      run tc -n "$n" filter add dev eth1 ingress bpf direct-action obj "$BPF_OBJ" sec tc/host_ingress
    fi
    run ip -n "$n" link set eth1.$VID mtu 1400 up
    run ip -n "$n" addr add "$a/24" dev eth1.$VID
    if [[ -d /proc/sys/net/ipv6 ]]; then
      # Dual stack on the VLAN only: no router solicitations, no autoconfiguration, no DAD.
      run ip netns exec "$n" sysctl -q -w "net.ipv6.conf.eth1/$VID.accept_ra=0" \
        "net.ipv6.conf.eth1/$VID.router_solicitations=0" "net.ipv6.conf.eth1/$VID.autoconf=0" \
        "net.ipv6.conf.eth1/$VID.disable_ipv6=0"
      run ip -n "$n" addr add "${ADDR6[$h]}/64" dev eth1.$VID nodad
    fi
  done
}

# ICMP echo over a device with DF set, for boxes without iputils-ping (root: raw socket).
PY_PING='import os, socket, struct, sys, time
dst, dev, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b + b"\0" * (len(b) % 2)))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.SOL_SOCKET, 25, dev.encode())  # SO_BINDTODEVICE
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF, never fragment
ident, body = os.getpid() & 0xFFFF, bytes(size)
s.sendto(struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + body), ident, 1) + body, (dst, 0))
end = time.monotonic() + 1.0
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        pkt, (src, _) = s.recvfrom(65535)
    except socket.timeout:
        break
    ihl = (pkt[0] & 15) * 4
    t, _, _, i, q = struct.unpack("!BBHHH", pkt[ihl : ihl + 8])
    if src == dst and t == 0 and i == ident and q == 1:
        sys.exit(0)
sys.exit(1)'

ping_once() { # ns dst payload-bytes (IPv4 or IPv6; DF either way: IPv6 never fragments on the path;
  # the python3 fallback sends IPv4 only, verify() requires ping for IPv6)
  local v6=()
  [[ $2 != *:* ]] || v6=(-6)
  if ((DRY)); then
    command -v ping >/dev/null 2>&1 || echo "# no ping here: the script sends IPv4 ones with an embedded python3 ICMP echo"
  fi
  if ((DRY)) || command -v ping >/dev/null 2>&1; then
    run ip netns exec "$1" ping "${v6[@]}" -n -q -c 1 -W 1 -M "do" -s "$3" -I eth1.$VID "$2"
  else
    run ip netns exec "$1" python3 -c "$PY_PING" "$2" eth1.$VID "$3"
  fi
}

verify() {
  local check from to size i ok
  if ! command -v ping >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
    fail "cannot verify: neither ping (iputils-ping) nor python3 is installed"
  fi
  # 56 bytes, then the guide's MTU check (§2.5) with DF: 1372 + 8 ICMP + 20 IP = 1400, and over IPv6
  # 1352 + 8 ICMPv6 + 40 IPv6 = 1400.
  local checks=()
  local pairs=("client1 ${ADDR[server]}" "client2 ${ADDR[server]}" "client1 ${ADDR[client2]}")
  if [[ $HOSTSET == cluster ]]; then
    pairs+=("client3 ${ADDR[server3]}" "client2 ${ADDR[server2]}" "server ${ADDR[nats1]}"
      "server2 ${ADDR[nats2]}" "server3 ${ADDR[nats3]}" "nats1 ${ADDR[nats2]}" "nats2 ${ADDR[nats3]}"
      "nats3 ${ADDR[nats1]}")
  fi
  for to in "${pairs[@]}"; do
    checks+=("$to 56" "$to 1372")
  done
  if [[ -d /proc/sys/net/ipv6 ]]; then
    ((DRY)) || command -v ping >/dev/null 2>&1 || fail "cannot verify IPv6: ping (iputils-ping) is not installed"
    for to in "client1 ${ADDR6[server]}" "client2 ${ADDR6[server]}"; do checks+=("$to 56" "$to 1352"); done
  fi
  for check in "${checks[@]}"; do
    read -r from to size <<<"$check"
    if ((DRY)); then ping_once "$(ns_of "$from")" "$to" "$size"; continue; fi
    ok=0
    for ((i = 0; i < 10; i++)); do # bounded: at most ~12 s (the first tries also resolve ARP / ND)
      if ping_once "$(ns_of "$from")" "$to" "$size" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.2
    done
    ((ok)) || fail "VERIFY FAILED: no echo reply from $to to $from over eth1.$VID (payload $size, DF)"
  done
  ((DRY)) || msg "verified: client1 -> ${ADDR[server]}, client2 -> ${ADDR[server]}," \
    "client1 -> ${ADDR[client2]}$([[ $HOSTSET == cluster ]] && echo ", the cluster hosts (each server and client3 -> its peer, each nats -> the next)") (56 and 1372-byte DF pings over eth1.$VID)" \
    "$([[ -d /proc/sys/net/ipv6 ]] && echo "and client1, client2 -> ${ADDR6[server]} (56 and 1352 bytes)")"
}

do_up() {
  local mode existing r
  refresh_ns
  mode=$(resolve_mode)
  if [[ $mode == 8021q ]] && ! kernel_has_8021q; then
    local why="this kernel has no 802.1Q VLAN support (CONFIG_VLAN_8021Q)"
    if ((DRY)); then
      msg "warning: $why: these commands would fail here"
    else
      fail "--vlan 8021q: $why; use --vlan bpf or auto"
    fi
  fi
  if check "$mode"; then
    msg "testbed '$PREFIX' already up and complete (vlan: $mode, server queues: $QUEUES): nothing to do"
    verify
    return 0
  fi
  local any=0 ns
  for ns in "${ALL_NS[@]}"; do ! ns_exists "$ns" || any=1; done
  if ((any)); then
    existing=$(existing_mode)
    msg "testbed '$PREFIX' exists but is incomplete or different${existing:+ (built with vlan: $existing)}; rebuilding:"
    for r in "${REASONS[@]}"; do msg "  - $r"; done
    do_down
  fi
  msg "building testbed '$PREFIX' (vlan: $mode, server queues: $QUEUES)"
  if ((DRY)); then msg "dry run: printing the commands on stdout, running none"; fi
  PHASE=building
  build "$mode"
  if ! ((DRY)); then
    check "$mode" || {
      for r in "${REASONS[@]}"; do msg "  - $r"; done
      fail "built, but the testbed is not complete (see above)"
    }
  fi
  verify
  PHASE=""
  ((DRY)) || msg "testbed '$PREFIX' up: ${ALL_NS[*]}"
}

# ---------------------------------------------------------------- status
do_status() {
  local ns mode r v
  refresh_ns
  mode=$(existing_mode)
  [[ $VLAN == auto ]] || mode=$VLAN
  [[ -n $mode ]] || mode=$(resolve_mode)
  if ! ((QUEUES_SET)); then # expect what the server's eth1 was built with
    if [[ $(link_of "$PREFIX-server" eth1) =~ numrxqueues\ ([0-9]+) ]]; then
      QUEUES=${BASH_REMATCH[1]} NQ[server]=${BASH_REMATCH[1]}
    fi
  fi
  for ns in "${ALL_NS[@]}"; do
    if ! ns_exists "$ns"; then
      echo "== $ns: missing"
      continue
    fi
    echo "== $ns"
    { ip -n "$ns" -br link show || true; } | sed "s/^/   /"
    { ip -n "$ns" -br addr show scope global || true; } | sed "s/^/   /"
    if [[ $ns == "$SW" ]]; then
      if [[ $mode == 8021q ]]; then
        { bridge -n "$ns" vlan show || true; } | sed 's/^/   /'
      else
        for v in "${PORT[@]}"; do
          r=$({ tc -n "$ns" filter show dev "$v" ingress 2>/dev/null || true; } | { grep -o 'tc/[a-z_]*' || true; })
          echo "   $v ingress: ${r:-(none)}"
        done
      fi
    else
      v=$(link_of "$ns" eth1)
      [[ $v =~ (numtxqueues [0-9]+ numrxqueues [0-9]+) ]] && echo "   eth1: ${BASH_REMATCH[1]}"
    fi
  done
  if ns_exists "$PREFIX-server"; then
    echo "== sysctls in $PREFIX-server (read-only there: a view of the root namespace's values)"
    for v in rmem_max wmem_max rmem_default wmem_default; do
      echo "   net.core.$v = $(ip netns exec "$PREFIX-server" cat /proc/sys/net/core/$v 2>/dev/null || echo n/a)"
    done
  fi
  if check "$mode"; then
    echo "testbed '$PREFIX': complete (vlan: $mode, server queues: $QUEUES)"
    return 0
  fi
  echo "testbed '$PREFIX': INCOMPLETE (vlan: $mode, server queues: $QUEUES):"
  for r in "${REASONS[@]}"; do echo "  - $r"; done
  return 1
}

case "$CMD" in
  up) do_up ;;
  down) do_down ;;
  status) if do_status; then exit 0; else exit 1; fi ;;
esac
