#!/usr/bin/env bash
# ringcache's Redis-protocol (RESP) front against the proxies people would
# run instead, with redis-benchmark, on one machine:
#
#   ringcache   1 manager with --resp-listen in front of 3 data nodes
#   twemproxy   nutcracker (ketama, fnv1a_64) in front of 3 redis-servers
#   redis       a single redis-server
#
# Every system runs at once on 127.0.0.1 (fresh ports), preloaded with the
# same KEYS keys (key:000000000000 .., the names redis-benchmark -r draws)
# of VALUE_SIZE bytes, so every GET hits. Then, for ROUNDS rounds, each
# (clients, pipeline) pair runs `redis-benchmark -t get,set -d VALUE_SIZE
# -r KEYS -n N -c C -P P --csv` against the systems in turn (round 1:
# ringcache, twemproxy, redis; round 2: the same order; ...). Prints per
# test the median requests/s with its min-max range for each system, the
# ratios of the first system to the others (ringcache/twemproxy,
# ringcache/redis) and the median p99 latencies. Every process started is
# stopped by PID on any exit (Ctrl-C included); every redis-benchmark run is
# bounded by RUN_TIMEOUT.
#
#   bench/resp.sh                          # 3 rounds, ~100k requests per test
#   QUICK=1 bench/resp.sh                  # smoke run: 1 round, fewer keys and requests
#   SYSTEMS="twemproxy redis" bench/resp.sh   # without ringcache (no binaries needed)
#
# Needs (Debian): apt-get install -y redis-server redis-tools nutcracker,
# then stop the services the packages start (systemctl stop redis-server
# nutcracker). Nothing is installed here. The ringcache binaries are taken
# from BIN_DIR (target/release): build them first (cargo build --release
# -p ringcache-manager -p ringcache-datanode); the manager must have
# --resp-listen.
#
# Options (environment): SYSTEMS ("ringcache twemproxy redis"; the first is
# the one the ratios are of), ROUNDS (3), KEYS (100000), VALUE_SIZE (100),
# CLIENTS ("16 64", redis-benchmark -c), PIPELINES ("1 16", -P), TESTS
# (get,set), REQUESTS (requests per test at -P 1, 100000),
# REQUESTS_PIPELINED (per test at -P > 1, 1000000), RUN_TIMEOUT (s per
# redis-benchmark run, 120), BENCH_THREADS (redis-benchmark --threads;
# unset: single-threaded), NODE_WORKERS (each data node's --worker-threads,
# 1; empty: the node's default), RESP_FLAGS (more manager flags, e.g.
# "--resp-tracking false"), NUT_CONNECTIONS (twemproxy server_connections,
# 1), LOAD_BATCH (SETs per preload batch, 1000), BIN_DIR, KEEP=1 (keep the
# logs directory).
#
# Exit status: 0 when every run was clean, 2 when a run failed, timed out,
# saw an error reply or a GET missed (the table marks it), 1 when the
# benchmark could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-resp.XXXXXX)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    KEYS=${KEYS:-20000}
    REQUESTS=${REQUESTS:-20000}
    REQUESTS_PIPELINED=${REQUESTS_PIPELINED:-100000}
fi
SYSTEMS=${SYSTEMS:-"ringcache twemproxy redis"}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
CLIENTS=${CLIENTS:-"16 64"}
PIPELINES=${PIPELINES:-"1 16"}
TESTS=${TESTS:-get,set}
REQUESTS=${REQUESTS:-100000}
REQUESTS_PIPELINED=${REQUESTS_PIPELINED:-1000000}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
BENCH_THREADS=${BENCH_THREADS:-}
NODE_WORKERS=${NODE_WORKERS-1}
NUT_CONNECTIONS=${NUT_CONNECTIONS:-1}
RESP_FLAGS=${RESP_FLAGS:-}
LOAD_BATCH=${LOAD_BATCH:-1000}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

read -r -a SYS <<<"$SYSTEMS"
((${#SYS[@]})) || die "SYSTEMS is empty"
declare -A TITLE=([ringcache]="ringcache RESP" [twemproxy]="twemproxy + 3 redis" [redis]="redis-server")
for s in "${SYS[@]}"; do
    [[ -n ${TITLE[$s]:-} ]] || die "unknown system '$s' in SYSTEMS (ringcache, twemproxy, redis)"
done
has() { [[ " $SYSTEMS " == *" $1 "* ]]; }
for v in ROUNDS KEYS VALUE_SIZE REQUESTS REQUESTS_PIPELINED RUN_TIMEOUT LOAD_BATCH; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

# ---------------------------------------------------------------- tools
need=(redis-benchmark redis-cli)
if has twemproxy || has redis; then need+=(redis-server); fi
has twemproxy && need+=(nutcracker)
has ringcache && need+=(jq curl)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
    die "bench/resp.sh needs ${missing[*]}, which this script does not install. As root on Debian:
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools nutcracker jq curl
  then stop the services the packages start, if they run (this script starts its own servers on
  fresh loopback ports): systemctl stop redis-server nutcracker
  (without systemd: service redis-server stop; service nutcracker stop)"
fi
if has ringcache; then
    for b in manager datanode; do
        [[ -x $BIN_DIR/$b ]] ||
            die "$BIN_DIR/$b is missing: cargo build --release -p ringcache-manager -p ringcache-datanode (or set BIN_DIR, or SYSTEMS without ringcache)"
    done
    "$BIN_DIR/manager" --help 2>&1 | grep -q -- --resp-listen ||
        die "$BIN_DIR/manager has no --resp-listen flag (an older build?)"
fi

# ---------------------------------------------------------------- ports
# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"

# ---------------------------------------------------------------- servers
declare -A PORT=() BACKENDS=()

# start_redis NAME: a redis-server on a fresh port, no persistence; sets RPORT.
start_redis() {
    free_port RPORT
    spawn "$1" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --protected-mode no --dir "$WORK" --logfile ''
    wait_port "$RPORT" "$SPAWNED"
}

start_ringcache() {
    local port
    free_port port
    local extra=()
    read -r -a extra <<<"$RESP_FLAGS"
    MGR_EXTRA=(--resp-listen "127.0.0.1:$port" "${extra[@]}")
    if [[ -n $NODE_WORKERS ]]; then
        start_cluster rc "$BIN_DIR" --worker-threads "$NODE_WORKERS"
    else
        start_cluster rc "$BIN_DIR"
    fi
    wait_port "$port" "$MGR_PID"
    PORT[ringcache]=$port
    log "ringcache: manager $MGR_URL, RESP on 127.0.0.1:$port, 3 data nodes, replicas=$REPLICAS"
}

start_twemproxy() {
    local i rp=() np sp
    for i in 1 2 3; do
        start_redis "twem-redis$i"
        rp+=("$RPORT")
    done
    free_port np
    free_port sp
    cat >"$WORK/nutcracker.yml" <<EOF
ring:
  listen: 127.0.0.1:$np
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: $NUT_CONNECTIONS
  servers:
   - 127.0.0.1:${rp[0]}:1 redis1
   - 127.0.0.1:${rp[1]}:1 redis2
   - 127.0.0.1:${rp[2]}:1 redis3
EOF
    nutcracker -t -c "$WORK/nutcracker.yml" >"$WORK/nutcracker-test.log" 2>&1 ||
        die "nutcracker rejects its config: $(cat "$WORK/nutcracker-test.log")"
    spawn nutcracker nutcracker -c "$WORK/nutcracker.yml" -s "$sp" -a 127.0.0.1 -p "$WORK/nutcracker.pid"
    wait_port "$np" "$SPAWNED"
    PORT[twemproxy]=$np
    BACKENDS[twemproxy]="${rp[*]}"
    log "twemproxy: nutcracker on 127.0.0.1:$np over redis on ${rp[*]}"
}

start_single_redis() {
    start_redis redis
    PORT[redis]=$RPORT
    BACKENDS[redis]=$RPORT
    log "redis: redis-server on 127.0.0.1:$RPORT"
}

# ---------------------------------------------------------------- preload
# make_preload: the SETs of key:000000000000 .. key:(KEYS-1) (12 digits, the
# names redis-benchmark -r draws) with VALUE_SIZE-byte values, in RESP, one
# file per LOAD_BATCH keys.
make_preload() {
    mkdir -p "$WORK/preload"
    awk -v n="$KEYS" -v size="$VALUE_SIZE" -v b="$LOAD_BATCH" -v dir="$WORK/preload" 'BEGIN {
        v = sprintf("%" size "s", ""); gsub(/ /, "v", v)
        for (i = 0; i < n; i++) {
            if (i % b == 0) { if (f != "") close(f); f = sprintf("%s/%08d", dir, i / b) }
            k = sprintf("key:%012d", i)
            printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v > f
        }
    }'
}

# resp_load NAME PORT: sends the preload batches over one connection (a
# batch pipelined, then its replies read), each answered by +OK only.
resp_load() {
    local name=$1 port=$2 fd f i=0 cnt got t=$SECONDS
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || die "$name: cannot connect to $port"
    for f in "$WORK"/preload/*; do
        cnt=$((KEYS - i * LOAD_BATCH))
        ((cnt > LOAD_BATCH)) && cnt=$LOAD_BATCH
        timeout 30 cat "$f" >&"$fd" || die "$name: sending preload batch $i timed out or failed"
        got=
        IFS= read -r -N $((5 * cnt)) -t 30 -u "$fd" got ||
            die "$name: preload batch $i: no complete reply in 30 s (got '${got:0:200}')"
        [[ -z ${got//$'+OK\r\n'/} ]] || die "$name: preload batch $i answered '${got:0:200}'"
        i=$((i + 1))
    done
    exec {fd}>&-
    log "$name: $KEYS keys of $VALUE_SIZE B preloaded in $((SECONDS - t)) s"
}

# check_keys NAME PORT: the first and last keys read back with redis-cli.
check_keys() {
    local k got
    for k in 0 $((KEYS - 1)); do
        got=$(printf 'key:%012d' "$k")
        got=$(timeout 10 redis-cli -h 127.0.0.1 -p "$2" GET "$got" | tr -d '\n' | wc -c) || got=error
        [[ $got == "$VALUE_SIZE" ]] || die "$1: GET key $k through redis-cli answered $got bytes, not $VALUE_SIZE"
    done
}

# redis_sum FIELD PORT...: an INFO field summed over redis-servers.
redis_sum() {
    local f=$1 p m s=0
    shift
    for p in "$@"; do
        m=$(timeout 10 redis-cli -h 127.0.0.1 -p "$p" info | tr -d '\r' | grep "^$f:" | cut -d: -f2) || m=
        [[ $m =~ ^[0-9]+$ ]] || die "no $f from redis on $p"
        s=$((s + m))
    done
    echo "$s"
}
dbsize() {
    local p s=0
    for p in "$@"; do s=$((s + $(timeout 10 redis-cli -h 127.0.0.1 -p "$p" dbsize))); done
    echo "$s"
}

preload_system() {
    local s=$1 n deadline
    resp_load "$s" "${PORT[$s]}"
    check_keys "$s" "${PORT[$s]}"
    if [[ $s == ringcache ]]; then
        # The manager hears the nodes' entry counts with their heartbeats.
        deadline=$((SECONDS + 30))
        n=0
        while ((SECONDS < deadline)); do
            n=$(cluster_items)
            ((n >= KEYS * REPLICAS)) && break
            sleep 0.2
        done
        ((n >= KEYS * REPLICAS)) || die "ringcache: the nodes hold $n entries after the preload, not $((KEYS * REPLICAS))"
    else
        # shellcheck disable=SC2086
        n=$(dbsize ${BACKENDS[$s]})
        ((n == KEYS)) || die "$s: the redis-servers hold $n keys after the preload, not $KEYS"
    fi
}

# ---------------------------------------------------------------- runs
# Samples per cell "system|TEST|clients|pipeline": requests/s and p99 (ms),
# space separated; failed runs and missed GETs counted apart.
declare -A S_RPS=() S_P99=() S_FAIL=() S_MISS=() S_DUR=()
STATUS=0
UPPER_TESTS=$(tr 'a-z,' 'A-Z ' <<<"$TESTS")

# bench_run ROUND SYSTEM CLIENTS PIPELINE: one redis-benchmark run of TESTS.
bench_run() {
    local r=$1 s=$2 c=$3 p=$4 n=$REQUESTS out err rc=0 t line rps p99 misses=0 cell summary= bpid
    ((p > 1)) && n=$REQUESTS_PIPELINED
    out=$WORK/rb-$s-c$c-P$p-r$r.csv
    err=$WORK/rb-$s-c$c-P$p-r$r.err
    if [[ -n ${BACKENDS[$s]:-} ]]; then
        for t in ${BACKENDS[$s]}; do
            timeout 10 redis-cli -h 127.0.0.1 -p "$t" config resetstat >/dev/null || die "redis-cli on $t failed"
        done
    fi
    # In the background and waited for, so a signal to the script stops it
    # at once (cleanup stops it by PID); line-buffered, so the CSV lines of
    # the tests that finished survive a timeout.
    timeout -k 10 "$RUN_TIMEOUT" stdbuf -oL redis-benchmark -h 127.0.0.1 -p "${PORT[$s]}" -t "$TESTS" \
        -d "$VALUE_SIZE" -r "$KEYS" -n "$n" -c "$c" -P "$p" --csv ${BENCH_THREADS:+--threads "$BENCH_THREADS"} \
        >"$out" 2>"$err" </dev/null &
    bpid=$!
    PIDS+=("$bpid")
    PNAME[$bpid]=redis-benchmark
    LIVE[$bpid]=1
    wait "$bpid" || rc=$?
    forget "$bpid"
    if [[ -n ${BACKENDS[$s]:-} ]]; then
        # shellcheck disable=SC2086
        misses=$(redis_sum keyspace_misses ${BACKENDS[$s]})
    fi
    for t in $UPPER_TESTS; do
        cell="$s|$t|$c|$p"
        line=$(grep "^\"$t\"," "$out" 2>/dev/null) || line=
        # A test whose line is there finished (a later one may have failed).
        if [[ -z $line ]]; then
            S_FAIL[$cell]=$((${S_FAIL[$cell]:-0} + 1))
            STATUS=2
            summary+=" $t FAILED"
            continue
        fi
        IFS=, read -r _ rps _ _ _ _ p99 _ <<<"$(tr -d '"' <<<"$line")"
        S_RPS[$cell]+=" $rps"
        S_P99[$cell]+=" $p99"
        S_DUR[$cell]+=" $(calc "$n / $rps")"
        if [[ $t == GET ]] && ((misses > 0)); then
            S_MISS[$cell]=$((${S_MISS[$cell]:-0} + misses))
            STATUS=2
        fi
        summary+=" $t ${rps%.*} req/s (p99 $p99 ms)"
    done
    ((rc == 0)) || STATUS=2
    if ((rc == 124)); then
        summary+=" - TIMED OUT after $RUN_TIMEOUT s"
    elif ((rc != 0)); then
        summary+=" - exit $rc: $(grep -v '^WARNING: Could not fetch server CONFIG' "$err" | tr '\r' '\n' | grep . | tail -1 | cut -c1-160)"
    fi
    ((misses == 0)) || summary+=" - $misses GETs missed"
    log "round $r $s c=$c P=$p n=$n:$summary"
}

# ---------------------------------------------------------------- main
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "resp: ${SYS[*]}; $ROUNDS rounds of -t $TESTS, -c {$CLIENTS} x -P {$PIPELINES}, n=$REQUESTS (-P 1) / $REQUESTS_PIPELINED (-P > 1); $KEYS keys x $VALUE_SIZE B; load $LOAD0; logs in $WORK"
if awk -v l="$(load1)" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "WARNING: the machine is busy (load $(load1) on $(nproc) cores): the figures will be skewed"
fi
for s in "${SYS[@]}"; do
    case $s in
    ringcache) start_ringcache ;;
    twemproxy) start_twemproxy ;;
    redis) start_single_redis ;;
    esac
done
make_preload
for s in "${SYS[@]}"; do preload_system "$s"; done

declare -A LOADS=()
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CLIENTS; do
        for p in $PIPELINES; do
            for s in "${SYS[@]}"; do
                bench_run "$r" "$s" "$c" "$p"
            done
            LOADS[$c:$p]+=" $(load1)"
        done
    done
done

# ---------------------------------------------------------------- report
# cell_text CELL: "median (min-max)" of its requests/s, FAILED, or with the
# failures and misses it saw.
cell_text() {
    local cell=$1 txt="FAILED (all runs)"
    # shellcheck disable=SC2086
    if [[ -n ${S_RPS[$cell]:-} ]]; then
        txt=$(median_range ${S_RPS[$cell]})
        [[ -n ${S_FAIL[$cell]:-} ]] && txt+=" ${S_FAIL[$cell]} FAILED"
    fi
    [[ -n ${S_MISS[$cell]:-} ]] && txt+=" ${S_MISS[$cell]} MISSES"
    echo "$txt"
}
cell_median() {
    # shellcheck disable=SC2086
    [[ -n ${S_RPS[$1]:-} ]] && median ${S_RPS[$1]} || true
}

REF=${SYS[0]}
OTHERS=("${SYS[@]:1}")
echo
echo "RESP fronts: $(nproc) cores, load average $LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "redis-benchmark -t $TESTS -d $VALUE_SIZE -r $KEYS (all keys preloaded), n=$REQUESTS at -P 1, $REQUESTS_PIPELINED at -P > 1${BENCH_THREADS:+, --threads $BENCH_THREADS}; median (min-max) requests/s of $ROUNDS rounds, the systems in turn (${SYS[*]})"
vers="redis $(redis-server --version 2>/dev/null | grep -o 'v=[^ ]*' | cut -d= -f2)"
has twemproxy && vers+=", $(nutcracker -V 2>&1 | head -1 | grep -o 'nutcracker-[^ ]*')"
has ringcache && vers+=", ringcache $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes') ($BIN_DIR, data nodes --worker-threads ${NODE_WORKERS:-default}, replicas=$REPLICAS${RESP_FLAGS:+, manager $RESP_FLAGS})"
echo "$vers"
# Columns: a system's cell, a ratio (wide enough for its header).
CW=32
RW=12
for o in "${OTHERS[@]}"; do
    ((${#REF} + ${#o} + 1 > RW)) && RW=$((${#REF} + ${#o} + 1))
done
width=$((16 + (CW + 1) * ${#SYS[@]} + (RW + 1) * ${#OTHERS[@]} + 16))
hr=$(printf '%*s' "$width" '' | tr ' ' -)
echo "$hr"
printf '%-16s' test
for s in "${SYS[@]}"; do printf ' %-*s' "$CW" "${TITLE[$s]}"; done
for o in "${OTHERS[@]}"; do printf ' %*s' "$RW" "$REF/$o"; done
printf '  %s\n' "load avg"
echo "$hr"
for t in $UPPER_TESTS; do
    for c in $CLIENTS; do
        for p in $PIPELINES; do
            printf '%-16s' "$t c=$c P=$p"
            for s in "${SYS[@]}"; do printf ' %-*s' "$CW" "$(cell_text "$s|$t|$c|$p")"; done
            a=$(cell_median "$REF|$t|$c|$p")
            for o in "${OTHERS[@]}"; do
                b=$(cell_median "$o|$t|$c|$p")
                if [[ -n $a && -n $b ]]; then printf ' %*.2fx' $((RW - 1)) "$(calc "$a / $b")"; else printf ' %*s' "$RW" -; fi
            done
            # shellcheck disable=SC2086
            printf '  %s\n' "$(spread %.1f ${LOADS[$c:$p]})"
        done
    done
done
echo "$hr"
echo "p99 latency in ms, median (min-max) of the rounds; and the median length of a run"
for t in $UPPER_TESTS; do
    for c in $CLIENTS; do
        for p in $PIPELINES; do
            printf '%-16s' "$t c=$c P=$p"
            for s in "${SYS[@]}"; do
                cell="$s|$t|$c|$p"
                # shellcheck disable=SC2086
                if [[ -n ${S_RPS[$cell]:-} ]]; then
                    printf ' %-*s' "$CW" "$(spread %.2f ${S_P99[$cell]}), $(median ${S_DUR[$cell]}) s"
                else
                    printf ' %-*s' "$CW" -
                fi
            done
            echo
        done
    done
done
echo "$hr"
echo "total time $((SECONDS - T0)) s"
if ((STATUS != 0)); then
    echo "some runs failed, timed out or missed keys (marked above); logs in $WORK"
    OK_EXIT=1
fi
exit "$STATUS"
