#!/usr/bin/env bash
# Hold N canvas/1 connections on one server and measure what they cost (issue 10's "100,000 idle connections
# held for 60 s" and "50,000 connections writing at the r/place pace with the live broadcast"): a private
# network namespace with only loopback, one server (`--mode uring`), two load generators (one thread each)
# whose clients connect over ARRIVE seconds and stay HOLD seconds after the last one arrived; idle by default
# (never write, no replica), or each writing one pixel every WRITE ± 5 seconds with REPLICAS full replicas per
# load generator checked against the server's canvas at the end. Prints the server's RSS and CPU every 10 s,
# then RSS per connection, server CPU, broadcast waves per second, each load generator's connected/failed,
# replicas, write->visible and write->ACK latency and CPU.
#
# Usage: scripts/many_conns.sh [--conns N] [--arrive S] [--hold S] [--workers W] [--write-every S]
#                              [--replicas R] [--out DIR] [--client-arg ARG]... [--server-arg ARG]...
#   defaults: 100000 idle connections over 150 s, held 60 s, 2 workers; results in out/conns-YYYYmmdd-HHMMSS
#   --client-arg: one more argument for both load generators (repeatable; e.g. --client-arg=--plain-snapshots)
#   --server-arg: one more argument for the server (repeatable; e.g. --server-arg=--broadcast-queue-ms=0)
# Run as root (network namespace). Needs target/release/{server,client} (cargo build --release) and about
# 32 KiB of server memory and 45 KiB of load-generator memory per connection.
# Bounded: every wait has a limit; the namespace and every process started here are removed on every exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONNS=100000 ARRIVE=150 HOLD=60 WORKERS=2 WRITE=0 REPLICAS=0 OUT=""
CLIENT_ARGS=() SERVER_ARGS=()
while (($#)); do
  case $1 in
    --conns) CONNS=${2:?}; shift ;;
    --arrive) ARRIVE=${2:?}; shift ;;
    --hold) HOLD=${2:?}; shift ;;
    --workers) WORKERS=${2:?}; shift ;;
    --write-every) WRITE=${2:?}; shift ;;
    --replicas) REPLICAS=${2:?}; shift ;;
    --out) OUT=${2:?}; shift ;;
    --client-arg) CLIENT_ARGS+=("${2:?}"); shift ;;
    --client-arg=*) CLIENT_ARGS+=("${1#--client-arg=}") ;;
    --server-arg) SERVER_ARGS+=("${2:?}"); shift ;;
    --server-arg=*) SERVER_ARGS+=("${1#--server-arg=}") ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "many_conns: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$CONNS" "$ARRIVE" "$HOLD" "$WORKERS" "$WRITE" "$REPLICAS"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "many_conns: --conns, --arrive, --hold, --workers, --write-every and --replicas take whole numbers" >&2; exit 2; }
done
((CONNS >= 2)) || { echo "many_conns: --conns must be at least 2" >&2; exit 2; }
((WRITE == 0 || WRITE > 5)) || { echo "many_conns: --write-every must be more than 5 s (writes come every S ± 5 s)" >&2; exit 2; }
((EUID == 0)) || { echo "many_conns: run as root (it creates a network namespace)" >&2; exit 1; }
BIN=$REPO/target/release
[[ -x $BIN/server && -x $BIN/client ]] || { echo "many_conns: build first: cargo build --release" >&2; exit 1; }
OUT=${OUT:-$REPO/out/conns-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

NS=canvas-conns-$$
SP="" C1="" C2=""
# shellcheck disable=SC2317 # run by the trap
cleanup() {
  local p
  for p in $C1 $C2 $SP; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in $C1 $C2 $SP; do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM INT
ip netns add "$NS"
ip -n "$NS" link set lo up

ip netns exec "$NS" "$BIN/server" --mode uring -w "$WORKERS" --listen 127.0.0.1:4433 \
  --stats-json "$OUT/server-stats.json" ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} >"$OUT/server.log" 2>&1 &
SP=$!
for ((t = 0; t < 300; t++)); do
  grep -qs "listening on" "$OUT/server.log" && break
  kill -0 "$SP" 2>/dev/null || { echo "many_conns: the server exited (see $OUT/server.log)" >&2; exit 1; }
  sleep 0.1
done
grep -qs "listening on" "$OUT/server.log" || { echo "many_conns: the server did not start within 30 s" >&2; exit 1; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
R0=$(rss "$SP")
HALF=$((CONNS / 2))
DUR=$((ARRIVE + HOLD))
if ((WRITE > 0)); then
  WAIT=(--min-pixel-wait "$(((WRITE - 5) * 1000))" --max-pixel-wait "$(((WRITE + 5) * 1000))" --verify-timeout 120)
else
  WAIT=(--min-pixel-wait 1000000000 --max-pixel-wait 1000000000 --verify-timeout 10)
fi
for i in 1 2; do
  n=$HALF
  ((i == 2)) && n=$((CONNS - HALF))
  ip netns exec "$NS" "$BIN/client" --target https://127.0.0.1:4433 --clients "$n" --id "conns$i" --replicas "$REPLICAS" \
    "${WAIT[@]}" --duration "$DUR" --max-conn-jitter "$((ARRIVE * 1000))" \
    --threads 1 --endpoints 128 --handshake-timeout 20 --progress lines \
    --summary-json "$OUT/client$i.json" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} >"$OUT/client$i.log" 2>&1 &
  if ((i == 1)); then C1=$!; else C2=$!; fi
done
PEAK=$R0
for ((t = 10; t <= DUR + 120; t += 10)); do
  sleep 10
  kill -0 "$C1" 2>/dev/null || kill -0 "$C2" 2>/dev/null || break
  r=$(rss "$SP")
  ((r > PEAK)) && PEAK=$r
  echo "t=${t}s server RSS ${r} kB, CPU $(cpu "$SP") s; load generators CPU $(cpu "$C1") + $(cpu "$C2") s; $(tail -1 "$OUT/client1.log" | grep -o 'active=[0-9]* failed=[0-9]*' || true) (conns1)"
done
rc=0
for p in "$C1" "$C2"; do
  for ((t = 0; t < 600; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  wait "$p" || rc=1
done
C1="" C2=""
SCPU=$(cpu "$SP")
kill -INT "$SP"
for ((t = 0; t < 300; t++)); do kill -0 "$SP" 2>/dev/null || break; sleep 0.1; done
wait "$SP" || rc=1
SP=""
python3 - "$OUT" "$CONNS" "$R0" "$PEAK" "$SCPU" "$ARRIVE" "$HOLD" "$WRITE" "$REPLICAS" "$NS" <<'EOF' || rc=1
import json, sys
out, conns, r0, peak, scpu, arrive, hold, write, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7], int(sys.argv[8]), int(sys.argv[9])
s = [json.load(open(f"{out}/client{i}.json")) for i in (1, 2)]
connected = sum(x["connected"] for x in s)
failed = sum(x["failed"] for x in s)
st = json.load(open(f"{out}/server-stats.json"))
waves = sum((w.get("endpoint") or {}).get("waves", 0) for w in st.get("per_worker", []))
pubs = (st.get("master") or {}).get("ticks", 0)
res = {"namespace": sys.argv[10], "connections": conns, "arrive_s": int(arrive), "hold_s": int(hold), "write_every_s": write,
       "connected": connected, "failed": failed,
       "writes_sent": sum(x["pixels_sent"] for x in s), "writes_acked": sum(x["pixels_applied"] for x in s),
       "unsettled": sum(x["unresolved_writes"] + x["acked_not_visible"] for x in s),
       "replicas": [f"{x['replicas_matching']}/{x['replicas_checked']} of {x['replicas']}" for x in s],
       "visible_ms": [x["latency_ms"] for x in s], "ack_ms": [x["ack_latency_ms"] for x in s],
       "server_ticks": pubs, "server_broadcast_waves": waves,
       "waves_per_worker_per_s": round(waves / max(len(st.get("per_worker", [])), 1) / max(int(arrive) + int(hold), 1), 2),
       "server_rss_start_kib": r0, "server_rss_peak_kib": peak,
       "server_rss_per_connection_kib": round((peak - r0) / max(connected, 1), 1),
       "server_cpu_s": scpu, "loadgen_cpu_s": [round(x["usage"]["user_s"] + x["usage"]["sys_s"], 1) for x in s],
       "loadgen_max_rss_mib": [round(x["usage"]["max_rss_mib"]) for x in s],
       "pass": connected == conns and failed == 0 and all(x["replicas_matching"] == x["replicas"] for x in s)}
json.dump(res, open(f"{out}/conns.json", "w"), indent=2)
print(f"{connected}/{conns} connected, {failed} failed; server RSS {(peak - r0) / max(connected, 1):.1f} KiB per connection "
      f"({r0} -> {peak} kB), server CPU {scpu:.1f} s; load generators CPU {res['loadgen_cpu_s']} s, "
      f"RSS {res['loadgen_max_rss_mib']} MiB; {'PASS' if res['pass'] else 'FAIL'} ({out}/conns.json)")
if write:
    print(f"writes {res['writes_acked']}/{res['writes_sent']} ACKed, unsettled {res['unsettled']}, replicas {res['replicas']}; "
          f"write->visible {[(l['p50'], l['p99']) for l in res['visible_ms']]} ms (p50, p99 per load generator), "
          f"write->ACK {[(l['p50'], l['p99']) for l in res['ack_ms']]} ms; {waves} broadcast waves from {pubs} ticks "
          f"({res['waves_per_worker_per_s']} per worker per second)")
sys.exit(0 if res["pass"] else 1)
EOF
exit "$rc"
