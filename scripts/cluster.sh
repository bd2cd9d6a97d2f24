#!/usr/bin/env bash
# Several canvas servers, one canvas: a one-box cluster testbed (docs/ARCHITECTURE.md "Cluster").
#
#   up    the testbed with the cluster hosts (scripts/testbed.sh --hosts cluster: server, server2, server3,
#         client1..3, nats1..3 on VLAN 4000) and a 3-node nats-server JetStream cluster, one server per
#         nats namespace (client port 4222, routes on 6222, store under the state directory)
#   down  stop the NATS servers (by pid), remove the testbed and the state directory
#   run   up; three canvas servers (uring, -w 1, --cluster) on 10.0.1.10-12; one loadgen per client
#         namespace, each on its own server with --failover to the other two and an observer replica on
#         each of them (--observe: write -> visible across nodes); optionally a fault half way
#         (--kill nats: nats1 SIGKILLed; --kill nats-leader: the NATS server leading the CANVAS stream;
#         --kill server: server3 SIGKILLed, its clients move); then every
#         live node's canvas hash and stream position compared, and OUT/cluster.json written (also copied
#         to out/cluster.json); down. Exit 0 when every live node has the same canvas at the same position
#         and every loadgen ended with 0 failed and every replica matching.
#
# Usage: scripts/cluster.sh up|down|run [--prefix P] [--clients N] [--secs S]
#                                       [--kill none|nats|nats-leader|server]
#                                       [--out DIR]
#   --prefix   namespace prefix (default cvc; one cluster per prefix)
#   --clients  clients per loadgen (default 100)      --secs  write phase per loadgen (default 20)
#   --out      result directory (default out/cluster-YYYYmmdd-HHMMSS)
# Run as root (namespaces). Needs nats-server and target/release/{server,client} (cargo build --release).
# Every wait is bounded; every process started here is stopped by pid on every exit path.
set -Eeuo pipefail

usage() { sed -n '/^# Usage:/,/^# Every wait/p' "$0" | sed 's/^# \{0,1\}//'; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
CMD="" PREFIX=cvc CLIENTS=100 SECS=20 KILL=none OUT=""
while (($#)); do
  case "$1" in
    up | down | run) [[ -z $CMD ]] || { usage >&2; exit 2; }; CMD=$1 ;;
    --prefix) PREFIX=${2:?}; shift ;;
    --clients) CLIENTS=${2:?}; shift ;;
    --secs) SECS=${2:?}; shift ;;
    --kill) KILL=${2:?}; shift ;;
    --out) OUT=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cluster: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n $CMD ]] || { usage >&2; exit 2; }
[[ $PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$ ]] || { echo "cluster: bad --prefix '$PREFIX'" >&2; exit 2; }
in_range() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= $2 && $1 <= $3)); }
in_range "$CLIENTS" 1 100000 || { echo "cluster: --clients must be 1..100000" >&2; exit 2; }
in_range "$SECS" 4 3600 || { echo "cluster: --secs must be 4..3600" >&2; exit 2; }
[[ $KILL =~ ^(none|nats|nats-leader|server)$ ]] || { echo "cluster: --kill none|nats|nats-leader|server" >&2; exit 2; }
((EUID == 0)) || { echo "cluster: must run as root (network namespaces)" >&2; exit 1; }

msg() { echo "cluster: $*" >&2; }
STATE=/run/canvas-cluster-$PREFIX
TESTBED=("$REPO/scripts/testbed.sh" --prefix "$PREFIX" --hosts cluster --queues 1)
NATS_IPS=(10.0.1.31 10.0.1.32 10.0.1.33)
SRV_IPS=(10.0.1.10 10.0.1.11 10.0.1.12)
SRV_NS=(server server2 server3)
CLI_NS=(client1 client2 client3)
URLS="nats://10.0.1.31:4222,nats://10.0.1.32:4222,nats://10.0.1.33:4222"
ns() { echo "$PREFIX-$1"; }

# Stop pid $1 (TERM, KILL after $2 s); nothing when it is gone.
stop_pid() {
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}

nats_up() {
  local i dir
  command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] ||
    { msg "nats-server not installed (scripts/setup.sh installs it)"; return 1; }
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "$STATE"
  for i in 0 1 2; do
    dir=$STATE/nats$((i + 1))
    mkdir -p "$dir"
    cat >"$dir/nats.conf" <<EOF
server_name: nats$((i + 1))
listen: ${NATS_IPS[$i]}:4222
http: ${NATS_IPS[$i]}:8222
jetstream { store_dir: "$dir/store", max_memory_store: 256MB, max_file_store: 4GB }
cluster { name: canvas, listen: ${NATS_IPS[$i]}:6222, routes: [nats-route://10.0.1.31:6222, nats-route://10.0.1.32:6222, nats-route://10.0.1.33:6222] }
EOF
    if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then continue; fi
    ip netns exec "$(ns "nats$((i + 1))")" "$bin" -c "$dir/nats.conf" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
  done
  # Bounded: every client port answers.
  for i in 0 1 2; do
    local ok=0 t
    for ((t = 0; t < 100; t++)); do
      if ip netns exec "$(ns client1)" bash -c "exec 3<>/dev/tcp/${NATS_IPS[$i]}/4222" 2>/dev/null; then ok=1; break; fi
      sleep 0.1
    done
    ((ok)) || { msg "nats$((i + 1)) did not listen on ${NATS_IPS[$i]}:4222 within 10 s (see $STATE/nats$((i + 1))/log)"; return 1; }
  done
  msg "NATS cluster up: $URLS (JetStream, store under $STATE)"
}

nats_down() {
  local i
  for i in 1 2 3; do
    [[ -f $STATE/nats$i/pid ]] && stop_pid "$(cat "$STATE/nats$i/pid")" 5
  done
  return 0
}

do_up() {
  "${TESTBED[@]}" up
  nats_up
}

do_down() {
  nats_down
  "${TESTBED[@]}" down || true
  rm -rf "$STATE"
}

# The JSON body at URL $1, fetched from client1's namespace (3 s at most), or "{}".
http_json() {
  ip netns exec "$(ns client1)" python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
except Exception:
    print("{}")' "$1"
}

# JetStream's view (meta leader, stream and consumer leaders) from the NATS server at $1's monitoring port.
jsz() { http_json "http://$1:8222/jsz?accounts=true&streams=true&consumers=true"; }

# /metrics.json of the canvas server at $1.
metrics() { http_json "http://$1:9090/metrics.json"; }

SRV_PIDS=() CLI_PIDS=()
cleanup_run() {
  local p
  for p in "${CLI_PIDS[@]}" "${SRV_PIDS[@]}"; do [[ -z $p ]] || stop_pid "$p" 10; done
  do_down
}

do_run() {
  local bin=${BIN_DIR:-$REPO/target/release} i p  # BIN_DIR: other server/client binaries (A/B runs)
  [[ -x $bin/server && -x $bin/client ]] || { msg "build first: cargo build --release"; exit 1; }
  OUT=${OUT:-$REPO/out/cluster-$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$OUT"
  trap cleanup_run EXIT
  trap 'exit 143' TERM INT # the EXIT trap then stops everything started here
  do_up
  for i in 0 1 2; do
    ip netns exec "$(ns "${SRV_NS[$i]}")" "$bin/server" --mode uring -w 1 --listen "${SRV_IPS[$i]}:4433" \
      --cluster "$URLS" --cluster-node "${SRV_NS[$i]}" --metrics-addr "${SRV_IPS[$i]}:9090" \
      --stats-json "$OUT/${SRV_NS[$i]}-stats.json" >"$OUT/${SRV_NS[$i]}.log" 2>&1 &
    SRV_PIDS+=($!)
  done
  for i in 0 1 2; do
    local t ok=0
    for ((t = 0; t < 600; t++)); do
      grep -qs "listening on" "$OUT/${SRV_NS[$i]}.log" && { ok=1; break; }
      kill -0 "${SRV_PIDS[$i]}" 2>/dev/null || break
      sleep 0.1
    done
    ((ok)) || { msg "${SRV_NS[$i]} did not start (see $OUT/${SRV_NS[$i]}.log):"; tail -3 "$OUT/${SRV_NS[$i]}.log" >&2; exit 1; }
  done
  msg "3 canvas servers up (uring, --cluster), $CLIENTS clients per loadgen for $SECS s, fault: $KILL"
  for i in 0 1 2; do
    local others=() j
    for j in 0 1 2; do ((j == i)) || others+=("https://${SRV_IPS[$j]}:4433"); done
    ip netns exec "$(ns "${CLI_NS[$i]}")" "$bin/client" --target "https://${SRV_IPS[$i]}:4433" \
      --failover "$(IFS=,; echo "${others[*]}")" --reconnect 30 --keep-alive 1000 --idle-timeout 3000 \
      --observe "$(IFS=,; echo "${others[*]}")" \
      --clients "$CLIENTS" --replicas "$CLIENTS" --id "${CLI_NS[$i]}" --protocol canvas1 --duration "$SECS" \
      --max-conn-jitter 2000 --min-pixel-wait 1000 --max-pixel-wait 3000 --progress lines \
      --summary-json "$OUT/${CLI_NS[$i]}.json" >"$OUT/${CLI_NS[$i]}.log" 2>&1 &
    CLI_PIDS+=($!)
  done
  local killed=""
  if [[ $KILL != none ]]; then
    sleep $((SECS / 2))
    if [[ $KILL == nats || $KILL == nats-leader ]]; then
      # Which roles the NATS servers hold (meta leader, stream leaders, consumers), asked of nats2.
      jsz "${NATS_IPS[1]}" >"$OUT/jsz-before-kill.json"
      killed=nats1
      if [[ $KILL == nats-leader ]]; then
        killed=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(next((s["cluster"]["leader"] for a in j.get("account_details") or [] for s in a.get("stream_detail") or []
            if s.get("name") == "CANVAS" and (s.get("cluster") or {}).get("leader")), ""))' "$OUT/jsz-before-kill.json")
        [[ $killed =~ ^nats[123]$ ]] || { msg "could not tell the CANVAS stream's leader (see $OUT/jsz-before-kill.json)"; exit 1; }
      fi
      kill -KILL "$(cat "$STATE/$killed/pid")"
    else
      kill -KILL "${SRV_PIDS[2]}"; killed=server3
    fi
    msg "fault: $killed SIGKILLed at t=$((SECS / 2)) s"
  fi
  local rc=0
  for i in 0 1 2; do
    # Bounded: the loadgen's own duration, verification and close, plus margin.
    local t
    for ((t = 0; t < (SECS + 180) * 10; t++)); do kill -0 "${CLI_PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${CLI_PIDS[$i]}" 2>/dev/null; then msg "${CLI_NS[$i]} still running: stopping it"; stop_pid "${CLI_PIDS[$i]}" 5; rc=1; fi
    wait "${CLI_PIDS[$i]}" || rc=1
    CLI_PIDS[i]=""
  done
  # Every live node at the same position with the same canvas (bounded wait).
  local live=() states
  for i in 0 1 2; do [[ $killed == "${SRV_NS[$i]}" ]] || live+=("$i"); done
  for ((t = 0; t < 150; t++)); do
    states=""
    for i in "${live[@]}"; do metrics "${SRV_IPS[$i]}" >"$OUT/${SRV_NS[$i]}-metrics.json"; done
    states=$(for i in "${live[@]}"; do python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m.get("canvas_hash"), m.get("cluster_seq"))' "$OUT/${SRV_NS[$i]}-metrics.json"; done | sort -u | wc -l)
    [[ $states == 1 ]] && break
    sleep 0.2
  done
  for i in "${live[@]}"; do p=${SRV_PIDS[$i]}; kill -INT "$p" 2>/dev/null || true; done
  for i in "${live[@]}"; do
    for ((t = 0; t < 300; t++)); do kill -0 "${SRV_PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    stop_pid "${SRV_PIDS[$i]}" 5
    wait "${SRV_PIDS[$i]}" 2>/dev/null || true
    SRV_PIDS[i]=""
  done
  for i in 1 2 3; do cp "$STATE/nats$i/log" "$OUT/nats$i.log" 2>/dev/null || true; done
  python3 "$REPO/scripts/cluster_report.py" "$OUT" "$KILL" "$killed" || rc=1
  mkdir -p "$REPO/out"
  cp "$OUT/cluster.json" "$REPO/out/cluster.json"
  return "$rc"
}

case "$CMD" in
  up) do_up ;;
  down) do_down ;;
  run) do_run ;;
esac
