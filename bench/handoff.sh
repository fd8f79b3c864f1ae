#!/usr/bin/env bash
# What adding a data node costs: a 3-node cluster with its placement in
# etcd, preloaded, under a GET load; a fourth node is added through the
# admin API and receives its share while the load goes on. Prints the
# hand-off time and rate (from the manager's /cluster) and the load's
# throughput and p99 in 2-second slices before, during and after.
#
#   bench/handoff.sh             # KEYS=300000, 30 s of load
#   QUICK=1 bench/handoff.sh     # smoke run: 50000 keys, 12 s of load
#
# Options (environment): KEYS (300000), VALUE_SIZE (100), CONNS (16),
# WRK_THREADS (2), DURATION (s of load, 30), SLICE (2), JOIN_AT (s into the
# load, 6), SYNC_RATE (the nodes' --sync-rate, 64MiB), WAIT_UP (120),
# MAX_MEMORY (per node, 1GiB), INSTALL=0, BUILD=0, CARGO_TARGET_DIR, KEEP=1.
# Needs etcd (Debian's etcd-server; installed unless INSTALL=0).
#
# Exit status: 0 when the node came up and the load saw no error, 2 when it
# did not or the load saw errors, 1 when it could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-handoff.XXXXXX)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

slice_options JOIN_AT
JOIN_SLICE=$EVENT_SLICE

log "hand-off bench: KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE c=$CONNS ${NSLICES}x${SLICE}s slices, join at slice $JOIN_SLICE, SYNC_RATE=$SYNC_RATE; logs in $WORK; load $(load1)"
install_deps wrk=wrk jq=jq curl=curl etcd=etcd-server
[[ $BUILD == 1 ]] && build_release "$ROOT"
for b in manager datanode; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done

# etcd on two ports picked by the kernel (bound and released just before).
read -r EC EP < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
spawn etcd etcd --name bench --data-dir "$WORK/etcd.data" \
    --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
    --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
    --initial-cluster "bench=http://127.0.0.1:$EP"
deadline=$((SECONDS + 20))
until grep -q "ready to serve client requests" "$WORK/etcd.log"; do
    ((SECONDS < deadline)) || die "etcd did not start (see $WORK/etcd.log)"
    sleep 0.1
done

NODE_ARGS=(--heartbeat-interval 100ms --sync-rate "$SYNC_RATE" --max-memory "$MAX_MEMORY")
MGR_EXTRA=(--etcd "http://127.0.0.1:$EC" --cluster-name bench)
start_cluster hand "$BIN" "${NODE_ARGS[@]}"
deadline=$((SECONDS + 20))
until (($(cluster_json | jq '.placement_version // 0') > 0)); do
    ((SECONDS < deadline)) || die "no placement after 20 s: $(cluster_json)"
    sleep 0.1
done
log "cluster up: manager $MGR_URL, placement $(cluster_json | jq -c '[.placement_version, [.members[].id]]'); preloading $KEYS keys"
preload "$MGR_URL" "$KEYS" "$VALUE_SIZE"
spawn hand-node4 "$BIN/datanode" --listen 127.0.0.1:0 --id node4 "${NODE_ARGS[@]}"
N4_PID=$SPAWNED
N4_ADDR=$(logged_addr hand-node4 "$N4_PID" "data node serving gRPC")

# node4's state in the placement and the hand-off progress every 100 ms:
# "ms state keys_moved bytes_moved remaining". Bounded by count.
# shellcheck disable=SC2317 # run through spawn
poll() {
    local i line
    for ((i = 0; i < (DURATION + WAIT_UP + 30) * 10; i++)); do
        line=$(curl -s --max-time 1 "$MGR_URL/cluster" | jq -r '[
            ((.members // [])[] | select(.id == "node4") | .state) // "absent",
            (.handoff.keys_moved // 0), (.handoff.bytes_moved // 0), (.handoff.remaining // 0)] | join(" ")' 2>/dev/null) ||
            line="unreachable"
        echo "$(now_ms) ${line:-unreachable}"
        sleep 0.1
    done
}
spawn poll poll
POLL_PID=$SPAWNED

SL_START=() SL_END=() SL_RESULT=()
log "GET load: $NSLICES slices of ${SLICE}s at c=$CONNS; node4 added at slice $JOIN_SLICE"
for ((s = 0; s < NSLICES; s++)); do
    SL_START[s]=$(now_ms)
    if ((s == JOIN_SLICE)); then
        spawn "slice$s" env KEYS="$KEYS" timeout --foreground -s INT $((SLICE + 30)) \
            wrk -t"$WRK_THREADS" -c"$CONNS" -d"${SLICE}s" -s "$ROOT/bench/lua/get.lua" "$MGR_URL"
        wpid=$SPAWNED
        sleep 0.3
        T_JOIN=$(now_ms)
        code=$(curl -s -o "$WORK/add.json" -w '%{http_code}' -X POST "$MGR_URL/cluster/nodes?addr=http://$N4_ADDR")
        [[ $code == 202 ]] || die "POST /cluster/nodes answered $code: $(cat "$WORK/add.json")"
        wait "$wpid" || die "wrk slice $s failed (see $WORK/slice$s.log)"
        forget "$wpid"
        SL_RESULT[s]=$(grep '^RESULT' "$WORK/slice$s.log") || die "slice $s: no RESULT"
    else
        SL_RESULT[s]=$(wrk_once "$WORK/slice$s.log" get "$CONNS" "$SLICE" "$MGR_URL" "$KEYS" "$VALUE_SIZE")
    fi
    SL_END[s]=$(now_ms)
done
LOAD_AT_END=$(load1)
up_seen() { awk -v j="$T_JOIN" '$1 >= j && $2 == "up" { f = 1; exit } END { exit !f }' "$WORK/poll.log"; }
deadline=$((SECONDS + WAIT_UP))
until up_seen || ((SECONDS >= deadline)); do sleep 0.2; done
sleep 0.3
stop "$POLL_PID"
FINAL=$(cluster_json | jq -c '.handoff')
T_UP=$(awk -v j="$T_JOIN" '$1 >= j && $2 == "up" { print $1; exit }' "$WORK/poll.log")
N4_ITEMS=$(cluster_json | jq '.nodes[] | select(.id == "node4") | .items')

STATUS=0
echo
echo "ringcache hand-off to a new node: $(nproc) cores, load average ${LOAD_AT_END} after the load"
echo "3 data nodes + node4 (--heartbeat-interval 100ms --sync-rate $SYNC_RATE), replicas $REPLICAS, $KEYS keys x $VALUE_SIZE B, placement in etcd"
echo "GET load: wrk -t$WRK_THREADS -c$CONNS, ${SLICE}s slices; node4 added at +$((T_JOIN - SL_START[0])) ms"
echo "-------------------------------------------------------------------------------"
if [[ -z $T_UP ]]; then
    echo "node4 was not seen up within WAIT_UP=${WAIT_UP}s after the load"
    STATUS=2
else
    SECS=$(calc "($T_UP - $T_JOIN) / 1000")
    KM=$(jq '.keys_moved' <<<"$FINAL")
    BM=$(jq '.bytes_moved' <<<"$FINAL")
    printf '%-40s %s\n' "POST -> node4 up (as polled)" "$SECS s"
    printf '%-40s %s\n' "driver's hand-off time" "$(jq '.elapsed_ms' <<<"$FINAL") ms"
    printf '%-40s %s\n' "moved" "$KM keys, $(calc "$BM / 1048576" | cut -c1-6) MiB (node4 holds $N4_ITEMS)"
    printf '%-40s %s\n' "rate over POST -> up" "$(calc "$KM / $SECS" | cut -d. -f1) keys/s, $(calc "$BM / 1048576 / $SECS" | cut -c1-6) MiB/s"
    printf '%-40s %s\n' "rate over the driver's time" "$(jq -r '.bytes_per_second / 1048576 | tostring | .[0:6]' <<<"$FINAL") MiB/s"
fi
echo "-------------------------------------------------------------------------------"
printf '%5s %9s %-10s %10s %9s %9s %7s\n' slice start phase req/s p50 p99 errors
declare -A PH_RPS=() PH_P99=()
for ((s = 0; s < NSLICES; s++)); do
    a=${SL_START[s]} b=${SL_END[s]} line=${SL_RESULT[s]}
    if ((b <= T_JOIN)); then
        ph=before
    elif [[ -n $T_UP ]] && ((a >= T_UP)); then
        ph=after
    else
        ph=hand-off
    fi
    e=$(errs "$line")
    ((e == 0)) || STATUS=2
    r=$(rps "$line")
    PH_RPS[$ph]+="$r "
    PH_P99[$ph]+="$(field p99_us "$line") "
    printf '%5d %7.1f s %-10s %10.0f %6.2f ms %6.2f ms %7d\n' "$s" "$(calc "($a - ${SL_START[0]}) / 1000")" "$ph" \
        "$r" "$(calc "$(field p50_us "$line") / 1000")" "$(calc "$(field p99_us "$line") / 1000")" "$e"
done
echo "-------------------------------------------------------------------------------"
echo "per phase: median req/s (min-max), median p99 ms (min-max)"
for ph in before hand-off after; do
    [[ -n ${PH_RPS[$ph]:-} ]] || continue
    # shellcheck disable=SC2086
    printf '  %-10s %-24s %s\n' "$ph" "$(median_range ${PH_RPS[$ph]})" "$(ms_range ${PH_P99[$ph]})"
done
echo "total time $((SECONDS - T0)) s"
exit "$STATUS"
