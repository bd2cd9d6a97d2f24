#!/usr/bin/env bash
# The main job on one box: brings up the testbed (scripts/testbed.sh: server, client1, client2 and a switch
# namespace, VLAN 4000, 10.0.1.x), runs the server in AF_XDP mode in the server namespace and a bounded
# loadgen run in each client namespace at the same time (canvas/1 from client1, legacy from client2), prints
# both summaries and the server's counters, writes PNG reports, and tears the testbed down.
# Knobs: CLIENTS per client namespace (default 500), DURATION seconds (default 20),
#        MODE xdp-native (default: native XDP on eth1, VLAN 4000 in the program, one worker per queue),
#             xdp-generic (generic XDP on eth1.4000) or uring (io_uring sockets),
#        QUEUES server NIC queues = workers (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --locked
CLIENTS=${CLIENTS:-500} DURATION=${DURATION:-20} MODE=${MODE:-xdp-native} QUEUES=${QUEUES:-2}
case "$MODE" in
  xdp-native) server_args=(--mode xdp --iface eth1 --vlan 4000 -w "$QUEUES") ;;
  xdp-generic) server_args=(--mode xdp --iface eth1.4000) ;;
  uring) server_args=(--mode uring -w "$QUEUES") ;;
  *) echo "demo: MODE must be xdp-native, xdp-generic or uring, got '$MODE'" >&2; exit 2 ;;
esac
prefix=cvdemo$$
out=out/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/client1" "$out/client2"
# shellcheck disable=SC2317 # run by the trap
cleanup() {
  if [[ -n ${pid:-} ]] && kill -INT "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  scripts/testbed.sh down --prefix "$prefix" || true
}
trap cleanup EXIT
scripts/testbed.sh up --prefix "$prefix" --queues "$QUEUES"
ip netns exec "$prefix-server" target/release/server "${server_args[@]}" --listen 10.0.1.10:4433 \
  --stats-json "$out/server.json" 2>"$out/server.log" &
pid=$!
for _ in $(seq 300); do grep -q "listening on" "$out/server.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
cat "$out/server.log"
grep -q "listening on" "$out/server.log" || {
  echo "demo: the server did not start listening within 30 s (its log is above, also in $out/server.log)" >&2
  exit 1
}
load() { # host protocol; the client stops by itself after DURATION s and its checks, timeout is the backstop
  ip netns exec "$prefix-$1" timeout -k 10 $((DURATION + 180)) target/release/client --target https://10.0.1.10:4433 --clients "$CLIENTS" --id "$1" \
    --protocol "$2" --max-conn-jitter 3000 --min-pixel-wait 100 --max-pixel-wait 500 --duration "$DURATION" \
    --metrics-dir "$out/$1" --summary-json "$out/$1/summary.json" >"$out/$1/client.log" 2>&1
}
load client1 canvas1 & c1=$!
load client2 legacy & c2=$!
rc=0
wait $c1 || rc=$?
wait $c2 || rc=$?
kill -INT $pid; wait $pid; pid=
for h in client1 client2; do
  echo "== $h"; tail -n 14 "$out/$h/client.log"
  python3 loadgen/visualize_load.py "$out/$h" -o "$out/$h-report.png"
done
echo "== server ($out/server.json)"
python3 - "$out/server.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps(s["totals"], indent=1))
if s.get("xdp"):
    x = s["xdp"]
    print(f"xdp: {x['attach']} on {x['interface']} (vlan {x['vlan']}), redirected {x['counters']['redirected']}, tripwire {x['tripwire_packets']}")
for w in s["per_worker"]:
    print(f"worker {w['worker']} (cpu {w['cpu']}): accepted {w['endpoint']['accepted']}, datagrams in {w['backend']['rx_datagrams']} out {w['backend']['tx_datagrams']}")
EOF
echo "reports: $out/client1-report.png $out/client2-report.png"
exit $rc
