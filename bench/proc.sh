# shellcheck shell=bash
# Process bookkeeping shared by every benchmark script (sourced, not run):
# logging, arithmetic on wrk's RESULT lines, and every process started is
# stopped by PID on any exit, Ctrl-C included; logs are kept on failure;
# missing commands are installed from Debian (install_deps).
#
# The sourcing script sets WORK (a fresh directory) and T0 first.

OK_EXIT=0
KEEP=${KEEP:-0}

log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() {
    log "FAILED: $*"
    OK_EXIT=1
    exit 1
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { x = $1; printf \"%.4f\", x }"; }
# field NAME LINE: the value of NAME=value in a RESULT line.
field() { grep -o "\\b$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }

# ---------------------------------------------------------------- processes
PIDS=()
declare -A PNAME=() LIVE=()

# spawn NAME CMD...: starts CMD in the background, its output appended to
# $WORK/NAME.log; sets SPAWNED to its PID.
spawn() {
    local name=$1
    shift
    "$@" >>"$WORK/$name.log" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
    PNAME[$SPAWNED]=$name
    LIVE[$SPAWNED]=1
}

# forget PID: PID was reaped; never signal that number again.
forget() { unset "LIVE[$1]"; }

# stop PID [SIGNAL]: SIGTERM (or SIGNAL), then SIGKILL after 5 s; reaps it.
stop() {
    local pid=$1 sig=${2:-TERM} i
    [[ -n ${LIVE[$pid]:-} ]] || return 0
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        forget "$pid"
        return 0
    }
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "${PNAME[$pid]:-$pid} ignored SIG$sig; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

stop_all() {
    local pids=("$@") i
    ((${#pids[@]})) || pids=("${PIDS[@]}")
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop "${pids[i]}"
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((rc >= 128)) && log "interrupted; stopping everything the benchmark started"
    ((${#PIDS[@]})) && stop_all "${PIDS[@]}"
    if [[ $KEEP == 1 || $rc != 0 || $OK_EXIT == 1 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
# install_deps CMD=PACKAGE...: installs the Debian packages of missing commands.
install_deps() {
    local need=() kv
    for kv in "$@"; do
        command -v "${kv%%=*}" >/dev/null || need+=("${kv#*=}")
    done
    ((${#need[@]})) || return 0
    [[ $INSTALL == 1 ]] || die "missing ${need[*]} (INSTALL=0)"
    log "installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$WORK/apt.log" 2>&1 || die "apt-get update failed (see $WORK/apt.log)"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$WORK/apt.log" 2>&1 ||
        die "apt-get install ${need[*]} failed (see $WORK/apt.log)"
    for kv in "$@"; do
        command -v "${kv%%=*}" >/dev/null || die "${kv%%=*} still missing after installing ${kv#*=}"
    done
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

