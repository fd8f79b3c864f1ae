#!/usr/bin/env bash
# Memory per item, data node vs memcached, repeated: ITEMS entries (10-byte
# keys, 100-byte values) into a fresh server per run with
# target/release/mem_per_item, the two servers alternating, RUNS times,
# without and with a time to live on every entry. Prints the median and
# range of the RSS overhead per item (RSS growth per item minus the 110
# payload bytes) and of the server's own accounting.
#
#   bench/memory.sh              # ITEMS=1000000, RUNS=3, TTLS="0s 1h"
#   QUICK=1 bench/memory.sh      # 200000 items, 1 run
#
# Options (environment): ITEMS, RUNS, TTLS (mem_per_item --ttl values; 0s:
# none), BUILD=0, INSTALL=0, CARGO_TARGET_DIR, KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS
WORK=$(mktemp -d /tmp/ringcache-memory.XXXXXX)
# memcached's worker runs as nobody.
chmod 755 "$WORK"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ITEMS=${ITEMS:-200000}
    RUNS=${RUNS:-1}
fi
ITEMS=${ITEMS:-1000000}
RUNS=${RUNS:-3}
TTLS=${TTLS:-"0s 1h"}
BUILD=${BUILD:-1}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

install_deps memcached=memcached
if [[ $BUILD == 1 ]]; then
    log "building release binaries (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet -p ringcache-datanode -p ringcache-bench) || die "cargo build failed"
fi
for b in datanode mem_per_item; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done
log "memory: $ITEMS items, $RUNS runs, TTLs '$TTLS'; load $(load1); logs in $WORK"

# free_port VAR: a port nobody listens on (memcached cannot report a :0 port).
free_port() {
    local p _
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}

# one TARGET TTL RUN: a fresh server, mem_per_item against it, the server stopped.
declare -A RSS=() ACC=() LOADS=()
one() {
    local target=$1 ttl=$2 run=$3 addr pid port deadline line out=$WORK/$1-$2-$3.log
    if [[ $target == datanode ]]; then
        spawn "dn-$ttl-$run" "$BIN/datanode" --listen 127.0.0.1:0 --id mem --max-memory 4GiB
        pid=$SPAWNED
        addr=$(logged_addr "dn-$ttl-$run" "$pid" "data node serving gRPC")
    else
        free_port port
        spawn "mc-$ttl-$run" memcached -u nobody -l 127.0.0.1 -p "$port" -U 0 -m 4096 -c 1024
        pid=$SPAWNED
        addr=127.0.0.1:$port
        deadline=$((SECONDS + 20))
        until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
            ((SECONDS < deadline)) || die "memcached does not listen on $port"
            sleep 0.1
        done
    fi
    timeout 600 "$BIN/mem_per_item" --target "$target" --addr "$addr" --pid "$pid" \
        --items "$ITEMS" --ttl "$ttl" >"$out" 2>&1 || die "mem_per_item $target failed (see $out)"
    line=$(grep '^RESULT' "$out") || die "no RESULT in $out"
    stop "$pid"
    RSS[$target:$ttl]+="$(field rss_overhead "$line") "
    ACC[$target:$ttl]+="$(field accounted_overhead "$line") "
    LOADS[$target:$ttl]+="$(load1) "
    log "run $run $target ttl=$ttl: RSS overhead $(field rss_overhead "$line") B/item, accounted $(field accounted_overhead "$line") B/item, load $(load1)"
}

for ((r = 1; r <= RUNS; r++)); do
    for ttl in $TTLS; do
        one datanode "$ttl" "$r"
        one memcached "$ttl" "$r"
    done
done

echo
echo "memory per item: $ITEMS items of 10 B keys + 100 B values, fresh server per run, $RUNS runs alternating; $(memcached -V)"
echo "overhead = growth per item minus the 110 payload bytes; median (min-max)"
echo "------------------------------------------------------------------------------------------------"
printf '%-10s %-6s %-26s %-26s %s\n' server ttl "RSS overhead B/item" "accounted B/item" "load avg"
echo "------------------------------------------------------------------------------------------------"
for ttl in $TTLS; do
    for t in datanode memcached; do
        # shellcheck disable=SC2086
        printf '%-10s %-6s %-26s %-26s %s\n' "$t" "$ttl" "$(spread %.1f ${RSS[$t:$ttl]})" \
            "$(spread %.1f ${ACC[$t:$ttl]})" "$(spread %.1f ${LOADS[$t:$ttl]})"
    done
done
echo "------------------------------------------------------------------------------------------------"
echo "total time $((SECONDS - T0)) s"
