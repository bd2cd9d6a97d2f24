#!/usr/bin/env bash
# cargo-fuzz targets (fuzz/): the raw-frame parser, canvas/1 and legacy decoders, the canvas/1 replica, the
# placement log's readers. Usage: scripts/fuzz.sh [RUNS] [TARGET...] (default: 20000 runs of every target,
# the short pass the test suite runs; the note's figures use 1000000). libFuzzer runs them on the nightly
# toolchain (the sanitizer flags need it); a crash leaves its input in fuzz/artifacts/TARGET/ and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame canvas1 legacy placelog replica)
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
cargo +nightly fuzz build -O >/dev/null
for t in "${targets[@]}"; do
  start=$(date +%s.%N)
  out=$(cargo +nightly fuzz run -O "$t" -- -runs="$runs" -max_len=4096 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz.sh: $t crashed (input in fuzz/artifacts/$t/)" >&2
    exit 1
  }
  done_line=$(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1)
  printf 'fuzz %-9s %s (%.1f s)\n' "$t" "$done_line" "$(echo "$(date +%s.%N) - $start" | bc -l)"
done
