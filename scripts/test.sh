#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests in release mode (one build, reused by the
# end-to-end tests), and the report plotter. Root tests (hugepages) fail rather than skip when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked 2>&1 | tee target/test.log
# A short bounded pass of every fuzz target (scripts/fuzz.sh 1000000 for the long one).
scripts/fuzz.sh 20000
# The plotter, on the CSVs the loopback test just wrote.
csvdir=$(find target/release/deps -maxdepth 2 -path '*/e2e-canvas1-*/metrics' -type d 2>/dev/null | sort | tail -1)
if [ -n "$csvdir" ]; then
  python3 loadgen/visualize_load.py "$csvdir" -o target/e2e-report.png
  test -s target/e2e-report.png
  echo "plot: target/e2e-report.png"
fi
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' target/test.log | awk '{s+=$4} END {print s+0}')
echo "suite: $passed passed, 0 failed"
