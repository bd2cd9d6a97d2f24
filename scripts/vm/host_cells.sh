#!/usr/bin/env bash
# The VM rig's "host" row: the same cells as scripts/vm/guest.sh, on this machine's own kernel, over the
# one-box testbed (scripts/testbed.sh: veth, no IRQs, no zero-copy; eth1.4000 is a real 802.1Q device where
# the kernel has 8021q, else a macvlan with tc-BPF tagging). Writes RUNDIR in the layout scripts/vm/report.py
# judges (uname, setup.done, cell-CELL/{server.err,server.rc,stats.json,summary.json,client.rc,ethtool-*}).
#
# Usage: host_cells.sh RUNDIR "CELL..." CLIENTS SECS
#   Called by scripts/vm.sh (run host, matrix). Run as root. Tears the testbed down on every exit path.
set -uo pipefail

usage() { sed -n '/^# Usage:/,/^#   Called/p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
(($# == 4)) || { usage >&2; exit 2; }
RUNDIR=$1 CELLS=$2 CLIENTS=$3 SECS=$4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=$RUNDIR/bin
P=cvmhost
SRV=$P-server CLI=$P-client1
# The testbed's server addresses (scripts/testbed.sh), as the guest's are for the guest cells.
GUEST4=10.0.1.10 GUEST6=fd00:4000::10 VID=4000
# shellcheck source-path=SCRIPTDIR source=cells.sh
. "$HERE/cells.sh"

log() { echo "host: $*" | tee -a "$RUNDIR/guest.log" >&2; }
down() { "$REPO/scripts/testbed.sh" down --prefix "$P" >/dev/null 2>&1 || true; }
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

uname -r >"$RUNDIR/uname"
if ! "$REPO/scripts/testbed.sh" up --prefix "$P" --queues 2 >"$RUNDIR/testbed.log" 2>&1; then
  tail -5 "$RUNDIR/testbed.log" >"$RUNDIR/setup.failed"
  log "testbed up failed: $(tr '\n' ' ' <"$RUNDIR/setup.failed")"
  exit 1
fi
: >"$RUNDIR/setup.done"
log "$(uname -r), testbed $P up"

for cell in $CELLS; do
  dir=$RUNDIR/cell-$cell
  mkdir -p "$dir"
  t0=$(date +%s.%N)
  cell_server_args "$cell" || { log "unknown cell $cell"; continue; }
  ip netns exec "$SRV" ethtool -S eth1 >"$dir/ethtool-before.txt" 2>&1
  ip netns exec "$SRV" timeout -k 5 "$((SECS + 120))" "$BIN/server" "${SERVER_ARGS[@]}" \
    --stats-json "$dir/stats.json" \
    >"$dir/server.out" 2>"$dir/server.err" </dev/null &
  pid=$!
  if wait_listening "$pid" "$dir/server.err" 60; then
    rc=0
    cell_client_args "$cell" "host-$cell" "$dir/summary.json"
    ip netns exec "$CLI" timeout -k 10 "$((SECS + 150))" "$BIN/client" "${CLIENT_ARGS[@]}" >"$dir/client.out" 2>&1 \
      </dev/null || rc=$?
    echo "$rc" >"$dir/client.rc"
  else
    { echo "server did not listen within 60 s; stderr tail:"; tail -5 "$dir/server.err"; } >"$RUNDIR/$cell.failed"
  fi
  ip netns exec "$SRV" ethtool -S eth1 >"$dir/ethtool-after.txt" 2>&1
  stop_server "$pid"
  echo "$SERVER_RC" >"$dir/server.rc"
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }' >"$dir/host_seconds"
  log "$cell: server exit $SERVER_RC, client exit $(cat "$dir/client.rc" 2>/dev/null || echo -)"
  sleep 1 # an AF_XDP rebind to the same queue right after a close can fail with EBUSY for ~0.5 s
done
