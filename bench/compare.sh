#!/usr/bin/env bash
# Steady-state HTTP throughput of two builds of ringcache side by side: two
# clusters (3 data nodes + 1 manager each, default flags) run at the same
# time, preloaded with the same keys, and the same wrk loads alternate
# between them (A, B, A, B, ...) so both see the same machine conditions.
# Prints the median and range of each side and B/A.
#
#   bench/compare.sh OLD_BIN_DIR NEW_BIN_DIR     # dirs holding manager and datanode
#   bench/compare.sh /work/wt-old/target/release target/release
#   QUICK=1 bench/compare.sh A B                 # smoke run: 1 round, 2 s loads
#
# Options (environment): ROUNDS (3), DURATION (s per measured load, 10),
# WARMUP (s of unmeasured load before each, 2), KEYS (100000), VALUE_SIZE
# (100), TESTS ("get:16 post:16 get:64"), WRK_THREADS (2), LABELS ("old
# new"), INSTALL=0, KEEP=1.
#
# Exit status: 0 when every load ran clean, 2 when one saw errors, 1 when
# the comparison could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-compare.XXXXXX)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

(($# == 2)) || die "usage: bench/compare.sh OLD_BIN_DIR NEW_BIN_DIR"
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-1}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
TESTS=${TESTS:-"get:16 post:16 get:64"}
read -r LA LB <<<"${LABELS:-old new}"
DIR_A=$(cd "$1" && pwd) || die "no directory $1"
DIR_B=$(cd "$2" && pwd) || die "no directory $2"
for d in "$DIR_A" "$DIR_B"; do
    for b in manager datanode; do [[ -x $d/$b ]] || die "$d/$b is missing"; done
done

install_deps wrk=wrk jq=jq curl=curl
log "compare: $LA=$DIR_A $LB=$DIR_B; $ROUNDS rounds of '$TESTS', ${DURATION}s after ${WARMUP}s; $KEYS keys; load $(load1); logs in $WORK"

declare -A URL=()
start_cluster "$LA" "$DIR_A"
URL[$LA]=$MGR_URL
preload "$MGR_URL" "$KEYS" "$VALUE_SIZE"
start_cluster "$LB" "$DIR_B"
URL[$LB]=$MGR_URL
preload "$MGR_URL" "$KEYS" "$VALUE_SIZE"
log "both clusters preloaded ($LA ${URL[$LA]}, $LB ${URL[$LB]})"

declare -A RPS=() P99=() LOADS=()
STATUS=0
for ((r = 1; r <= ROUNDS; r++)); do
    for t in $TESTS; do
        op=${t%%:*} c=${t#*:}
        for side in "$LA" "$LB"; do
            if ((WARMUP > 0)); then
                wrk_once "$WORK/warm.log" get "$c" "$WARMUP" "${URL[$side]}" "$KEYS" "$VALUE_SIZE" >/dev/null
            fi
            line=$(wrk_once "$WORK/$side-$op-$c-$r.log" "$op" "$c" "$DURATION" "${URL[$side]}" "$KEYS" "$VALUE_SIZE")
            e=$(errs "$line")
            ((e == 0)) || STATUS=2
            RPS[$side:$t]+="$(rps "$line") "
            P99[$side:$t]+="$(field p99_us "$line") "
            LOADS[$t]+="$(load1) "
            log "round $r $side $op c=$c: $(rps "$line" | cut -d. -f1) req/s, p99 $(field p99_us "$line") us, $e errors, load $(load1)"
        done
    done
done

echo
echo "ringcache $LA vs $LB: $(nproc) cores; wrk -t$WRK_THREADS, ${DURATION}s per run after ${WARMUP}s; $KEYS keys x $VALUE_SIZE B; $ROUNDS rounds alternating $LA, $LB"
echo "$LA: $DIR_A"
echo "$LB: $DIR_B"
echo "------------------------------------------------------------------------------------------------------------------"
printf '%-10s %-24s %-24s %7s   %-20s %-20s %s\n' test "$LA req/s med (range)" "$LB req/s med (range)" "$LB/$LA" \
    "$LA p99 ms" "$LB p99 ms" "load avg during"
echo "------------------------------------------------------------------------------------------------------------------"
for t in $TESTS; do
    # shellcheck disable=SC2086
    printf '%-10s %-24s %-24s %6.2fx   %-20s %-20s %s\n' "$t" "$(median_range ${RPS[$LA:$t]})" \
        "$(median_range ${RPS[$LB:$t]})" "$(calc "$(median ${RPS[$LB:$t]}) / $(median ${RPS[$LA:$t]})")" \
        "$(ms_range ${P99[$LA:$t]})" "$(ms_range ${P99[$LB:$t]})" "$(spread %.1f ${LOADS[$t]})"
done
echo "------------------------------------------------------------------------------------------------------------------"
echo "total time $((SECONDS - T0)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$STATUS"
