# shellcheck shell=bash
# lib.sh: the helpers the scripts of scripts/ops share. Not run on its own: each script sources it, after
# `set -euo pipefail` and its PROG, with
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It only defines functions. What they read of the script:
#   PROG       the script's name, the prefix of every message
#   DRY        1 with --dry-run: run, write_file and install_pkgs print their commands and change nothing
#   usage      the script's function printing its --help (common_opt)
#   MSG_FD     where msg writes (default 1, stdout; monitor.sh: 2, its stdout may be the CSV)
#   SELF       the command usage_err names for --help (default $0; tune.sh: the role's wrapper)
#   PKG_OF     (associative) command -> Debian package for install_pkgs (default: the command's name)
#   PKG_IT     how install_pkgs' messages name the missing packages (default "them")
#   PKG_WARN   the prefix of install_pkgs' failure message (default none; e.g. "WARN: ")
#   CHANGES    the count report_changes reports

# ---------------------------------------------------------------- messages, usage
msg() { printf '%s: %s\n' "$PROG" "$*" >&"${MSG_FD:-1}"; }
err() { printf '%s: error: %s\n' "$PROG" "$*" >&2; }
usage_err() {
  err "$*"
  echo "run '${SELF:-$0} --help' for usage" >&2
  exit 2
}
# val OPTION "$@": the option's value must follow it.
val() { [[ $# -ge 2 && -n $2 ]] || usage_err "$1 needs a value"; }
# common_opt ARG: the options all but hugepages.sh take, after the script's own (sets DRY, INSTALL_ONLY);
# anything else is a usage error.
# shellcheck disable=SC2034 # INSTALL_ONLY is the script's
common_opt() {
  case "$1" in
    --dry-run) DRY=1 ;;
    --install-deps) INSTALL_ONLY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_err "unknown argument '$1'" ;;
  esac
}
# check_iface NAME, check_port PORT: exit 2 (usage) unless NAME is an interface name, PORT a UDP port.
check_iface() { [[ $1 =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || usage_err "bad interface name '$1'"; }
check_port() {
  if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then usage_err "--port must be 1..65535, got '$1'"; fi
}
# need_root WHY: exit 1 unless root or --dry-run.
need_root() {
  if ((EUID != 0)) && ! ((DRY)); then
    err "must run as root ($1); --dry-run works without"
    exit 1
  fi
}

# ---------------------------------------------------------------- commands: printed, run unless --dry-run
# Shell-quote for display: plain words as they are, anything else in single quotes.
quote() {
  local out="" a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s' "${out% }"
}
# Print a command (`+ cmd`), then run it unless --dry-run.
run() {
  printf '+ %s\n' "$(quote "$@")"
  ((DRY)) || "$@"
}
# run_stdin TEXT CMD...: the same with TEXT on the command's stdin (printed as a here-document).
run_stdin() {
  local text=$1
  shift
  printf '+ %s <<'"'EOF'"'\n%s\nEOF\n' "$(quote "$@")" "$text"
  ((DRY)) || printf '%s\n' "$text" | "$@"
}
# write_file TEXT FILE: print it as a command, then write TEXT (and a newline) to FILE unless --dry-run.
write_file() {
  if [[ $1 == *$'\n'* ]]; then
    printf '+ cat > %s <<'"'EOF'"'\n%s\nEOF\n' "$(quote "$2")" "$1"
  else
    printf '+ echo %s > %s\n' "$(quote "$1")" "$(quote "$2")"
  fi
  ((DRY)) || printf '%s\n' "$1" >"$2"
}

# ---------------------------------------------------------------- packages
# install_pkgs CMD...: install the packages (PKG_OF) of the commands that are missing, each package once,
# in the order first named, with `apt-get install -y -qq` (printed; all that --dry-run does). Returns 1,
# after saying why, when that needs root or fails.
install_pkgs() {
  local c p missing=()
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 && continue
    p=${PKG_OF[$c]:-$c}
    [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  printf '+ %s\n' "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]}"
  ((DRY)) && return 0
  ((EUID == 0)) || { msg "missing ${missing[*]}: run as root to install ${PKG_IT:-them}"; return 1; }
  msg "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
      msg "${PKG_WARN:-}could not install ${missing[*]} (no network here? inside a network namespace, install" \
        "${PKG_IT:-them} from the root namespace: apt-get install -y ${missing[*]})"
      return 1
    fi
  fi
}
# install_deps_and_exit [--root] "PACKAGES" CMD... (--install-deps): install_pkgs CMD..., then exit 0 saying
# the PACKAGES are present, or exit 1. --root: exit 1 at once unless root, even with --dry-run.
install_deps_and_exit() {
  if [[ $1 == --root ]]; then
    ((EUID == 0)) || { err "--install-deps needs root"; exit 1; }
    shift
  fi
  local pkgs=$1
  shift
  if install_pkgs "$@"; then
    msg "packages present: $pkgs"
    exit 0
  fi
  exit 1
}

# ---------------------------------------------------------------- reports
# ethtool_value TEXT max|cur KEY: KEY's value in the "Pre-set maximums" (max) or "Current hardware
# settings" (cur) section of TEXT, the output of `ethtool -g` or `ethtool -l`.
ethtool_value() {
  awk -v sect="$2" -v key="$3" '
    /^Pre-set maximums/ {s = "max"} /^Current hardware settings/ {s = "cur"}
    s == sect && $1 == key":" {print $2; exit}' <<<"$1"
}
# report_changes [APPLIED_NOTE [NOTHING_NOTE]]: the closing line on CHANGES (would be made with --dry-run).
report_changes() {
  if ((DRY)); then
    if ((CHANGES)); then
      msg "dry run: $CHANGES change(s) would be made; nothing was changed"
    else
      msg "dry run: nothing to change"
    fi
  elif ((CHANGES)); then
    msg "$CHANGES change(s) applied${1:-}"
  else
    msg "nothing to change${2:-}"
  fi
}
