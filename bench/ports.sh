# Sourced by the bench scripts that start servers on fixed ports (memcached,
# nginx, redis and twemproxy cannot report a :0 port). Uses the caller's
# `die`, `$WORK` (logs) and `PNAME` (pid -> name).
# shellcheck shell=bash
USED_PORTS=" "
# free_port VAR: a port nobody listens on (below Linux's ephemeral range).
free_port() {
    local p _
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_port PORT PID: waits until PID listens on PORT (20 s deadline).
wait_port() {
    local port=$1 pid=$2 name=${PNAME[$2]:-$2} deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -5 "$WORK/$name.log" >&2 || true
            die "$name exited before listening on $port (log above)"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    tail -5 "$WORK/$name.log" >&2 || true
    die "$name does not listen on $port after 20 s"
}
