#!/usr/bin/env bash
# The benchmark harness: the three datapaths side by side on the testbed (see scripts/bench.py for what is
# measured and how). Installs what it needs, builds once, then runs; output in out/bench-DATE/.
# Usage: scripts/bench.sh [--quick] [--repeats N] [--secs S] [--queues N] [--modes xdp-native xdp-generic uring]
#                         [--phases handshake load1 load2 load3 ramp overload scale]   (one quick load: --phases load1 --repeats 1)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --locked
exec python3 scripts/bench.py "$@"
