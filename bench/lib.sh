# shellcheck shell=bash
# Shared by bench/warmup.sh, bench/handoff.sh, bench/compare.sh and
# bench/memory.sh (sourced,
# not run): process bookkeeping (every process started is stopped by PID on
# any exit), a ringcache cluster on 127.0.0.1 with ports the servers picked
# themselves (:0, read back from their log), preloading through HTTP and
# one wrk run.
#
# The sourcing script sets ROOT, WORK and T0 first.

export PATH=$PATH:/usr/sbin:/sbin
INSTALL=${INSTALL:-1}
WRK_THREADS=${WRK_THREADS:-2}
# One connection per thread: preload.lua stops a thread after its last key.
PRELOAD_THREADS=${PRELOAD_THREADS:-4}

# shellcheck source=bench/proc.sh
source "$ROOT/bench/proc.sh"

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }
# load1: the 1-minute load average.
load1() { cut -d' ' -f1 /proc/loadavg; }

# ---------------------------------------------------------------- setup
# build_release DIR: cargo build --release of the servers in the checkout DIR.
build_release() {
    log "building release binaries in $1 (cargo build --release)"
    (cd "$1" && cargo build --release --quiet -p ringcache-manager -p ringcache-datanode) ||
        die "cargo build in $1 failed"
}

# ---------------------------------------------------------------- servers
# logged_addr NAME PID MESSAGE: waits (20 s) for MESSAGE in NAME's log and
# prints the addr= it names: servers bind :0 and say where they listen.
logged_addr() {
    local name=$1 pid=$2 msg=$3 deadline=$((SECONDS + 20)) addr
    while ((SECONDS < deadline)); do
        addr=$(grep -F "$msg" "$WORK/$name.log" 2>/dev/null | tail -1 | grep -o 'addr=[0-9.:]*' | cut -d= -f2) || true
        if [[ -n $addr ]]; then
            echo "$addr"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -5 "$WORK/$name.log" >&2 || true
            die "$name exited before listening (log above)"
        fi
        sleep 0.1
    done
    die "$name did not log '$msg' within 20 s"
}

MGR_URL=
cluster_json() { curl -s --max-time 2 "$MGR_URL/cluster"; }
# Entries on the data nodes as the manager last heard (heartbeats).
cluster_items() { cluster_json | jq '[.nodes[].items // 0] | add // 0' 2>/dev/null || echo 0; }
nodes_up() { cluster_json | jq '[.nodes[] | select(.state == "up")] | length' 2>/dev/null || echo 0; }

# start_cluster TAG BINDIR [DATANODE_ARGS...]: 3 data nodes (ids node1..3)
# and a manager over them, waited for until the manager sees 3 nodes up.
# Sets DN_PID[i], DN_ADDR[i], DN_CMD_TAG, MGR_PID, MGR_URL, REPLICAS.
declare -A DN_PID=() DN_ADDR=()
DN_EXTRA=()
# Extra manager flags (the sourcing script may set them before the call).
MGR_EXTRA=()
start_cluster() {
    local tag=$1 bin=$2 i addrs='' deadline up=0
    shift 2
    DN_EXTRA=("$@")
    for i in 1 2 3; do
        spawn "$tag-node$i" "$bin/datanode" --listen 127.0.0.1:0 --id "node$i" "${DN_EXTRA[@]}"
        DN_PID[$i]=$SPAWNED
    done
    for i in 1 2 3; do
        DN_ADDR[$i]=$(logged_addr "$tag-node$i" "${DN_PID[$i]}" "data node serving gRPC")
        addrs+=${addrs:+,}${DN_ADDR[$i]}
    done
    spawn "$tag-manager" "$bin/manager" --listen 127.0.0.1:0 --nodes "$addrs" "${MGR_EXTRA[@]}"
    MGR_PID=$SPAWNED
    MGR_URL=http://$(logged_addr "$tag-manager" "$MGR_PID" "manager serving HTTP")
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        up=$(nodes_up)
        ((up == 3)) && break
        sleep 0.1
    done
    ((up == 3)) || die "$tag: manager sees $up of 3 data nodes up after 30 s: $(cluster_json)"
    REPLICAS=$(cluster_json | jq '.replicas')
}

stop_cluster() { stop_all "${DN_PID[1]}" "${DN_PID[2]}" "${DN_PID[3]}" "$MGR_PID"; }

# preload URL KEYS VALUE_SIZE: writes key:0..key:KEYS-1 through the manager
# with preload.lua until the nodes hold KEYS * REPLICAS entries (120 s).
preload() {
    local url=$1 keys=$2 size=$3 expected=$(($2 * REPLICAS)) deadline=$((SECONDS + 120)) n=0 wpid code k got
    # wrk calls request() once to check the script, so preload.lua's first
    # key, key:0, is never sent: write it here.
    code=$(head -c "$size" /dev/zero | tr '\0' v | curl -s -o /dev/null -w '%{http_code}' \
        --data-binary @- "$url/?key=key:0") || true
    [[ $code == 20[01] ]] || die "POST key:0 answered '$code'"
    spawn preload env KEYS="$keys" THREADS="$PRELOAD_THREADS" VALUE_SIZE="$size" \
        wrk -t"$PRELOAD_THREADS" -c"$PRELOAD_THREADS" -d180s -s "$ROOT/bench/lua/preload.lua" "$url"
    wpid=$SPAWNED
    while ((SECONDS < deadline)); do
        n=$(cluster_items)
        ((n >= expected)) && break
        sleep 0.2
    done
    kill -INT "$wpid" 2>/dev/null || true
    wait "$wpid" 2>/dev/null || true
    forget "$wpid"
    ((n >= expected)) || die "preload: $n of $expected entries after 120 s"
    if grep -qE "Non-2xx|Socket errors" "$WORK/preload.log"; then
        die "preload saw errors: $(grep -E 'Non-2xx|Socket errors' "$WORK/preload.log")"
    fi
    for k in 0 $((keys - 1)); do
        got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$url/?key=key:$k") || true
        [[ $got == "200 $size" ]] || die "GET key:$k answered '$got', not '200 $size'"
    done
}

# wrk_once OUT OP CONNS SECONDS URL KEYS VALUE_SIZE: one wrk run with
# lua/OP.lua; prints its RESULT line (requests, errors, p50/p99 in us).
wrk_once() {
    local out=$1 op=$2 conns=$3 secs=$4 url=$5 keys=$6 size=$7
    KEYS=$keys VALUE_SIZE=$size timeout --foreground -s INT $((secs + 30)) \
        wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" -s "$ROOT/bench/lua/$op.lua" "$url" >"$out" 2>&1 ||
        die "wrk $op failed (see $out)"
    grep '^RESULT' "$out" || die "wrk printed no RESULT line (see $out)"
}

# rps LINE: requests per second of a RESULT line.
rps() { calc "$(field requests "$1") / ($(field duration_us "$1") / 1e6)"; }
# errs LINE: non-2xx answers and socket errors of a RESULT line.
errs() {
    echo $(($(field non2xx "$1") + $(field connect_err "$1") + $(field read_err "$1") +
        $(field write_err "$1") + $(field timeout "$1")))
}

# spread FMT V...: "median (min-max)" of the values, each printed with FMT.
spread() {
    local fmt=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v f="$fmt" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf f " (" f "-" f ")", m, v[1], v[NR] }'
}
# median_range V...: spread of integers.
median_range() { spread %.0f "$@"; }
# ms_range US...: spread of microsecond figures, in milliseconds.
ms_range() {
    # shellcheck disable=SC2046
    spread %.2f $(printf '%s\n' "$@" | awk '{ print $1 / 1000 }')
}
# median V...: the median alone.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m }'
}

# ---------------------------------------------------------------- slices
# slice_options EVENT: the options of the scripts that run a load in slices
# with one event in the middle (warmup.sh: a kill, handoff.sh: a join), from
# the environment, QUICK=1 making a smoke run. EVENT names the variable of
# the event's time (KILL_AT, JOIN_AT); sets it, EVENT_SLICE and NSLICES.
slice_options() {
    local event=$1
    QUICK=${QUICK:-0}
    if [[ $QUICK == 1 ]]; then
        KEYS=${KEYS:-50000}
        DURATION=${DURATION:-12}
        printf -v "$event" '%s' "${!event:-4}"
    fi
    KEYS=${KEYS:-300000}
    VALUE_SIZE=${VALUE_SIZE:-100}
    CONNS=${CONNS:-16}
    DURATION=${DURATION:-30}
    SLICE=${SLICE:-2}
    printf -v "$event" '%s' "${!event:-6}"
    SYNC_RATE=${SYNC_RATE:-64MiB}
    WAIT_UP=${WAIT_UP:-120}
    MAX_MEMORY=${MAX_MEMORY:-1GiB}
    BUILD=${BUILD:-1}
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
    NSLICES=$(((DURATION + SLICE - 1) / SLICE))
    EVENT_SLICE=$((${!event} / SLICE))
    ((EVENT_SLICE >= 1 && EVENT_SLICE < NSLICES)) ||
        die "$event=${!event} must fall in slices 1..$((NSLICES - 1)) of $SLICE s"
}
