#!/usr/bin/env bash
# Server CPU per message in each datapath at the same offered load, on the testbed: for each of xdp-native
# (eth1 + VLAN 4000 in the program), xdp-generic (eth1.4000) and uring, starts the server in the server
# namespace, runs the same seeded loadgen in both client namespaces, and reads:
#   - the server process's user+system CPU (/proc/PID/stat) over the run,
#   - the box's softirq CPU (/proc/stat, all CPUs) over the run: XDP and the kernel UDP stack run there, on
#     whichever CPU the frame arrived (for veth: the sender's), so it is the same order for both sides and is
#     reported separately rather than guessed per process,
#   - datagrams in + out from the server's --stats-json.
# Prints a markdown table; the ratios are within one run of this script.
# Knobs: CLIENTS per namespace (default 500), DURATION s (default 20), QUEUES = workers (default 1), MODES,
# MIN_WAIT/MAX_WAIT ms between a client's writes (default 100/400).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --workspace --locked 2>&1 | tail -n 1
CLIENTS=${CLIENTS:-500} DURATION=${DURATION:-20} QUEUES=${QUEUES:-1} MODES=${MODES:-"xdp-native xdp-generic uring"}
MIN_WAIT=${MIN_WAIT:-100} MAX_WAIT=${MAX_WAIT:-400}
prefix=cvcmp$$
out=out/compare-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
cleanup() {
  [[ -n ${pid:-} ]] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  scripts/testbed.sh down --prefix "$prefix" >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/testbed.sh up --prefix "$prefix" --queues "$QUEUES" 2>&1 | tail -n 1
softirq() { awk '/^cpu / { print $8 }' /proc/stat; }
proc_cpu() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
echo "| mode | workers | datagrams in+out | server CPU s (user + sys) | µs/datagram (process) | of which user | box softirq s | µs/datagram (process + softirq) | p50 / p99 ms (client1) |" >"$out/table.md"
echo "|---|---|---|---|---|---|---|---|---|" >>"$out/table.md"
for mode in $MODES; do
  case "$mode" in
    xdp-native) args=(--mode xdp --iface eth1 --vlan 4000 --xdp-attach native -w "$QUEUES") ;;
    xdp-generic) args=(--mode xdp --iface eth1.4000 --xdp-attach generic) ;;
    uring) args=(--mode uring -w "$QUEUES") ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  ip netns exec "$prefix-server" target/release/server "${args[@]}" --listen 10.0.1.10:4433 \
    --stats-json "$out/$mode-server.json" 2>"$out/$mode-server.log" &
  pid=$!
  for _ in $(seq 300); do grep -q "listening on" "$out/$mode-server.log" && break; kill -0 $pid; sleep 0.1; done
  s0=$(softirq); p0=$(proc_cpu $pid)
  cpids=()
  for h in client1 client2; do
    ip netns exec "$prefix-$h" target/release/client --target https://10.0.1.10:4433 --clients "$CLIENTS" \
      --id "$h" --protocol canvas1 --seed 7 --max-conn-jitter 2000 --min-pixel-wait "$MIN_WAIT" --max-pixel-wait "$MAX_WAIT" \
      --duration "$DURATION" --summary-json "$out/$mode-$h.json" >"$out/$mode-$h.log" 2>&1 &
    cpids+=($!)
  done
  for c in "${cpids[@]}"; do wait "$c" || true; done
  s1=$(softirq); p1=$(proc_cpu $pid)
  kill -INT $pid; wait $pid; pid=
  python3 - "$mode" "$out" $p0 $p1 "$s0" "$s1" >>"$out/table.md" <<'EOF'
import json, sys
mode, out, u0, k0, u1, k1, s0, s1 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
p0, p1, user = u0 + k0, u1 + k1, (u1 - u0) / 100
s = json.load(open(f"{out}/{mode}-server.json"))
c = json.load(open(f"{out}/{mode}-client1.json"))
n = s["totals"]["datagrams_in"] + s["totals"]["datagrams_out"]
cpu, sirq = (p1 - p0) / 100, (s1 - s0) / 100
ok = all(json.load(open(f"{out}/{mode}-{h}.json"))["failed"] == 0 for h in ("client1", "client2"))
print(f"| {mode}{'' if ok else ' (FAILED clients)'} | {s['workers']} | {n} | {cpu:.2f} ({user:.2f} + {cpu - user:.2f}) | {cpu * 1e6 / n:.2f} | {user * 1e6 / n:.2f} | {sirq:.2f} | {(cpu + sirq) * 1e6 / n:.2f} | {c['latency_ms']['p50']:.0f} / {c['latency_ms']['p99']:.0f} |")
EOF
done
cat "$out/table.md"
echo "(CLIENTS=$CLIENTS per namespace x 2, DURATION=$DURATION s, QUEUES=$QUEUES, pixel wait $MIN_WAIT-$MAX_WAIT ms; files in $out)"
