#!/usr/bin/env bash
# hugepages.sh: reserve 2 MiB hugetlb pages for the server (AF_XDP UMEM: 8 pages per queue at the default
# 8192 frames; the canvas: 1 page per 2 MiB) and give them back afterwards (the reference guide's §6.2,
# corrected).
#
# `reserve N` sets the 2 MiB pool to (the value before the first reserve) + N and remembers that previous
# value in /run/canvas-hugepages.prev (tmpfs: forgotten at reboot, as the pool is); `release` restores it
# and forgets it; `status` prints the pool. Idempotent: `reserve N` twice reserves N once, `release` with
# nothing remembered changes nothing. The pool is machine-wide (also from inside a network namespace).
#
# Corrections to the guide: it wrote 4096 into nr_hugepages (8 GiB, for "connection tables" that are not on
# huge pages: the server puts its canvas and UMEM there) without a way back; `nr_hugepages` is the pool of
# the *default* huge page size, which is 1 GiB on machines booted with default_hugepagesz=1G, so this uses
# the 2048 kB pool (/sys/kernel/mm/hugepages/hugepages-2048kB) explicitly; it never checked that the kernel
# found the pages (fragmented memory gives fewer than asked); THP "always" is not needed (the server
# madvises what it wants).
#
# Packages: none beyond coreutils/gawk.
set -euo pipefail

PROG=hugepages
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PREV_FILE=/run/canvas-hugepages.prev
usage() {
  cat <<'EOF'
Usage: hugepages.sh reserve N [--dry-run]
       hugepages.sh release [--dry-run]
       hugepages.sh status
Manage the 2 MiB hugetlb pool for the server.
  reserve N   make the pool (its size before the first reserve) + N pages; remembers that size in
              /run/canvas-hugepages.prev. A second `reserve N` changes nothing.
  release     restore the remembered size and forget it. Nothing remembered: nothing to change.
  status      total, free, reserved (promised to mappings) and surplus pages, and what is remembered
  --dry-run   print the commands (prefixed '+ '), change nothing
Run as root (reserve, release). Exit: 0 done or nothing to do, 1 failure (e.g. the kernel found fewer
pages than asked), 2 usage.
EOF
}

DRY=0
CMD=""
N=""
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    reserve | release | status)
      [[ -z $CMD ]] || usage_err "one command only"
      CMD=$1
      if [[ $1 == reserve ]]; then
        [[ $# -ge 2 ]] || usage_err "reserve needs a page count"
        N=$2
        shift
      fi
      ;;
    *) usage_err "unknown argument '$1'" ;;
  esac
  shift
done
[[ -n $CMD ]] || usage_err "a command is needed: reserve N, release or status"
if [[ $CMD == reserve ]] && { ! [[ $N =~ ^[0-9]+$ ]] || ((N < 1 || N > 1048576)); }; then
  usage_err "reserve: N must be 1..1048576 pages of 2 MiB, got '$N'"
fi

POOL=/sys/kernel/mm/hugepages/hugepages-2048kB
if [[ ! -d $POOL ]]; then
  err "this kernel has no 2 MiB hugetlb pool ($POOL missing: CONFIG_HUGETLBFS off, or another page size)"
  exit 1
fi
# The pool's size: /proc/sys/vm/nr_hugepages when 2 MiB is the default huge page size (the usual case),
# else the 2 MiB pool's own file.
if grep -q '^Hugepagesize: *2048 kB' /proc/meminfo; then NR=/proc/sys/vm/nr_hugepages; else NR=$POOL/nr_hugepages; fi
get() { cat "$POOL/$1"; }
if [[ $CMD != status ]] && ((EUID != 0)) && ! ((DRY)); then
  err "$CMD must run as root (it writes $NR); --dry-run works without"
  exit 1
fi
((DRY)) && msg "dry run: printing the commands, changing nothing"

status() {
  local total free rsvd surp
  total=$(get nr_hugepages) free=$(get free_hugepages) rsvd=$(get resv_hugepages) surp=$(get surplus_hugepages)
  msg "2 MiB pages: total $total, free $free, reserved $rsvd, surplus $surp ($((total * 2)) MiB in the pool)"
  if [[ -f $PREV_FILE ]]; then
    msg "remembered: the pool was $(<"$PREV_FILE") before hugepages.sh reserve ($PREV_FILE):" \
      "$((total - $(<"$PREV_FILE"))) page(s) reserved by it; 'release' restores it"
  else
    msg "remembered: nothing (no reservation by this script)"
  fi
}

case "$CMD" in
  status)
    status
    ;;
  reserve)
    cur=$(get nr_hugepages)
    if [[ -f $PREV_FILE ]]; then
      prev=$(<"$PREV_FILE")
      [[ $prev =~ ^[0-9]+$ ]] || { err "$PREV_FILE holds '$prev', not a page count: remove it"; exit 1; }
      msg "a reservation is remembered: the pool was $prev before it"
    else
      prev=$cur
    fi
    want=$((prev + N))
    if ((cur == want)); then
      msg "nr_hugepages (2 MiB): $cur -> $want: ok, nothing to change ($N page(s) over $prev already reserved)"
      status
      exit 0
    fi
    msg "nr_hugepages (2 MiB): $cur -> $want ($prev + $N)"
    [[ -f $PREV_FILE ]] || write_file "$prev" "$PREV_FILE"
    write_file "$want" "$NR"
    if ((DRY)); then
      msg "dry run: 1 change would be made; nothing was changed"
      exit 0
    fi
    got=$(get nr_hugepages)
    status
    if ((got < want)); then
      err "the kernel found only $((got - prev)) of $N pages (memory too fragmented): the pool is $got;" \
        "'hugepages.sh release' gives them back (echo 1 > /proc/sys/vm/compact_memory and retry may help)"
      exit 1
    fi
    msg "reserved $N page(s) of 2 MiB ($((N * 2)) MiB)"
    ;;
  release)
    if [[ ! -f $PREV_FILE ]]; then
      msg "nothing remembered ($PREV_FILE absent): nothing to change (the pool stays at $(get nr_hugepages))"
      exit 0
    fi
    prev=$(<"$PREV_FILE")
    [[ $prev =~ ^[0-9]+$ ]] || { err "$PREV_FILE holds '$prev', not a page count: remove it"; exit 1; }
    cur=$(get nr_hugepages)
    if ((cur == prev)); then
      msg "nr_hugepages (2 MiB): $cur -> $prev: ok, already there"
    else
      msg "nr_hugepages (2 MiB): $cur -> $prev"
      write_file "$prev" "$NR"
    fi
    printf '+ rm -f %s\n' "$PREV_FILE"
    if ((DRY)); then
      msg "dry run: nothing was changed"
      exit 0
    fi
    rm -f "$PREV_FILE"
    got=$(get nr_hugepages)
    if ((got > prev)); then
      # Pages still mapped become surplus and return to the system when unmapped.
      msg "the pool is $got: $((got - prev)) page(s) are still in use and go back when they are unmapped"
    fi
    status
    msg "released"
    ;;
esac
exit 0
