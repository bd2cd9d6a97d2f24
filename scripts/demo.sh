#!/usr/bin/env bash
# The main job on one box: the server in io_uring mode on loopback and a bounded loadgen run against it;
# prints the loadgen summary and the server's counters, and writes a PNG report.
# Knobs: CLIENTS (default 1000), DURATION seconds (default 20), WORKERS (default 2), PROTOCOL (canvas1|legacy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --locked
CLIENTS=${CLIENTS:-1000} DURATION=${DURATION:-20} WORKERS=${WORKERS:-2} PROTOCOL=${PROTOCOL:-canvas1}
out=out/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/metrics"
target/release/server -w "$WORKERS" --mode uring --listen 127.0.0.1:4433 --stats-json "$out/server.json" 2>"$out/server.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out/server.log" && break; kill -0 $pid || { cat "$out/server.log"; exit 1; }; sleep 0.1; done
target/release/client --target https://127.0.0.1:4433 --clients "$CLIENTS" --id demo --protocol "$PROTOCOL" \
  --max-conn-jitter 3000 --min-pixel-wait 100 --max-pixel-wait 500 --duration "$DURATION" \
  --metrics-dir "$out/metrics" --summary-json "$out/summary.json"
kill -INT $pid; wait $pid; trap - EXIT
python3 loadgen/visualize_load.py "$out/metrics" -o "$out/report.png"
echo "== loadgen summary ($out/summary.json)"; cat "$out/summary.json"; echo
echo "== server totals ($out/server.json)"; python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["totals"], indent=1))' "$out/server.json"
echo "report: $out/report.png"
