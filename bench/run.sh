#!/usr/bin/env bash
# ringcache side by side with the peers people would pick instead, in one
# command: installs what it needs (Debian), builds the release binaries,
# starts every server on 127.0.0.1 with fresh ports, runs bounded loads,
# stops everything it started (by PID, on any exit) and prints one table.
#
#   bench/run.sh                 # full run, 3 rounds of 4 s loads (~12 min)
#   QUICK=1 bench/run.sh         # smoke run, 2 rounds of 1 s loads
#
# Options (environment): DURATION (s per measured load), WARMUP (s),
# ROUNDS (HTTP rounds, systems alternating; rows show the median and range),
# KEYS, KEYS_BIG (keys of the 1 KiB and 16 KiB rows), ZIPF (exponent of the
# hot-key rows), VALUE_SIZE, CONNS ("16 64"), WRK_THREADS (2), NODE_WORKERS (1:
# each data node's --worker-threads), GRPC_CONCURRENCY (64),
# GRPC_THREADS (1), REDIS_CLIENTS (50), REDIS_N (requests per
# redis-benchmark test; default: calibrated to last DURATION), MEM_ITEMS
# (1000000), RING_KEYS (1000000), CRIT_WARMUP / CRIT_TIME (criterion, s),
# SKIP (comma list of phases to skip: ring,micro,http,grpc,mem), INSTALL=0
# (no apt-get), BUILD=0 (use built binaries), CARGO_TARGET_DIR, KEEP=1
# (keep the logs directory). See bench/README.md for how to read the table.
#
# Exit status: 0 when every load ran clean, 2 when a row is INVALID (it saw
# errors, misses or evictions), 1 when the benchmark could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
export PATH=$PATH:/usr/sbin:/sbin

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-1}
    WARMUP=${WARMUP:-1}
    ROUNDS=${ROUNDS:-2}
    KEYS=${KEYS:-20000}
    KEYS_BIG=${KEYS_BIG:-2000}
    MEM_ITEMS=${MEM_ITEMS:-200000}
    CRIT_WARMUP=${CRIT_WARMUP:-0.2}
    CRIT_TIME=${CRIT_TIME:-0.5}
fi
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-100000}
KEYS_BIG=${KEYS_BIG:-10000}
ZIPF=${ZIPF:-0.99}
VALUE_SIZE=${VALUE_SIZE:-100}
CONNS=${CONNS:-"16 64"}
WRK_THREADS=${WRK_THREADS:-2}
# Runtime workers per data node: three nodes, a manager, the peers and the
# load generator share the machine's cores.
NODE_WORKERS=${NODE_WORKERS:-1}
# One connection per thread: preload.lua stops a thread after its last key.
PRELOAD_THREADS=${PRELOAD_THREADS:-4}
GRPC_CONCURRENCY=${GRPC_CONCURRENCY:-64}
GRPC_THREADS=${GRPC_THREADS:-1}
REDIS_CLIENTS=${REDIS_CLIENTS:-50}
REDIS_N=${REDIS_N:-auto}
MEM_ITEMS=${MEM_ITEMS:-1000000}
RING_KEYS=${RING_KEYS:-1000000}
CRIT_WARMUP=${CRIT_WARMUP:-0.5}
CRIT_TIME=${CRIT_TIME:-2}
SKIP=${SKIP:-}
INSTALL=${INSTALL:-1}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
# The largest connection count is the one the targets are judged at.
TOP_CONNS=$(tr ' ' '\n' <<<"$CONNS" | sort -n | tail -1)

T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-bench.XXXXXX)
# nginx's and memcached's workers run as nobody and read their files here.
chmod 755 "$WORK"

# shellcheck source=bench/proc.sh
source "$ROOT/bench/proc.sh"
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

# ---------------------------------------------------------------- ports
# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"

# calc EXPR: floating-point arithmetic.
# field NAME LINE: the value of NAME=value in a RESULT line.

# ---------------------------------------------------------------- results
# Rows of the table, in order: section|system|op|conc|throughput|unit|p50|p99|errors|status|note
ROWS=()
declare -A RPS=() P99=() VALID=()
INVALID_ROWS=0

# row KEY SECTION SYSTEM OP CONC THROUGHPUT UNIT P50_US P99_US ERRORS NOTE
row() {
    local key=$1 status=ok
    shift
    if [[ $9 != 0 ]]; then
        status=INVALID
        INVALID_ROWS=$((INVALID_ROWS + 1))
    fi
    ROWS+=("$1|$2|$3|$4|$5|$6|$7|$8|$9|$status|${10:-}")
    RPS[$key]=$5
    P99[$key]=$8
    VALID[$key]=$status
}

# ---------------------------------------------------------------- setup
build() {
    [[ $BUILD == 1 ]] || return 0
    log "building release binaries into $TARGET_DIR (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet \
        -p ringcache-manager -p ringcache-datanode -p ringcache-bench) ||
        die "cargo build failed"
    if ! skipped micro; then
        (cd "$ROOT" && cargo bench --quiet --no-run -p ringcache-datanode --bench store \
            >"$WORK/criterion-build.log" 2>&1) || {
            tail -20 "$WORK/criterion-build.log" >&2
            die "building the criterion benchmarks failed"
        }
    fi
}

# ---------------------------------------------------------------- HTTP loads
# Every system runs at once, and each load runs ROUNDS times: round r
# takes the systems in an order rotated by r, so no system always runs
# first (or right after a given other one) while the machine's state
# drifts. A row shows the median of the rounds and their range.
#
# Keyspaces: KEY_PREFIX "key:" holds KEYS keys of VALUE_SIZE bytes (the
# uniform and the Zipf rows), "v1k:" and "v16k:" KEYS_BIG keys of 1 KiB
# and 16 KiB.
declare -A SAMPLE_RPS=() SAMPLE_P50=() SAMPLE_P99=() SAMPLE_ERR=() SAMPLE_NAME=() SAMPLE_OP=()
SAMPLE_ORDER=()

# wrk_sample KEY SYSTEM OPLABEL CONNS URL SCRIPT ENV...: one measured wrk run,
# appended to the samples of KEY (ENV: NAME=VALUE for the Lua script).
wrk_sample() {
    local key=$1 system=$2 oplabel=$3 conns=$4 url=$5 script=$6 out line reqs dur errs rps
    shift 6
    out=$WORK/wrk-${key//[: ]/_}.log
    env KEYS="$KEYS" VALUE_SIZE="$VALUE_SIZE" "$@" timeout --foreground -s INT $((DURATION + 30)) \
        wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" -s "$BENCH/lua/$script" "$url" >"$out" 2>&1 ||
        die "wrk against $system failed (see $out)"
    line=$(grep '^RESULT' "$out") || die "wrk printed no RESULT line (see $out)"
    reqs=$(field requests "$line")
    dur=$(field duration_us "$line")
    errs=$(($(field non2xx "$line") + $(field connect_err "$line") + $(field read_err "$line") +
        $(field write_err "$line") + $(field timeout "$line")))
    rps=$(calc "$reqs / ($dur / 1e6)")
    if [[ -z ${SAMPLE_NAME[$key]:-} ]]; then
        SAMPLE_ORDER+=("$key")
        SAMPLE_NAME[$key]=$system
        SAMPLE_OP[$key]="$oplabel|$conns"
        SAMPLE_ERR[$key]=0
    fi
    SAMPLE_RPS[$key]+=" $rps"
    SAMPLE_P50[$key]+=" $(field p50_us "$line")"
    SAMPLE_P99[$key]+=" $(field p99_us "$line")"
    SAMPLE_ERR[$key]=$((SAMPLE_ERR[$key] + errs))
    log "  $system $oplabel c=$conns: ${rps%.*} req/s, p99 $(field p99_us "$line") us, $errs errors"
}

# stats VALUES...: "median min max" (the median of an even count is the
# mean of the middle two).
stats() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.4f %.4f %.4f", m, v[1], v[NR] }'
}

# summarize: one table row per sampled load (median, range in the note).
summarize() {
    local key med lo hi p50 p99 plo phi oplabel conns
    for key in "${SAMPLE_ORDER[@]}"; do
        read -r med lo hi <<<"$(stats ${SAMPLE_RPS[$key]})"
        read -r p50 _ _ <<<"$(stats ${SAMPLE_P50[$key]})"
        read -r p99 plo phi <<<"$(stats ${SAMPLE_P99[$key]})"
        IFS='|' read -r oplabel conns <<<"${SAMPLE_OP[$key]}"
        row "$key" http "${SAMPLE_NAME[$key]}" "$oplabel" "$conns" "$med" "req/s" \
            "${p50%.*}" "${p99%.*}" "${SAMPLE_ERR[$key]}" \
            "n=$(wc -w <<<"${SAMPLE_RPS[$key]}"): $(fmt_num "$lo")-$(fmt_num "$hi") req/s, p99 $(fmt_us "${plo%.*}")-$(fmt_us "${phi%.*}")"
    done
}

# warm URL [ENV...]: an unmeasured GET load at the top connection count.
warm() {
    [[ $WARMUP == 0 ]] && return 0
    local url=$1
    shift
    env KEYS="$KEYS" "$@" timeout --foreground -s INT $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$TOP_CONNS" \
        -d"${WARMUP}s" -s "$BENCH/lua/get.lua" "$url" >"$WORK/warmup.log" 2>&1 || die "warm-up wrk failed"
}

# http_preload NAME URL COUNT_FN EXPECTED PREFIX NKEYS SIZE: writes
# PREFIX0 .. PREFIX(NKEYS-1) through HTTP with preload.lua, until COUNT_FN
# reports EXPECTED entries in all (90 s deadline).
http_preload() {
    local name=$1 url=$2 count_fn=$3 expected=$4 prefix=$5 nkeys=$6 size=$7 deadline=$((SECONDS + 90)) n=0 wpid code
    # wrk calls request() once in its first thread to check the script
    # (script_verify_request), so preload.lua's first key is never sent:
    # write it here.
    code=$(head -c "$size" /dev/zero | tr '\0' v | curl -s -o /dev/null -w '%{http_code}' \
        --data-binary @- "$url/?key=${prefix}0") || true
    [[ $code == 20[01] ]] || die "$name: POST ${prefix}0 answered '$code'"
    spawn "preload-$name-${prefix%:}" env KEYS="$nkeys" THREADS="$PRELOAD_THREADS" VALUE_SIZE="$size" \
        KEY_PREFIX="$prefix" wrk -t"$PRELOAD_THREADS" -c"$PRELOAD_THREADS" -d120s -s "$BENCH/lua/preload.lua" "$url"
    wpid=$SPAWNED
    while ((SECONDS < deadline)); do
        n=$($count_fn) || n=0
        ((n >= expected)) && break
        sleep 0.2
    done
    # SIGINT ends wrk's wait for -d early; it still prints its summary.
    kill -INT "$wpid" 2>/dev/null || true
    wait "$wpid" 2>/dev/null || true
    forget "$wpid"
    ((n >= expected)) || die "preload of $name ($prefix): $n of $expected entries after 90 s"
    if grep -qE "Non-2xx|Socket errors" "$WORK/preload-$name-${prefix%:}.log"; then
        die "preload of $name saw errors: $(grep -E 'Non-2xx|Socket errors' "$WORK/preload-$name-${prefix%:}.log")"
    fi
    check_get "$name" "$url" "$prefix" "$nkeys" "$size"
}

# check_get NAME URL [PREFIX NKEYS SIZE]: the first and last keys read back
# with their size.
check_get() {
    local k got prefix=${3:-key:} nkeys=${4:-$KEYS} size=${5:-$VALUE_SIZE}
    for k in 0 $((nkeys - 1)); do
        got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$2/?key=$prefix$k") || true
        [[ $got == "200 $size" ]] || die "$1: GET $prefix$k answered '$got', not '200 $size'"
    done
}

MGR_URL=
cluster_json() { curl -s --max-time 2 "${1:-$MGR_URL}/cluster"; }
# Entries on the data nodes as the manager last heard (heartbeats, 1 s).
ringcache_items() {
    cluster_json | sed 's/"near_cache".*//' | grep -o '"items":[0-9]*' | cut -d: -f2 |
        awk '{ s += $1 } END { print s + 0 }'
}

# start_manager NAME EXTRA_ARGS...: a manager over the 3 data nodes, waited
# for until it sees every node up.
start_manager() {
    local name=$1 port deadline up=0
    shift
    free_port port
    spawn "$name" "$BIN/manager" --listen "127.0.0.1:$port" --nodes "$DN_ADDRS" "$@"
    MGR_PID=$SPAWNED
    wait_port "$port" "$MGR_PID"
    MGR_URL=http://127.0.0.1:$port
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        up=$(cluster_json | grep -o '"state":"up"' | wc -l) || up=0
        ((up == 3)) && return 0
        sleep 0.2
    done
    die "$name sees $up of 3 data nodes up after 20 s: $(cluster_json)"
}

# The systems of the HTTP rounds: key prefix of their rows, name, URL.
HSYS=()
declare -A HNAME=() HURL=()
add_system() {
    HSYS+=("$1")
    HNAME[$1]=$2
    HURL[$1]=$3
}

# round_load R KIND SYSTEMS...: one load kind against each system, in an
# order rotated by the round number R.
round_load() {
    local r=$1 kind=$2 c i n s
    shift 2
    local systems=("$@")
    n=${#systems[@]}
    for c in $CONNS; do
        for ((i = 0; i < n; i++)); do
            s=${systems[(i + r) % n]}
            case $kind in
            GET) wrk_sample "$s:GET:$c" "${HNAME[$s]}" "GET" "$c" "${HURL[$s]}" get.lua ;;
            POST) wrk_sample "$s:POST:$c" "${HNAME[$s]}" "POST" "$c" "${HURL[$s]}" post.lua ;;
            zipf) wrk_sample "$s:GET-zipf:$c" "${HNAME[$s]}" "GET zipf $ZIPF" "$c" "${HURL[$s]}" get.lua \
                ZIPF="$ZIPF" ;;
            1k) wrk_sample "$s:GET-1KiB:$c" "${HNAME[$s]}" "GET 1KiB" "$c" "${HURL[$s]}" get.lua \
                KEYS="$KEYS_BIG" KEY_PREFIX=v1k: ;;
            16k) wrk_sample "$s:GET-16KiB:$c" "${HNAME[$s]}" "GET 16KiB" "$c" "${HURL[$s]}" get.lua \
                KEYS="$KEYS_BIG" KEY_PREFIX=v16k: ;;
            esac
        done
    done
}

# start_nodes NAME: 3 data nodes named NAME1..3 with NODE_WORKERS runtime
# workers each; sets DN_ADDRS.
start_nodes() {
    local i port pids=() ports=()
    for i in 1 2 3; do
        free_port port
        spawn "$1$i" "$BIN/datanode" --listen "127.0.0.1:$port" --id "$1$i" --worker-threads "$NODE_WORKERS"
        pids+=("$SPAWNED")
        ports+=("$port")
    done
    for i in 0 1 2; do wait_port "${ports[i]}" "${pids[i]}"; done
    DN_ADDRS=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}
}

phase_http() {
    log "HTTP: starting ringcache (1 manager + 3 data nodes, and a near-cache manager with 3 nodes of its own), the axum ceiling and nginx + 3 memcached"
    local port total first=${#PIDS[@]}

    # The near-cache manager has nodes of its own: on shared nodes it would
    # receive (and the nodes would send it) an invalidation for every write
    # of the plain manager's POST rows, work that belongs to neither row.
    start_nodes dnnear
    start_manager manager-near --near-cache 64MiB
    local near_url=$MGR_URL replicas
    replicas=$(cluster_json | grep -o '"replicas":[0-9]*' | cut -d: -f2)
    http_preload ringcache "$near_url" ringcache_items $((KEYS * replicas)) key: "$KEYS" "$VALUE_SIZE"
    start_nodes dn
    start_manager manager
    add_system rc "ringcache (replicas=$replicas)" "$MGR_URL"
    add_system rcnear "ringcache near-cache 64MiB" "$near_url"
    total=$KEYS
    http_preload ringcache "$MGR_URL" ringcache_items $((total * replicas)) key: "$KEYS" "$VALUE_SIZE"
    total=$((total + KEYS_BIG))
    http_preload ringcache "$MGR_URL" ringcache_items $((total * replicas)) v1k: "$KEYS_BIG" 1024
    total=$((total + KEYS_BIG))
    http_preload ringcache "$MGR_URL" ringcache_items $((total * replicas)) v16k: "$KEYS_BIG" 16384
    check_get ringcache-near "$near_url"

    free_port port
    spawn http_ceiling "$BIN/http_ceiling" --listen "127.0.0.1:$port"
    wait_port "$port" "$SPAWNED"
    CEIL_URL=http://127.0.0.1:$port
    add_system axum "axum ceiling (HashMap)" "$CEIL_URL"
    ceiling_items() { curl -s --max-time 2 "$CEIL_URL/stats"; }
    total=$KEYS
    http_preload ceiling "$CEIL_URL" ceiling_items "$total" key: "$KEYS" "$VALUE_SIZE"
    total=$((total + KEYS_BIG))
    http_preload ceiling "$CEIL_URL" ceiling_items "$total" v1k: "$KEYS_BIG" 1024
    total=$((total + KEYS_BIG))
    http_preload ceiling "$CEIL_URL" ceiling_items "$total" v16k: "$KEYS_BIG" 16384

    local mc_ports=() np mcaddrs
    for i in 1 2 3; do
        free_port port
        spawn "memcached$i" memcached -u nobody -l 127.0.0.1 -p "$port" -U 0 -m 512 -c 4096
        mc_ports+=("$port")
        wait_port "$port" "$SPAWNED"
    done
    mcaddrs=127.0.0.1:${mc_ports[0]},127.0.0.1:${mc_ports[1]},127.0.0.1:${mc_ports[2]}
    # Every key into every instance: whichever one nginx's hash picks has it.
    "$BIN/kv_load" --proto memcached --keys "$KEYS" --value-size "$VALUE_SIZE" --addr "$mcaddrs" \
        >"$WORK/kv_load-memcached.log" 2>&1 &&
        "$BIN/kv_load" --proto memcached --keys "$KEYS_BIG" --value-size 1024 --prefix v1k: --addr "$mcaddrs" \
            >>"$WORK/kv_load-memcached.log" 2>&1 &&
        "$BIN/kv_load" --proto memcached --keys "$KEYS_BIG" --value-size 16384 --prefix v16k: --addr "$mcaddrs" \
            >>"$WORK/kv_load-memcached.log" 2>&1 ||
        die "preloading memcached failed (see $WORK/kv_load-memcached.log)"
    free_port np
    mkdir -p "$WORK/nginx-tmp"
    sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$np|g" -e "s|@MC1@|${mc_ports[0]}|g" \
        -e "s|@MC2@|${mc_ports[1]}|g" -e "s|@MC3@|${mc_ports[2]}|g" \
        "$BENCH/nginx.conf.tmpl" >"$WORK/nginx.conf"
    nginx -t -q -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/nginx-test.log" 2>&1 ||
        die "nginx rejects its config: $(cat "$WORK/nginx-test.log")"
    spawn nginx nginx -p "$WORK" -c "$WORK/nginx.conf"
    wait_port "$np" "$SPAWNED"
    add_system ngx "nginx + 3 memcached" "http://127.0.0.1:$np"
    check_get nginx-memcached "${HURL[ngx]}"
    check_get nginx-memcached "${HURL[ngx]}" v16k: "$KEYS_BIG" 16384

    local s r
    for s in "${HSYS[@]}"; do warm "${HURL[$s]}"; done
    for ((r = 0; r < ROUNDS; r++)); do
        log "HTTP round $((r + 1)) of $ROUNDS"
        round_load "$r" GET rc ngx axum rcnear
        round_load "$r" POST rc axum
        round_load "$r" zipf rc ngx axum rcnear
        round_load "$r" 1k rc ngx axum
        round_load "$r" 16k rc ngx axum
    done
    NEAR_STATS=$(cluster_json "$near_url" | grep -o '"near_cache":{[^}]*}' || true)
    summarize
    stop_all "${PIDS[@]:first}"
}

# ---------------------------------------------------------------- gRPC vs redis
# redis_bench KEY SYSTEM PORT BACKEND_PORT...: redis-benchmark GET and SET
# rows; GETs that missed on the backends count as errors.
redis_bench() {
    local key=$1 system=$2 port=$3 n=$REDIS_N out line t rps p50 p99 errs misses p
    shift 3
    if [[ $n == auto ]]; then
        # Calibrate the request count so each test lasts about DURATION.
        timeout --foreground 60 redis-benchmark -h 127.0.0.1 -p "$port" -c "$REDIS_CLIENTS" -d "$VALUE_SIZE" \
            -r "$KEYS" -t get -n 20000 --csv >"$WORK/redis-calibrate-$key.log" 2>&1 ||
            die "redis-benchmark calibration against $system failed"
        rps=$(grep '^"GET"' "$WORK/redis-calibrate-$key.log" | cut -d, -f2 | tr -d '"')
        n=$(calc "$rps * $DURATION" | cut -d. -f1)
        ((n >= 20000)) || n=20000
    fi
    out=$WORK/redis-benchmark-$key.log
    for p in "$@"; do redis-cli -p "$p" config resetstat >/dev/null || die "redis-cli on $p failed"; done
    timeout --foreground $((DURATION * 4 + 60)) redis-benchmark -h 127.0.0.1 -p "$port" -c "$REDIS_CLIENTS" \
        -d "$VALUE_SIZE" -r "$KEYS" -t get,set -n "$n" --csv >"$out" 2>&1 ||
        die "redis-benchmark against $system failed (see $out)"
    errs=$(grep -ciE 'error|refused' "$out") || errs=0
    misses=$(redis_misses "$@")
    ((misses == 0)) || log "  $system: $misses GETs missed"
    for t in GET SET; do
        line=$(grep "^\"$t\"" "$out") || die "redis-benchmark printed no $t line (see $out)"
        IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$(tr -d '"' <<<"$line")"
        row "$key:$t" grpc "$system" "$t" "$REDIS_CLIENTS" "$rps" "ops/s" \
            "$(calc "$p50 * 1000" | cut -d. -f1)" "$(calc "$p99 * 1000" | cut -d. -f1)" \
            "$((errs + $([[ $t == GET ]] && echo "$misses" || echo 0)))" "n=$n, -c $REDIS_CLIENTS, no pipelining"
        log "  $system $t: $rps ops/s"
    done
}

# redis_misses PORT...: keyspace misses summed over redis servers.
redis_misses() {
    local p m s=0
    for p in "$@"; do
        m=$(redis-cli -p "$p" info stats | tr -d '\r' | grep '^keyspace_misses:' | cut -d: -f2) || m=
        [[ $m =~ ^[0-9]+$ ]] || die "no keyspace_misses from redis on $p"
        s=$((s + m))
    done
    echo "$s"
}

phase_grpc() {
    log "gRPC: unary Get/Set against one data node"
    local port pid out line op
    free_port port
    spawn datanode-grpc "$BIN/datanode" --listen "127.0.0.1:$port" --id grpc
    pid=$SPAWNED
    wait_port "$port" "$pid"
    out=$WORK/grpc_load.log
    timeout --foreground $((DURATION * 2 + WARMUP * 2 + 120)) "$BIN/grpc_load" --addr "http://127.0.0.1:$port" \
        --preload --ops get,set --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --concurrency "$GRPC_CONCURRENCY" --threads "$GRPC_THREADS" \
        --duration "${DURATION}s" --warmup "${WARMUP}s" >"$out" 2>"$WORK/grpc_load.err" ||
        die "grpc_load failed: $(tail -3 "$WORK/grpc_load.err")"
    for op in get set; do
        line=$(grep "^RESULT op=$op " "$out") || die "grpc_load printed no $op result"
        row "dn:$op" grpc "datanode unary gRPC" "${op^^}" "$GRPC_CONCURRENCY" \
            "$(field ops_per_s "$line")" "ops/s" "$(field p50_us "$line")" "$(field p99_us "$line")" \
            "$(($(field errors "$line") + $(field not_found "$line")))" \
            "1 channel, client threads=$GRPC_THREADS"
        log "  datanode $op: $(field ops_per_s "$line") ops/s"
    done
    stop "$pid"

    log "gRPC: redis-benchmark against redis-server and twemproxy + 3 redis"
    local i rp=() rpid=() np npid
    for i in 0 1 2 3; do
        free_port port
        spawn "redis$i" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --protected-mode no --dir "$WORK" --logfile ""
        rpid+=("$SPAWNED")
        rp+=("$port")
    done
    for i in 0 1 2 3; do wait_port "${rp[i]}" "${rpid[i]}"; done
    "$BIN/kv_load" --proto redis --keys "$KEYS" --width 12 --value-size "$VALUE_SIZE" \
        --addr "127.0.0.1:${rp[0]},127.0.0.1:${rp[1]},127.0.0.1:${rp[2]},127.0.0.1:${rp[3]}" \
        >"$WORK/kv_load-redis.log" 2>&1 || die "preloading redis failed (see $WORK/kv_load-redis.log)"
    redis_bench redis "redis-server" "${rp[0]}" "${rp[0]}"

    free_port np
    local sp
    free_port sp
    cat >"$WORK/nutcracker.yml" <<EOF
ring:
  listen: 127.0.0.1:$np
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - 127.0.0.1:${rp[1]}:1 redis1
   - 127.0.0.1:${rp[2]}:1 redis2
   - 127.0.0.1:${rp[3]}:1 redis3
EOF
    nutcracker -t -c "$WORK/nutcracker.yml" >"$WORK/nutcracker-test.log" 2>&1 ||
        die "nutcracker rejects its config: $(cat "$WORK/nutcracker-test.log")"
    spawn nutcracker nutcracker -c "$WORK/nutcracker.yml" -s "$sp" -a 127.0.0.1 \
        -p "$WORK/nutcracker.pid"
    npid=$SPAWNED
    wait_port "$np" "$npid"
    redis_bench twem "twemproxy + 3 redis" "$np" "${rp[1]}" "${rp[2]}" "${rp[3]}"
    stop "$npid"
    stop_all "${rpid[@]}"
}

# ---------------------------------------------------------------- memory
# mem_run TARGET PORT PID LABEL: one mem_per_item row (it fails on evictions).
mem_run() {
    local target=$1 port=$2 pid=$3 label=$4 line
    wait_port "$port" "$pid"
    line=$(timeout --foreground 300 "$BIN/mem_per_item" --target "$target" --addr "127.0.0.1:$port" \
        --pid "$pid" --items "$MEM_ITEMS" 2>"$WORK/mem-$target.err") ||
        die "mem_per_item $target failed: $(tail -3 "$WORK/mem-$target.err") $line"
    MEM_RSS[$target]=$(field rss_overhead "$line")
    MEM_ACC[$target]=$(field accounted_overhead "$line")
    ROWS+=("memory|$label|per item|$MEM_ITEMS|$(field rss_per_item "$line")|B RSS|-|-|$(field evictions "$line")|ok|overhead: RSS $(field rss_overhead "$line") B, accounted $(field accounted_overhead "$line") B")
    log "  $label: RSS overhead $(field rss_overhead "$line") B/item, accounted $(field accounted_overhead "$line") B/item"
    stop "$pid"
}

declare -A MEM_RSS=() MEM_ACC=()
phase_mem() {
    log "memory per item: $MEM_ITEMS items of 10 B keys and 100 B values"
    local port
    free_port port
    spawn datanode-mem "$BIN/datanode" --listen "127.0.0.1:$port" --id mem --max-memory 2GiB
    mem_run datanode "$port" "$SPAWNED" "datanode"
    free_port port
    spawn memcached-mem memcached -u nobody -l 127.0.0.1 -p "$port" -U 0 -m 2048 -c 1024
    mem_run memcached "$port" "$SPAWNED" "memcached"
    free_port port
    spawn redis-mem redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --protected-mode no --dir "$WORK" --logfile ""
    mem_run redis "$port" "$SPAWNED" "redis-server"
}

# ---------------------------------------------------------------- micro
phase_micro() {
    log "criterion: Store get/set (warm-up ${CRIT_WARMUP}s, measurement ${CRIT_TIME}s each)"
    local out=$WORK/criterion.log
    (cd "$ROOT" && timeout --foreground 600 cargo bench --quiet -p ringcache-datanode --bench store -- \
        --warm-up-time "$CRIT_WARMUP" --measurement-time "$CRIT_TIME" --noplot >"$out" 2>&1) ||
        die "criterion benchmarks failed (see $out)"
    # "store/get/100B/1t  time: [lo mid hi]" / "thrpt: [lo mid hi]": the middle
    # estimates, throughput in operations per second.
    local name t thr
    while IFS='|' read -r name t thr; do
        # The conc column: threads and subscriber ("2t/status").
        ROWS+=("micro|criterion|$name|${name#store/*/*/}|$thr|ops/s|$t|-|0|ok|p50 column: time per op, all threads together")
        RPS["micro:$name"]=$thr
    done < <(awk '
        /^store\// { name = $1 }
        /time:/ && name != "" { sub(/.*\[/, ""); u = $4; sub(/µ/, "u", u); t = $3 " " u }
        /thrpt:/ && name != "" {
            sub(/.*\[/, ""); v = $3; u = $4
            m = (u ~ /^K/) ? 1e3 : (u ~ /^M/) ? 1e6 : (u ~ /^G/) ? 1e9 : 1
            printf "%s|%s|%.0f\n", name, t, v * m; name = ""
        }' "$out")
    grep -q '^store/' "$out" || die "no criterion figures in $out"
}

# ---------------------------------------------------------------- ring
phase_ring() {
    log "ring quality ($RING_KEYS keys)"
    local out line
    out=$("$BIN/ring_quality" --keys "$RING_KEYS") || die "ring_quality failed"
    while read -r line; do
        case $(field check "$line") in
        spread)
            RING_SD[$(field nodes "$line")]=$(field stddev_pct "$line")
            ROWS+=("ring|$(field nodes "$line") nodes, $(field vnodes "$line") vnodes|keys/node|-|$(field stddev_pct "$line")|% stddev|-|-|0|ok|min $(field min_pct "$line")%, max $(field max_pct "$line")% of mean")
            ;;
        join)
            RING_MOVED=$(field moved_fraction "$line")
            ROWS+=("ring|3 -> 4 nodes|moved|-|$RING_MOVED|of keys|-|-|0|ok|ideal 0.25; $(field moved_not_to_new "$line") moved between old nodes")
            ;;
        esac
    done <<<"$out"
}
declare -A RING_SD=()
RING_MOVED=

# ---------------------------------------------------------------- report
fmt_num() { awk -v x="$1" 'BEGIN { if (x == "-" || x == "") print "-"; else if (x >= 100) printf "%.0f", x; else printf "%.2f", x }'; }
fmt_us() {
    [[ $1 == - || -z $1 ]] && { echo -; return; }
    awk -v x="$1" 'BEGIN { if (x >= 1000) printf "%.2f ms", x / 1000; else printf "%d us", x }'
}

TARGET_LINES=()
# target NAME VALUE OP LIMIT SUFFIX ROWKEY...: one target line. VALUE is
# empty when a figure is missing; a target over an INVALID row is INVALID.
target() {
    local name=$1 value=$2 op=$3 limit=$4 sfx=$5 verdict shown=- k
    shift 5
    if [[ -z $value ]]; then
        verdict="not run"
    else
        verdict=$(awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN {
            ok = (op == ">=") ? (v >= l) : (v <= l); print ok ? "met" : "MISSED" }')
        for k in "$@"; do
            [[ ${VALID[$k]:-} == ok ]] || verdict=INVALID
        done
        shown=$(printf '%.2f%s' "$value" "$sfx")
    fi
    TARGET_LINES+=("$(printf '  %-50s %10s   target %2s %s%s   %s' "$name" "$shown" "$op" "$limit" "$sfx" "$verdict")")
}

ratio() { # ratio A B: A / B, empty when either is missing
    [[ -n ${1:-} && -n ${2:-} ]] && calc "$1 / $2" || true
}

report() {
    local c=$TOP_CONNS load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo
    echo "ringcache benchmarks: $(nproc) cores, load average $LOAD0 at the start, $load at the end; wrk -t$WRK_THREADS, HTTP: median of $ROUNDS alternating ${DURATION}s runs after a ${WARMUP}s warm-up; $KEYS keys of $VALUE_SIZE B ($KEYS_BIG of 1 KiB and 16 KiB), Zipf exponent $ZIPF"
    echo "peers: $(nginx -v 2>&1 | sed 's/.*version: //'), memcached $(memcached -V | cut -d' ' -f2), redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2), $(nutcracker -V 2>&1 | head -1 | grep -o 'nutcracker-[^ ]*'), wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
    printf '%s\n' "--------------------------------------------------------------------------------------------------------------------------------------"
    printf '%-7s %-28s %-18s %6s %12s %-8s %10s %10s %7s %-8s %s\n' \
        section system op conc throughput unit p50 p99 errors status note
    printf '%s\n' "--------------------------------------------------------------------------------------------------------------------------------------"
    local r sec sys op conc thr unit p50 p99 errs status note
    for r in "${ROWS[@]}"; do
        IFS='|' read -r sec sys op conc thr unit p50 p99 errs status note <<<"$r"
        if [[ $sec == micro ]]; then
            p50=$p50 # already "123.4 ns"
        else
            p50=$(fmt_us "$p50")
        fi
        printf '%-7s %-28s %-18s %6s %12s %-8s %10s %10s %7s %-8s %s\n' \
            "$sec" "$sys" "$op" "$conc" "$(fmt_num "$thr")" "$unit" "$p50" "$(fmt_us "$p99")" \
            "$errs" "$status" "$note"
    done
    printf '%s\n' "--------------------------------------------------------------------------------------------------------------------------------------"
    echo "ratios and targets (HTTP: ratios of the medians; the axum target at $c connections)"
    local tc want
    for tc in $CONNS; do
        # Ahead at the top connection count, at least level below it.
        want=1.0
        [[ $tc == "$c" ]] && want=1.3
        target "ringcache GET / nginx+memcached GET, c=$tc" "$(ratio "${RPS[rc:GET:$tc]:-}" "${RPS[ngx:GET:$tc]:-}")" ">=" $want x "rc:GET:$tc" "ngx:GET:$tc"
        target "ringcache GET p99 / nginx+memcached's, c=$tc" "$(ratio "${P99[rc:GET:$tc]:-}" "${P99[ngx:GET:$tc]:-}")" "<=" 1.5 x "rc:GET:$tc" "ngx:GET:$tc"
        target "ringcache POST / ringcache GET, c=$tc" "$(ratio "${RPS[rc:POST:$tc]:-}" "${RPS[rc:GET:$tc]:-}")" ">=" 0.8 x "rc:POST:$tc" "rc:GET:$tc"
    done
    target "ringcache GET / axum ceiling GET" "$(ratio "${RPS[rc:GET:$c]:-}" "${RPS[axum:GET:$c]:-}")" ">=" 0.6 x "rc:GET:$c" "axum:GET:$c"
    target "store set, 2 threads / 1, with a manager subscribed" "$(ratio "${RPS[micro:store/set/100B/2t/status]:-}" "${RPS[micro:store/set/100B/1t/status]:-}")" ">=" 1.6 x
    target "datanode gRPC GET / redis-benchmark GET" "$(ratio "${RPS[dn:get]:-}" "${RPS[redis:GET]:-}")" ">=" 0.7 x "dn:get" "redis:GET"
    local memdiff=
    if [[ -n ${MEM_RSS[datanode]:-} && -n ${MEM_RSS[memcached]:-} ]]; then
        memdiff=$(calc "${MEM_RSS[datanode]} - ${MEM_RSS[memcached]}")
    fi
    target "datanode RSS overhead/item minus memcached's" "$memdiff" "<=" 0 " B"
    target "ring: stddev of keys per node, 3 nodes" "${RING_SD[3]:-}" "<=" 5 " %"
    local off=
    [[ -n $RING_MOVED ]] && off=$(calc "100 * ($RING_MOVED - 0.25) / 0.25" | tr -d '-')
    target "ring: moved on a 3->4 join, off from 1/4 by" "$off" "<=" 10 " %"
    printf '%s\n' "${TARGET_LINES[@]}"
    echo "ratios of medians (HTTP), per load and connection count"
    local v cc a b x
    for v in GET GET-zipf GET-1KiB GET-16KiB; do
        for cc in $CONNS; do
            a=$(ratio "${RPS[rc:$v:$cc]:-}" "${RPS[ngx:$v:$cc]:-}")
            b=$(ratio "${P99[rc:$v:$cc]:-}" "${P99[ngx:$v:$cc]:-}")
            x=$(ratio "${RPS[rc:$v:$cc]:-}" "${RPS[axum:$v:$cc]:-}")
            local nr
            nr=$(ratio "${RPS[rcnear:$v:$cc]:-}" "${RPS[ngx:$v:$cc]:-}")
            [[ -n $a ]] && printf '  %-10s c=%-3s ringcache/nginx+memcached %5.2fx  p99 %5.2fx   ringcache/axum %5.2fx%s\n' \
                "$v" "$cc" "$a" "${b:-0}" "${x:-0}" "${nr:+   near-cache/nginx+memcached $(printf '%.2f' "$nr")x}"
        done
    done
    for cc in $CONNS; do
        x=$(ratio "${RPS[rc:POST:$cc]:-}" "${RPS[rc:GET:$cc]:-}")
        [[ -n $x ]] && printf '  %-10s c=%-3s ringcache POST/GET %5.2fx\n' POST "$cc" "$x"
    done
    echo "for information"
    x=$(ratio "${RPS[rcnear:GET:$c]:-}" "${RPS[ngx:GET:$c]:-}")
    [[ -n $x ]] && printf '  %-52s %9.2fx\n' "ringcache near-cache GET / nginx+memcached GET" "$x"
    x=$(ratio "${RPS[rcnear:GET:$c]:-}" "${RPS[rc:GET:$c]:-}")
    [[ -n $x ]] && printf '  %-52s %9.2fx   %s\n' "ringcache near-cache GET / ringcache GET" "$x" "${NEAR_STATS:-}"
    x=$(ratio "${RPS[twem:GET]:-}" "${RPS[redis:GET]:-}")
    [[ -n $x ]] && printf '  %-52s %9.2fx\n' "twemproxy GET / redis-server GET" "$x"
    x=$(ratio "${RPS[dn:get]:-}" "${RPS[twem:GET]:-}")
    [[ -n $x ]] && printf '  %-52s %9.2fx\n' "datanode gRPC GET / twemproxy GET" "$x"
    if [[ -n ${MEM_RSS[redis]:-} ]]; then
        printf '  %-52s %s\n' "RSS overhead B/item: datanode, memcached, redis" \
            "${MEM_RSS[datanode]:-?}, ${MEM_RSS[memcached]:-?}, ${MEM_RSS[redis]}"
        printf '  %-52s %s\n' "accounted overhead B/item: datanode, memcached, redis" \
            "${MEM_ACC[datanode]:-?}, ${MEM_ACC[memcached]:-?}, ${MEM_ACC[redis]}"
    fi
    echo "total time $((SECONDS - T0)) s; invalid rows: $INVALID_ROWS"
}

# ---------------------------------------------------------------- main
log "bench: DURATION=${DURATION}s WARMUP=${WARMUP}s ROUNDS=$ROUNDS KEYS=$KEYS KEYS_BIG=$KEYS_BIG ZIPF=$ZIPF CONNS='$CONNS' QUICK=$QUICK; logs in $WORK"
read -r load1 _ </proc/loadavg
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.7) }'; then
    log "WARNING: load average is $load1 before starting: other work shares the cores and skews the figures"
fi
install_deps wrk=wrk nginx=nginx memcached=memcached redis-server=redis-server \
    redis-benchmark=redis-tools redis-cli=redis-tools nutcracker=nutcracker curl=curl
build
for b in manager datanode http_ceiling grpc_load mem_per_item ring_quality kv_load; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build with BUILD=1)"
done

skipped ring || phase_ring
skipped micro || phase_micro
skipped http || phase_http
skipped grpc || phase_grpc
skipped mem || phase_mem

report
if ((INVALID_ROWS > 0)); then
    exit 2
fi
