# shellcheck shell=bash
# shellcheck disable=SC2034 # ALL_CELLS, SERVER_ARGS, CLIENT_ARGS, SERVER_RC are for the sourcing script
# The VM rig's cells, one definition for every side that runs them: scripts/vm/guest.sh (servers in the
# guest), scripts/vm/host_cells.sh (the host row, servers in the testbed) and scripts/vm.sh (the loadgen).
# Sourced, not run. The caller sets GUEST4, GUEST6 (the server's addresses), VID, CLIENTS and SECS.

ALL_CELLS=(xdp-native xdp-generic uring v6)

# The server's arguments for cell $1 (without --stats-json) in SERVER_ARGS.
cell_server_args() {
  case "$1" in
    xdp-native) SERVER_ARGS=(--mode xdp --iface eth1 --vlan "$VID" --listen "$GUEST4:4433" --zero-copy auto --pin irq --xdp-frames 8192) ;;
    xdp-generic) SERVER_ARGS=(--mode xdp --iface "eth1.$VID" --xdp-attach generic -w 1 --listen "$GUEST4:4433" --xdp-frames 8192) ;;
    uring) SERVER_ARGS=(--mode uring -w 2 --steer cid --listen 0.0.0.0:4433) ;;
    v6) SERVER_ARGS=(--mode xdp --iface eth1 --vlan "$VID" --listen '[::]:4433' --zero-copy auto --pin irq --xdp-frames 8192) ;;
    *) return 1 ;;
  esac
}

# The loadgen's arguments for cell $1 in CLIENT_ARGS: $2 its --id, $3 its --summary-json (v6 goes over IPv6),
# $4 "impaired" when the wire is impaired (the guests' uring cell runs over netem, guest.sh): the clients then
# keep their ports, since rebinding under loss and reordering lost a connection (quiche closed it with
# PROTOCOL_VIOLATION, 1 of 50 clients, once in two matrix runs; under investigation, see ARCHITECTURE.md).
cell_client_args() {
  local target=https://$GUEST4:4433
  [[ $1 != v6 ]] || target="https://[$GUEST6]:4433"
  CLIENT_ARGS=(--target "$target" --clients "$CLIENTS" --id "$2" --protocol canvas1 --duration "$SECS"
    --replicas "$CLIENTS" --max-conn-jitter 2000 --min-pixel-wait 100 --max-pixel-wait 400 --summary-json "$3")
  [[ ${4:-} == impaired ]] || CLIENT_ARGS+=(--rebind-every 3)
}

# Wait (bounded, $3 seconds) until server $1 prints "listening on" to $2; 1 when it exited or never did.
wait_listening() {
  local end=$(($(date +%s) + $3))
  while (($(date +%s) < end)); do
    grep -q "listening on" "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.3
  done
  return 1
}

# Stop server $1 (SIGINT, then SIGKILL after 30 s; a child of the caller's shell, so no subshell here) and
# put its exit code in SERVER_RC.
stop_server() {
  local i
  kill -INT "$1" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.3
  done
  if kill -0 "$1" 2>/dev/null; then
    echo "server $1 still running 30 s after SIGINT: SIGKILL" >&2
    kill -KILL "$1"
  fi
  wait "$1"
  SERVER_RC=$?
}
