#!/usr/bin/env bash
# What a data node restart costs: a 3-node cluster under a GET load, one node
# killed (SIGKILL) and started again empty on the same port; the manager
# shows it `syncing` while it pulls its share from its peers, then `up`.
# Prints the warm-up time, the copy rate and the load's throughput and p99
# in 2-second slices before, during and after the warm-up.
#
#   bench/warmup.sh              # KEYS=300000, 30 s of load
#   QUICK=1 bench/warmup.sh      # smoke run: 50000 keys, 12 s of load
#
# Options (environment): KEYS (300000), VALUE_SIZE (100), CONNS (16),
# WRK_THREADS (2), DURATION (s of load, 30), SLICE (s per wrk run, 2),
# KILL_AT (s into the load, 6), DOWN (s between the kill and the restart,
# 0.5), SYNC_RATE (the nodes' --sync-rate, 64MiB), WAIT_UP (s to wait for
# the node to be up after the load, 120), MAX_MEMORY (per node, 1GiB),
# INSTALL=0, BUILD=0, CARGO_TARGET_DIR, KEEP=1 (keep the logs).
#
# Exit status: 0 when the node came back up and the load saw no error, 2
# when it did not come back or the load saw errors, 1 when it could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-warmup.XXXXXX)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

slice_options KILL_AT
KILL_SLICE=$EVENT_SLICE
DOWN=${DOWN:-0.5}

log "warm-up bench: KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE c=$CONNS ${NSLICES}x${SLICE}s slices, kill at slice $KILL_SLICE, SYNC_RATE=$SYNC_RATE; logs in $WORK; load $(load1)"
install_deps wrk=wrk jq=jq curl=curl
[[ $BUILD == 1 ]] && build_release "$ROOT"
for b in manager datanode; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done

NODE_ARGS=(--heartbeat-interval 100ms --sync-rate "$SYNC_RATE" --max-memory "$MAX_MEMORY")
start_cluster warm "$BIN" "${NODE_ARGS[@]}"
log "cluster up: manager $MGR_URL, nodes ${DN_ADDR[*]}, replicas $REPLICAS; preloading $KEYS keys"
preload "$MGR_URL" "$KEYS" "$VALUE_SIZE"
N2_ITEMS=$(cluster_json | jq '.nodes[] | select(.id == "node2") | .items')
log "preloaded; node2 holds $N2_ITEMS entries"

# The manager's view of node2 every 100 ms: "ms state keys bytes scanned
# to_scan pulls items". Bounded by count; stopped by PID at the end.
# shellcheck disable=SC2317 # run through spawn
poll_node2() {
    local i line
    for ((i = 0; i < (DURATION + WAIT_UP + 30) * 10; i++)); do
        line=$(curl -s --max-time 1 "$MGR_URL/cluster" | jq -r '.nodes[] | select(.id == "node2") |
            [.state, (.sync.keys_copied // "-"), (.sync.bytes_copied // "-"), (.sync.scanned // "-"),
             (.sync.to_scan // "-"), (.sync.pulls_running // "-"), (.items // "-")] | join(" ")' 2>/dev/null) ||
            line="unreachable"
        echo "$(now_ms) ${line:-unreachable}"
        sleep 0.1
    done
}
spawn poll poll_node2
POLL_PID=$SPAWNED

# kill_restart: SIGKILL node2, DOWN seconds later the same command on the
# same port (a new, empty instance).
kill_restart() {
    local pid=${DN_PID[2]} deadline
    MLOG_AT_KILL=$(wc -l <"$WORK/warm-manager.log")
    T_KILL=$(now_ms)
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    sleep "$DOWN"
    # The port is free again once the listener is closed; a restart that
    # still finds it taken is retried until the deadline.
    deadline=$((SECONDS + 10))
    while :; do
        T_RESTART=$(now_ms)
        spawn warm-node2-restart "$BIN/datanode" --listen "${DN_ADDR[2]}" --id node2 "${NODE_ARGS[@]}"
        DN_PID[2]=$SPAWNED
        if logged_addr_quiet; then break; fi
        ((SECONDS < deadline)) || die "node2 could not listen on ${DN_ADDR[2]} again"
        sleep 0.2
    done
}
# logged_addr_quiet: true once the restarted node2 logs that it serves, false
# if it exited (port still taken).
logged_addr_quiet() {
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        grep -q "data node serving gRPC" "$WORK/warm-node2-restart.log" && return 0
        if ! kill -0 "${DN_PID[2]}" 2>/dev/null; then
            wait "${DN_PID[2]}" 2>/dev/null || true
            forget "${DN_PID[2]}"
            return 1
        fi
        sleep 0.05
    done
    die "restarted node2 did not start serving within 20 s"
}

SL_START=() SL_END=() SL_RESULT=()
log "GET load: $NSLICES slices of ${SLICE}s at c=$CONNS; node2 killed at slice $KILL_SLICE"
for ((s = 0; s < NSLICES; s++)); do
    SL_START[s]=$(now_ms)
    if ((s == KILL_SLICE)); then
        spawn "slice$s" env KEYS="$KEYS" timeout --foreground -s INT $((SLICE + 30)) \
            wrk -t"$WRK_THREADS" -c"$CONNS" -d"${SLICE}s" -s "$ROOT/bench/lua/get.lua" "$MGR_URL"
        wpid=$SPAWNED
        sleep 0.3
        kill_restart
        wait "$wpid" || die "wrk slice $s failed (see $WORK/slice$s.log)"
        forget "$wpid"
        SL_RESULT[s]=$(grep '^RESULT' "$WORK/slice$s.log") || die "slice $s: no RESULT"
    else
        SL_RESULT[s]=$(wrk_once "$WORK/slice$s.log" get "$CONNS" "$SLICE" "$MGR_URL" "$KEYS" "$VALUE_SIZE")
    fi
    SL_END[s]=$(now_ms)
done
LOAD_AT_END=$(load1)

# warm_done: node2 left `up` after the kill and was seen `up` again after
# the restart.
warm_done() {
    awk -v k="$T_KILL" -v r="$T_RESTART" '
        $1 >= k && $2 != "up" { left = 1 }
        $1 >= r && left && $2 == "up" { found = 1; exit }
        END { exit !found }' "$WORK/poll.log"
}
deadline=$((SECONDS + WAIT_UP))
until warm_done || ((SECONDS >= deadline)); do sleep 0.2; done
stop "$POLL_PID"

# ---------------------------------------------------------------- analysis
# First sight of syncing after the restart, first `up` after that, and the
# last progress seen while syncing.
read -r T_SYNC T_UP LAST_SYNC < <(awk -v k="$T_KILL" -v t="$T_RESTART" '
    $1 >= k && $2 != "up" { left = 1 }
    $1 >= t && $2 == "syncing" && !s { s = $1 }
    $1 >= t && $2 == "syncing" { last = $3 " " $4 " " $5 " " $6 }
    $1 >= t && left && $2 == "up" { u = $1; exit }
    END { printf "%s %s %s\n", (s ? s : "-"), (u ? u : "-"), (last ? last : "- - - -") }' "$WORK/poll.log")
STATES=$(awk -v t="$T_KILL" '$1 >= t && $2 != p { printf "%s%s@+%dms", (n++ ? " " : ""), $2, $1 - t; p = $2 }' "$WORK/poll.log")
# The manager's own account of node2's repair after the restart: one
# "pulled" line per peer (node=its address), then "repaired" (node=node2).
# Later lines may be about other repairs (another node that stalled).
MLOG=$WORK/warm-manager.log
REPAIR_LINES=$(tail -n +"$((MLOG_AT_KILL + 1))" "$MLOG" | awk -v a="${DN_ADDR[2]}" '
    / pulled/ && $0 ~ ("node=(http://)?" a " ") { print }
    / repaired/ && / node=node2 / { print; exit }')
PULLED_KEYS=$(grep ' pulled' <<<"$REPAIR_LINES" | grep -o '\bkeys=[0-9]*' | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
PULLED_BYTES=$(grep ' pulled' <<<"$REPAIR_LINES" | grep -o '\bbytes=[0-9]*' | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
REPAIRED=$(grep ' repaired' <<<"$REPAIR_LINES" | grep -o 'elapsed=[^ ]*' | cut -d= -f2 || true)
OTHER_REPAIRS=$(tail -n +"$((MLOG_AT_KILL + 1))" "$MLOG" | grep -c ' repaired' || true)
# humantime-ish Debug durations (1.23s, 812.4ms, 95µs) to seconds.
to_secs() { awk -v d="$1" 'BEGIN { v = d + 0; if (d ~ /ms$/) v /= 1e3; else if (d ~ /µs$|us$/) v /= 1e6; printf "%.3f", v }'; }

STATUS=0
echo
echo "ringcache warm-up after a data node restart: $(nproc) cores, load average $(load1) at the end (${LOAD_AT_END} after the load)"
echo "3 data nodes (--heartbeat-interval 100ms --sync-rate $SYNC_RATE), replicas $REPLICAS, $KEYS keys x $VALUE_SIZE B; node2 held $N2_ITEMS entries"
echo "GET load: wrk -t$WRK_THREADS -c$CONNS, ${SLICE}s slices; node2 SIGKILLed at +$((T_KILL - SL_START[0])) ms, restarted ${DOWN}s later on the same port"
echo "node2 states after the kill (manager's /cluster every 100 ms): $STATES"
echo "repairs the manager logged after the kill: $OTHER_REPAIRS (node2's restart is one)"
if [[ $T_UP == - ]]; then
    echo "node2 was not seen up again within WAIT_UP=${WAIT_UP}s after the load"
    STATUS=2
else
    read -r KC BC SC TS <<<"$LAST_SYNC"
    WSECS=$(calc "($T_UP - $T_RESTART) / 1000")
    SSECS=-
    [[ $T_SYNC != - ]] && SSECS=$(calc "($T_UP - $T_SYNC) / 1000")
    echo "-------------------------------------------------------------------------------"
    printf '%-44s %s\n' "restart -> up (warm-up, as polled)" "${WSECS} s"
    printf '%-44s %s\n' "first seen syncing -> up" "${SSECS} s (last progress seen: keys $KC, bytes $BC, scanned $SC of $TS)"
    if [[ -n $REPAIRED ]]; then
        RSECS=$(to_secs "$REPAIRED")
        printf '%-44s %s\n' "manager's 'repaired' elapsed" "$REPAIRED"
        printf '%-44s %s\n' "copied (manager's 'pulled' lines)" "$PULLED_KEYS keys, $(calc "$PULLED_BYTES / 1048576" | cut -c1-6) MiB"
        printf '%-44s %s\n' "copy rate over 'repaired' elapsed" "$(calc "$PULLED_KEYS / $RSECS" | cut -d. -f1) keys/s, $(calc "$PULLED_BYTES / 1048576 / $RSECS" | cut -c1-6) MiB/s"
    fi
    printf '%-44s %s\n' "copy rate over restart -> up" "$(calc "$PULLED_KEYS / $WSECS" | cut -d. -f1) keys/s, $(calc "$PULLED_BYTES / 1048576 / $WSECS" | cut -c1-6) MiB/s"
fi
echo "-------------------------------------------------------------------------------"
printf '%5s %9s %-14s %10s %9s %9s %7s\n' slice start phase req/s p50 p99 errors
declare -A PH_RPS=() PH_P99=()
for ((s = 0; s < NSLICES; s++)); do
    a=${SL_START[s]} b=${SL_END[s]} line=${SL_RESULT[s]}
    if ((b <= T_KILL)); then
        ph=before
    elif ((a <= T_KILL)) && [[ $T_UP != - ]] && ((b >= T_UP)); then
        ph="kill..up"
    elif ((a <= T_KILL)); then
        ph="kill+restart"
    elif [[ $T_UP != - ]] && ((a >= T_UP)); then
        ph=after
    elif [[ $T_UP == - ]] || ((b <= T_UP)); then
        ph=warm-up
    else
        ph="warm-up->up"
    fi
    e=$(errs "$line")
    ((e == 0)) || STATUS=2
    r=$(rps "$line")
    PH_RPS[$ph]+="$r "
    PH_P99[$ph]+="$(field p99_us "$line") "
    printf '%5d %7.1f s %-14s %10.0f %6.2f ms %6.2f ms %7d\n' "$s" "$(calc "($a - ${SL_START[0]}) / 1000")" "$ph" \
        "$r" "$(calc "$(field p50_us "$line") / 1000")" "$(calc "$(field p99_us "$line") / 1000")" "$e"
done
echo "-------------------------------------------------------------------------------"
echo "per phase: median req/s (min-max), median p99 ms (min-max)"
for ph in before "kill..up" "kill+restart" warm-up "warm-up->up" after; do
    [[ -n ${PH_RPS[$ph]:-} ]] || continue
    # shellcheck disable=SC2086
    printf '  %-14s %-24s %s\n' "$ph" "$(median_range ${PH_RPS[$ph]})" "$(ms_range ${PH_P99[$ph]})"
done
echo "total time $((SECONDS - T0)) s"
exit "$STATUS"
