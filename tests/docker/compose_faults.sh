#!/usr/bin/env bash
# Container fault test: the Docker Compose cluster (docker-compose.yml:
# etcd, a scalable data node service of 3 and two managers) under scaling,
# node and manager loss, an etcd restart, network partitions and a rolling
# restart, driven through both managers' published HTTP ports on 127.0.0.1.
#
#   tests/docker/compose_faults.sh
#
# The images are built the way a user builds them: `compose up -d --build`
# with docker/Dockerfile (without a registry, run
# deploy/offline-base-images.sh first; .ci/run does).
#
# What it checks, in order (each step a PASS/FAIL line):
#   - both managers healthy and following one placement of the 3 nodes,
#     ids `<hostname>:50051`; the README's curl commands through both; each
#     data node reachable on its published port (`compose port --index N`);
#   - KEYS keys written; `--scale datanode=4` then `=3` under a read/write
#     load through both managers: both show the same placement_version and
#     members, all up; no acknowledged write lost, no stale read; every key
#     still reads back (time to reach `up` and the load's p99 are printed);
#   - one manager killed: the other keeps serving, nothing stale or lost;
#   - etcd stopped: reads and writes go on through both managers, a new
#     data node is not added; etcd started: it is (the change waited);
#   - a rolling restart of every data node container, each waiting only
#     for its compose health check (readiness) to say healthy, with KEYS
#     keys and DATANODE_SYNC_RATE throttled: 0 keys lost;
#   - a data node killed, and one cut off the network, as before;
#   - a manager restarted; last, one manager cut off the network while the
#     other overwrites keys: no read of an old value through either, during
#     or after.
#
# Environment:
#   COMPOSE             compose command (default: `docker compose` when
#                       present, else `docker-compose`)
#   RINGCACHE_HTTP_PORT, RINGCACHE_HTTP_PORT2
#                       host ports of the managers (default: free ports
#                       found here, never 8080/8081)
#   KEYS                keys written before scaling and the rolling restart
#                       (100000)
#   RINGCACHE_SYNC_RATE the data nodes' --sync-rate (256KiB: a node's
#                       warm-up with 100000 keys takes seconds, so that a
#                       restart that did not wait for it would lose keys)
#   COMPOSE_FAULTS_SEED=addresses
#                       diagnostic: write the first placement into etcd with
#                       each node at its container's address before the
#                       managers start, instead of letting the first manager
#                       seed it from MANAGER_NODES (whose service name then
#                       becomes one member's address)
#   COMPOSE_FAULTS_LOGS file for every container's log when a check fails
#                       (target/compose_faults-<project>.log)
#
# Needs a reachable Docker engine, curl, jq and python3. Creates one
# compose project, ringcache-ci-<pid>, and always tears it down
# (containers, networks, volumes); the images it builds are kept for the
# next run. Every wait is bounded; exits non-zero when any check fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

project="ringcache-ci-$$"
export COMPOSE_PROJECT_NAME="$project"
keys="${KEYS:-100000}"
export RINGCACHE_SYNC_RATE="${RINGCACHE_SYNC_RATE:-256KiB}"
load_py="$root/tests/docker/load.py"

passed=0
failed=0
failures=()
measured=()
squatter=""   # a container this test starts outside compose, if any
side_net=""   # a network this test creates, if any
work="$(mktemp -d)"
started_at=$SECONDS

log() { printf '[%4ds] %s\n' "$((SECONDS - started_at))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); log "FAIL: $1"; }
measure() { measured+=("$1"); log "MEASURED: $1"; }
# check DESCRIPTION COMMAND...: records the command's success or failure.
check() {
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
# abort DESCRIPTION: a failure the rest of the test cannot go on from.
abort() {
  fail "$1"
  exit 1
}

for tool in docker curl jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "compose_faults: $tool is required" >&2; exit 2; }
done
if ! docker info >/dev/null 2>&1; then
  echo "compose_faults: no Docker engine reachable" >&2
  exit 2
fi
# shellcheck source=deploy/compose-cmd.sh
source "$root/deploy/compose-cmd.sh" || exit 2
dc() { "${compose[@]}" -p "$project" "$@"; }

# --- host ports: free ones, unless given -------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {
  local tries base
  for ((tries = 0; tries < 50; tries++)); do
    base=$((20000 + (($$ + tries * 7919) % 9000) * 4))
    if port_free "$base" && port_free "$((base + 1))" && port_free "$((base + 2))" && port_free "$((base + 3))"; then echo "$base"; return 0; fi
  done
  return 1
}
base="$(pick_ports)" || { echo "compose_faults: no free ports found" >&2; exit 2; }
export RINGCACHE_PUBLISH_ADDR=127.0.0.1
export RINGCACHE_HTTP_PORT="${RINGCACHE_HTTP_PORT:-$base}"
export RINGCACHE_HTTP_PORT2="${RINGCACHE_HTTP_PORT2:-$((base + 1))}"
export RINGCACHE_RESP_PORT="${RINGCACHE_RESP_PORT:-$((base + 2))}"
export RINGCACHE_RESP_PORT2="${RINGCACHE_RESP_PORT2:-$((base + 3))}"
api1="http://127.0.0.1:$RINGCACHE_HTTP_PORT"
api2="http://127.0.0.1:$RINGCACHE_HTTP_PORT2"

# --- teardown, always ----------------------------------------------------
declare -A load_pid=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${load_pid[@]+"${load_pid[@]}"}"; do kill "$p" 2>/dev/null || true; done
  if ((rc != 0 || failed > 0)); then
    echo "--- container logs (last 40 lines each) ---"
    dc logs --no-color --tail=40 2>&1 || true
    full_logs="${COMPOSE_FAULTS_LOGS:-$root/target/compose_faults-$project.log}"
    mkdir -p "$(dirname "$full_logs")" 2>/dev/null || true
    if dc logs --no-color --timestamps >"$full_logs" 2>&1; then echo "--- all container logs: $full_logs"; fi
  fi
  log "tearing down $project"
  if [[ -n "$squatter" ]]; then
    docker rm -f "$squatter" >/dev/null 2>&1 || echo "compose_faults: WARNING: cannot remove $squatter" >&2
  fi
  dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 ||
    echo "compose_faults: WARNING: '${compose[*]} -p $project down' failed" >&2
  if [[ -n "$side_net" ]]; then
    docker network rm "$side_net" >/dev/null 2>&1 || echo "compose_faults: WARNING: cannot remove network $side_net" >&2
  fi
  # A rebuild moves the image tags to new images; the ringcache images left
  # untagged by it (and only those: they carry our label) go too.
  docker image prune -f --filter "label=org.ringcache.image" >/dev/null 2>&1 || true
  rm -rf "$work"
  echo
  for m in "${measured[@]+"${measured[@]}"}"; do echo "measured: $m"; done
  echo "compose_faults: $passed passed, $failed failed"
  for f in "${failures[@]+"${failures[@]}"}"; do echo "  failed: $f"; done
  if ((rc == 0 && failed == 0)); then
    echo "PASS"
  else
    echo "FAIL"
    ((rc != 0)) || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- HTTP helpers (bounded by curl's --max-time) -------------------------
# http API METHOD PATH_AND_QUERY: sets $code (000 when nothing answered) and $body.
http() {
  local out
  out="$(curl -sS --max-time 5 -X "$2" -w '\n%{http_code}' "$1$3" 2>/dev/null)" || true
  code="${out##*$'\n'}"
  body="${out%$'\n'*}"
  [[ "$code" =~ ^[0-9]{3}$ ]] || { code=000; body=""; }
}
cluster() { curl -sS --max-time 5 "$1/cluster" 2>/dev/null || true; }
# view API: the placement as a manager routes by it: version, members with
# their state, and which of them this manager finds up.
view() {
  cluster "$1" | jq -c '{v: .placement_version,
      m: ([.members[]? | "\(.id)=\(.state)"] | sort),
      up: ([.nodes[]? | select(.state == "up") | .id] | sort)}' 2>/dev/null || true
}
# converged N: both managers route by the same placement version, of N
# members, every one `up` in it (hand-off done) and up in each manager's view.
converged() {
  local n="$1" a b
  a="$(view "$api1")"
  b="$(view "$api2")"
  [[ -n "$a" && "$(jq -c '{v, m}' <<<"$a")" == "$(jq -c '{v, m}' <<<"$b" 2>/dev/null)" ]] || return 1
  jq -e --argjson n "$n" '(.m | length) == $n and all(.m[]; endswith("=up"))
      and ((.m | map(sub("=up$"; ""))) - .up == [])' <<<"$a" >/dev/null &&
    jq -e '(.m | map(sub("=up$"; ""))) - .up == []' <<<"$b" >/dev/null
}
placement_version() { cluster "$1" | jq -r '.placement_version // empty' 2>/dev/null || true; }
members() { cluster "$1" | jq -r '[.members[]?.id] | sort | join(" ")' 2>/dev/null || true; }

# Containers: the managers and etcd by service, the data nodes by their
# compose container number (1, 2, 3, ...).
cid() { dc ps -q "$1" 2>/dev/null | head -n 1; }
declare -A ids=()
dn() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=datanode" \
    --filter "label=com.docker.compose.container-number=$1" | head -n 1
}
node_id_of() { echo "$(docker inspect -f '{{.Config.Hostname}}' "$1"):50051"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null || true; }
healthy() { [[ "$(health "$1")" == healthy ]]; }
all_healthy() {
  local c
  for c in "${ids[etcd]}" "${ids[manager1]}" "${ids[manager2]}" "$(dn 1)" "$(dn 2)" "$(dn 3)"; do
    healthy "$c" || return 1
  done
}
node_state() { cluster "$1" | jq -r --arg id "$2" '.nodes[]? | select(.id == $id) | .state' 2>/dev/null | head -n 1; }
is_state() { [[ "$(node_state "$1" "$2")" == "$3" ]]; }

# wait_until DESCRIPTION SECONDS COMMAND...: polls every 0.2 s, at most
# SECONDS seconds and 5*SECONDS polls; aborts when it does not happen.
wait_until() {
  local what="$1" limit="$2" start=$SECONDS polls=0
  shift 2
  until "$@"; do
    polls=$((polls + 1))
    if ((SECONDS - start >= limit || polls >= limit * 5)); then
      abort "$what (not within ${limit}s)"
    fi
    sleep 0.2
  done
  log "ok: $what ($((SECONDS - start))s)"
}

# write_all API PREFIX FROM TO VALUE: sets PREFIX<i> to VALUE<i>; every one
# must be acknowledged (a 503 is retried for up to 15 s).
write_all() {
  local api="$1" prefix="$2" from="$3" to="$4" value="$5" i bad=0 deadline
  for ((i = from; i <= to; i++)); do
    deadline=$((SECONDS + 15))
    while :; do
      http "$api" POST "/?key=$prefix$i&value=$value$i"
      [[ "$code" == 200 || "$code" == 201 ]] && break
      if [[ "$code" != 503 ]] || ((SECONDS >= deadline)); then
        bad=$((bad + 1))
        ((bad > 5)) || echo "    set $prefix$i: HTTP $code ${body:0:60}" >&2
        break
      fi
      sleep 0.1
    done
  done
  ((bad == 0))
}
# read_all API PREFIX FROM TO EXPECTED: every PREFIX<i> must read
# EXPECTED<i> (or 404 when EXPECTED is "404"); a 503 is retried for 15 s.
read_all() {
  local api="$1" prefix="$2" from="$3" to="$4" want="$5" i bad=0 deadline
  for ((i = from; i <= to; i++)); do
    deadline=$((SECONDS + 15))
    while :; do
      http "$api" GET "/?key=$prefix$i"
      [[ "$code" == 503 ]] && ((SECONDS < deadline)) && { sleep 0.1; continue; }
      break
    done
    if [[ "$want" == 404 ]]; then
      [[ "$code" == 404 ]] && continue
    elif [[ "$code" == 200 && "$body" == "$want$i" ]]; then
      continue
    fi
    bad=$((bad + 1))
    ((bad > 5)) || echo "    $prefix$i via $api: HTTP $code ${body:0:40}" >&2
  done
  ((bad == 0))
}
# no_value API PREFIX FROM TO OLD: no PREFIX<i> reads OLD<i> (any other
# answer, an error included, is not a stale read).
no_value() {
  local api="$1" prefix="$2" from="$3" to="$4" old="$5" i
  for ((i = from; i <= to; i++)); do
    http "$api" GET "/?key=$prefix$i"
    if [[ "$code" == 200 && "$body" == "$old$i" ]]; then echo "    $prefix$i via $api still reads $old$i" >&2; return 1; fi
  done
}

# --- the load (tests/docker/load.py) -------------------------------------
# load_start NAME APIS [VERIFY_APIS]: a read/write load of about 200
# requests/s through APIS (comma-separated) until load_stop NAME.
load_start() {
  local name="$1" apis="$2" verify="${3:-$2}"
  rm -f "$work/$name.stop"
  timeout 900 python3 "$load_py" run --api "$apis" --verify-api "$verify" \
    --keys 400 --key-prefix "$name-" --threads 4 --rate 200 --max-seconds 600 \
    --stop-file "$work/$name.stop" --report "$work/$name.json" >"$work/$name.log" 2>&1 &
  load_pid[$name]=$!
}
# load_stop NAME WHAT: stops it and checks its report: no stale or wrong
# read, no acknowledged write lost. Sets $load_p99 (ms) and $load_errors.
load_stop() {
  local name="$1" what="$2" rc=0
  touch "$work/$name.stop"
  wait "${load_pid[$name]}" || rc=$?
  unset "load_pid[$name]"
  sed 's/^/    /' "$work/$name.log"
  load_p99="$(jq -r '.p99_ms' "$work/$name.json" 2>/dev/null || echo '?')"
  load_errors="$(jq -c '.errors' "$work/$name.json" 2>/dev/null || echo '?')"
  if ((rc == 0)) && [[ -s "$work/$name.json" ]] && jq -e '.requests > 0 and .stale == 0 and .wrong == 0 and .lost == 0' "$work/$name.json" >/dev/null; then
    pass "$what: load $(jq -r '"\(.requests) requests, \(.writes_acked) acknowledged writes, \(.reads_ok) reads"' "$work/$name.json"): no stale read, no acknowledged write lost"
  else
    fail "$what: load found stale reads or lost writes (exit $rc; $(jq -c '{stale, wrong, lost, examples}' "$work/$name.json" 2>/dev/null || echo 'no report'))"
  fi
}
# verify_keys API WHAT [STRIDE]: every one of the KEYS keys (or every
# STRIDE-th: a sample, after each fault) reads back its value.
verify_keys() {
  local api="$1" what="$2" stride="${3:-1}"
  if timeout 600 python3 "$load_py" verify --api "$api" --prefix big --count "$keys" --threads 8 --stride "$stride" 2>&1 | sed 's/^/    /'; then
    pass "$what"
  else
    fail "$what"
  fi
}

# --- bring the cluster up -----------------------------------------------
log "project $project; managers on $api1 and $api2; $keys keys; sync rate $RINGCACHE_SYNC_RATE; ${compose[*]}"
up_start=$SECONDS
if [[ "${COMPOSE_FAULTS_SEED:-}" == addresses ]]; then
  # Diagnostic, not the default: etcd and the data nodes first, then the
  # placement written into etcd with each node at its container's address
  # (not the service name), then the managers. Tells a failure caused by a
  # member addressed by the service's name (which resolves to any of the
  # containers) from the rest.
  log "COMPOSE_FAULTS_SEED=addresses: ${compose[*]} -p $project up -d --build etcd datanode, placement seeded by address"
  dc up -d --build etcd datanode >"$work/up.log" 2>&1 || { tail -n 60 "$work/up.log"; abort "compose up -d --build etcd datanode"; }
  etcd_c="$(cid etcd)"
  wait_until "etcd healthy" 60 healthy "$etcd_c"
  seed_json='{"members":['
  for n in 1 2 3; do
    c="$(dn "$n")"
    [[ -n "$c" ]] || abort "data node container $n not found"
    ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")"
    ((n == 1)) || seed_json+=","
    seed_json+="{\"id\":\"$(node_id_of "$c")\",\"address\":\"http://$ip:50051\",\"state\":\"up\"}"
  done
  seed_json+=']}'
  docker exec "$etcd_c" /usr/local/bin/etcdctl --endpoints=http://127.0.0.1:2379 put /ringcache/default/placement "$seed_json" >/dev/null ||
    abort "placement written into etcd"
  log "placement seeded: $seed_json"
fi
log "${compose[*]} -p $project up -d --build"
if ! dc up -d --build >>"$work/up.log" 2>&1; then
  tail -n 60 "$work/up.log"
  abort "compose up -d --build (no registry? run deploy/offline-base-images.sh first)"
fi
grep -E '^(Successfully tagged|Creating|Container)' "$work/up.log" | cut -c1-120 | sed 's/^/    /' || true
log "compose up -d --build returned after $((SECONDS - up_start))s"
for s in etcd manager1 manager2; do
  ids[$s]="$(cid "$s")"
  [[ -n "${ids[$s]}" ]] || abort "container of $s not found"
done
for n in 1 2 3; do [[ -n "$(dn "$n")" ]] || abort "data node container $n not found"; done
wait_until "etcd, both managers and the three data nodes healthy (data nodes: ready)" 120 all_healthy
wait_until "both managers route by one placement of 3 members, all up" 120 converged 3
pass "cluster up in $((SECONDS - up_start))s"
# The compose network (for the partitions below).
net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "${ids[manager1]}" | head -n 1)"
ids_ok() {
  local n want
  for n in 1 2 3; do
    want="$(node_id_of "$(dn "$n")")"
    [[ " $(members "$api1") " == *" $want "* ]] || { echo "    $want not a member: $(members "$api1")" >&2; return 1; }
  done
}
check "the data nodes' ids are <container hostname>:50051 (no DATANODE_ID)" ids_ok
check "/cluster: placement from etcd on both managers" \
  [ "$(cluster "$api1" | jq -r .placement)/$(cluster "$api2" | jq -r .placement)" == etcd/etcd ]

# --- the README's curl commands, through both managers -------------------
http "$api1" POST "/?key=greeting&value=hello"
check "README: POST /?key=greeting&value=hello via manager1 -> 201" [ "$code" == 201 ]
http "$api2" GET "/?key=greeting"
check "README: GET /?key=greeting via manager2 -> 200 hello" [ "$code $body" == "200 hello" ]
http "$api2" DELETE "/?key=greeting"
check "README: DELETE /?key=greeting via manager2 -> 200" [ "$code" == 200 ]
# The Redis protocol on both managers' published ports: a write through one
# read through the other (inline commands over bash's /dev/tcp: no client).
resp() {
  local port="$1" reply
  shift
  exec 5<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf '%s\r\n' "$*" >&5
  IFS= read -r -t 5 reply <&5 || true
  if [[ "$reply" == \$* ]]; then IFS= read -r -t 5 reply <&5 || true; fi
  exec 5>&-
  printf '%s' "${reply%$'\r'}"
}
check "RESP: SET via manager1, GET via manager2" \
  [ "$(resp "$RINGCACHE_RESP_PORT" SET resp:greeting hello) $(resp "$RINGCACHE_RESP_PORT2" GET resp:greeting)" == "+OK hello" ]
http "$api1" GET "/?key=greeting"
check "GET via manager1 after DELETE via manager2 -> 404" [ "$code" == 404 ]

# --- every data node's published gRPC port -----------------------------
grpc_ports_ok() {
  local n addr out
  for n in 1 2 3; do
    addr="$(dc port --index "$n" datanode 50051 2>/dev/null | tail -n 1)"
    [[ "$addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || { echo "    compose port --index $n: '$addr'" >&2; return 1; }
    if command -v grpcurl >/dev/null; then
      out="$(grpcurl -plaintext -max-time 5 "$addr" ringcache.v1.DataNode/Stats 2>&1)" || { echo "    $addr: $out" >&2; return 1; }
      [[ "$(jq -r '.nodeId // .node_id // empty' <<<"$out")" == "$(node_id_of "$(dn "$n")")" ]] ||
        { echo "    $addr answers as $(jq -c . <<<"$out" | head -c 200)" >&2; return 1; }
    else
      (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null || { echo "    $addr: no connection" >&2; return 1; }
    fi
  done
}
if command -v grpcurl >/dev/null; then how="grpcurl Stats answers with its own id"; else how="TCP connect (grpcurl not installed)"; fi
check "compose port --index 1..3 datanode 50051: each data node reachable ($how)" grpc_ports_ok

# --- many keys -----------------------------------------------------------
fill_start=$SECONDS
if timeout 900 python3 "$load_py" fill --api "$api1,$api2" --prefix big --count "$keys" --threads 8 2>&1 | sed 's/^/    /'; then
  pass "$keys keys written through both managers"
else
  abort "$keys keys written through both managers"
fi
measure "writing $keys keys (8 clients over both managers): $((SECONDS - fill_start))s"

# --- scale 3 -> 4 -> 3 under load -----------------------------------------
v_before="$(placement_version "$api1")"
load_start scale-up "$api1,$api2"
sleep 2  # some load before the change
t0=$SECONDS
log "${compose[*]} up -d --no-recreate --scale datanode=4 datanode"
dc up -d --no-recreate --scale datanode=4 datanode >/dev/null 2>&1 || abort "compose up --scale datanode=4"
[[ -n "$(dn 4)" ]] || abort "data node container 4 not found"
wait_until "both managers: one placement of 4 members, all up" 300 converged 4
scale_up_s=$((SECONDS - t0))
load_stop scale-up "scale 3 -> 4"
check "the placement version went up (was $v_before, now $(placement_version "$api1"))" \
  [ "$(placement_version "$api1")" -gt "$v_before" ]
check "the new data node is a member ($(node_id_of "$(dn 4)"))" \
  grep -qwF -- "$(node_id_of "$(dn 4)")" <<<"$(members "$api2")"
measure "--scale datanode=3 -> 4 with $keys keys, sync rate $RINGCACHE_SYNC_RATE: ${scale_up_s}s to all members up on both managers; load p99 ${load_p99} ms (errors per manager: $load_errors); hand-off $(cluster "$api1" | jq -c '.handoff | {keys_moved, bytes_moved, elapsed_ms}' 2>/dev/null)"
verify_keys "$api2" "all $keys keys read back through manager2 after scaling to 4"

load_start scale-down "$api1,$api2"
sleep 2
t0=$SECONDS
log "${compose[*]} up -d --no-recreate --scale datanode=3 datanode"
dc up -d --no-recreate --scale datanode=3 datanode >/dev/null 2>&1 || abort "compose up --scale datanode=3"
wait_until "both managers: one placement of 3 members, all up" 300 converged 3
scale_down_s=$((SECONDS - t0))
load_stop scale-down "scale 4 -> 3"
measure "--scale datanode=4 -> 3: ${scale_down_s}s to 3 members up on both managers (the removed container's address must be missing for --discovery-grace first); load p99 ${load_p99} ms (errors per manager: $load_errors); hand-off $(cluster "$api1" | jq -c '.handoff | {keys_moved, bytes_moved, elapsed_ms}' 2>/dev/null)"
verify_keys "$api1" "all $keys keys read back through manager1 after scaling back to 3"

# --- one manager killed -------------------------------------------------
load_start manager-kill "$api1,$api2" "$api2"
sleep 2
log "docker kill manager1"
docker kill "${ids[manager1]}" >/dev/null
check "manager2 acknowledges writes with manager1 dead" write_all "$api2" mk 1 50 v
check "manager2 reads them back" read_all "$api2" mk 1 50 v
load_stop manager-kill "manager1 killed"
log "docker start manager1"
docker start "${ids[manager1]}" >/dev/null
wait_until "manager1 healthy again" 60 healthy "${ids[manager1]}"
wait_until "both managers on one placement of 3 again" 60 converged 3
check "manager1 reads what manager2 wrote while it was dead" read_all "$api1" mk 1 50 v
verify_keys "$api1" "a sample of the $keys keys (every 20th) reads back after manager1 was killed and restarted" 20

# --- etcd restarted -------------------------------------------------------
v_before="$(placement_version "$api1")"
log "docker stop etcd"
docker stop -t 5 "${ids[etcd]}" >/dev/null
check "writes through manager1 with etcd stopped" write_all "$api1" ed 1 30 a
check "writes through manager2 with etcd stopped" write_all "$api2" ed 31 60 a
check "reads through manager2 with etcd stopped" read_all "$api2" ed 1 60 a
check "reads through manager1 with etcd stopped" read_all "$api1" ed 1 60 a
log "${compose[*]} up -d --no-recreate --scale datanode=4 datanode (etcd stopped)"
dc up -d --no-recreate --scale datanode=4 datanode >/dev/null 2>&1 || abort "compose up --scale datanode=4 (etcd stopped)"
new_id="$(node_id_of "$(dn 4)")"
# Three rounds of the managers' 5 s lookups: the node is found, but the
# placement cannot change while etcd is down.
no_change() {
  local end=$((SECONDS + 15))
  while ((SECONDS < end)); do
    [[ "$(placement_version "$api1")" == "$v_before" && "$(placement_version "$api2")" == "$v_before" ]] || return 1
    [[ " $(members "$api1") " != *" $new_id "* ]] || return 1
    sleep 1
  done
}
check "with etcd stopped, the placement stays at version $v_before for 15 s (new node not added)" no_change
log "docker start etcd"
docker start "${ids[etcd]}" >/dev/null
wait_until "etcd healthy again" 60 healthy "${ids[etcd]}"
wait_until "the waiting change went through: one placement of 4 members, all up" 300 converged 4
check "the new data node is a member ($new_id)" grep -qwF -- "$new_id" <<<"$(members "$api1")"
dc up -d --no-recreate --scale datanode=3 datanode >/dev/null 2>&1 || abort "compose up --scale datanode=3"
wait_until "back to one placement of 3 members, all up" 300 converged 3
check "keys written while etcd was stopped read back" read_all "$api1" ed 1 60 a
verify_keys "$api2" "a sample of the $keys keys (every 20th) reads back after etcd was restarted" 20

# --- a rolling restart, waiting only for each node's health check ---------
verify_keys "$api1" "all $keys keys read back before the rolling restart"
load_start rolling "$api1,$api2"
roll_start=$SECONDS
for n in 1 2 3; do
  c="$(dn "$n")"
  started_before="$(docker inspect -f '{{.State.StartedAt}}' "$c")"
  log "docker restart data node $n ($(node_id_of "$c"))"
  t0=$SECONDS
  docker restart -t 10 "$c" >/dev/null
  restarted() { [[ "$(docker inspect -f '{{.State.StartedAt}}' "$1")" != "$2" ]] && healthy "$1"; }
  # What an orchestrator does: the next node only once this one's health
  # check (readiness: it holds its share again) says healthy.
  wait_until "data node $n restarted and its health check healthy" 300 restarted "$c" "$started_before"
  measure "rolling restart: data node $n healthy (ready) $((SECONDS - t0))s after docker restart"
done
load_stop rolling "rolling restart"
measure "rolling restart of 3 data nodes with $keys keys, sync rate $RINGCACHE_SYNC_RATE: $((SECONDS - roll_start))s; load p99 ${load_p99} ms"
verify_keys "$api2" "rolling restart waiting only for readiness: all $keys keys read back through manager2 (0 lost)"
wait_until "both managers on one placement of 3 after the rolling restart" 120 converged 3

# --- a data node killed -----------------------------------------------------
c2="$(dn 2)"
id2="$(node_id_of "$c2")"
check "50 keys written" write_all "$api1" k 1 50 v
log "docker kill data node 2 ($id2)"
docker kill "$c2" >/dev/null
check "all 50 keys readable right after data node 2 was killed" read_all "$api2" k 1 50 v
check "writes succeed with data node 2 dead" write_all "$api1" k 1 50 w
wait_until "/cluster shows data node 2 down" 30 is_state "$api1" "$id2" down
check "all 50 keys read their new values with data node 2 dead" read_all "$api2" k 1 50 w
log "docker start data node 2"
docker start "$c2" >/dev/null
wait_until "data node 2 healthy (ready) again" 120 healthy "$c2"
wait_until "both managers on one placement of 3 again" 120 converged 3
check "all 50 keys read their new values after data node 2 rejoined" read_all "$api1" k 1 50 w
verify_keys "$api2" "a sample of the $keys keys (every 20th) reads back after data node 2 was killed and restarted" 20

# --- a data node cut off the network ------------------------------------------
c3="$(dn 3)"
id3="$(node_id_of "$c3")"
check "50 keys set to v1 before the partition" write_all "$api1" n 1 50 v1-
log "docker network disconnect $net data node 3 ($id3)"
docker network disconnect "$net" "$c3"
wait_until "/cluster shows data node 3 down" 30 is_state "$api1" "$id3" down
check "50 keys overwritten with v2 during the partition" write_all "$api2" n 1 50 v2-
deleted_ok=1
for ((i = 1; i <= 10; i++)); do
  http "$api1" DELETE "/?key=n$i"
  [[ "$code" == 200 ]] || { deleted_ok=0; echo "    delete n$i: HTTP $code" >&2; }
done
check "10 keys deleted during the partition" [ "$deleted_ok" == 1 ]
log "docker network connect --alias datanode $net data node 3"
# Compose's service-name alias must be given back for the managers to find it.
docker network connect --alias datanode "$net" "$c3"
wait_until "data node 3 healthy (ready) again" 120 healthy "$c3"
wait_until "both managers on one placement of 3 again" 120 converged 3
check "no key reads its pre-partition value v1 (manager1)" no_value "$api1" n 1 50 v1-
check "no key reads its pre-partition value v1 (manager2)" no_value "$api2" n 1 50 v1-
check "the 10 keys deleted during the partition stay deleted (404)" read_all "$api2" n 1 10 404
check "the other 40 keys read v2" read_all "$api1" n 11 50 v2-

# --- a manager restarted -----------------------------------------------------
check "20 keys written" write_all "$api2" r 1 20 r
log "docker restart manager2"
docker restart -t 10 "${ids[manager2]}" >/dev/null
wait_until "manager2 healthy again" 60 healthy "${ids[manager2]}"
wait_until "both managers on one placement of 3" 60 converged 3
check "keys written before manager2 restarted read back through it (no flush)" read_all "$api2" r 1 20 r
check "writes through the restarted manager2" write_all "$api2" r 1 20 s
check "reads through manager1 of them" read_all "$api1" r 1 20 s
wait_until "every container healthy at the end" 60 all_healthy

# --- one manager cut off the network while the other writes ----------------
# Last: when it fails, what it leaves behind does not spoil the checks above.
# A second network keeps manager1 reachable from this host (at its address
# there) while it is cut off the cluster's.
side_net="$project-side"
docker network create "$side_net" >/dev/null
docker network connect "$side_net" "${ids[manager1]}"
side_ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$side_net\").IPAddress}}" "${ids[manager1]}")"
api1_side="http://$side_ip:8080"
http "$api1_side" GET "/healthz"
check "manager1 answers at $api1_side (side network)" [ "$code" == 200 ]
check "50 keys set to v1 through manager1 before the partition" write_all "$api1" part 1 50 v1-
log "docker network disconnect $net manager1"
docker network disconnect "$net" "${ids[manager1]}"
check "50 keys overwritten with v2 through manager2 during the partition" write_all "$api2" part 1 50 v2-
check "manager2 reads v2 during the partition" read_all "$api2" part 1 50 v2-
check "manager1 (cut off) reads no v1 during the partition" no_value "$api1_side" part 1 50 v1-
log "docker network connect --alias manager1 $net manager1"
docker network connect --alias manager1 "$net" "${ids[manager1]}"
docker network disconnect "$side_net" "${ids[manager1]}"
wait_until "manager1 healthy again after the partition" 60 healthy "${ids[manager1]}"
wait_until "both managers on one placement of 3 again" 60 converged 3
check "manager1 reads v2 after the partition" read_all "$api1" part 1 50 v2-
check "manager2 reads v2 after the partition" read_all "$api2" part 1 50 v2-
verify_keys "$api1" "a sample of the $keys keys (every 20th) reads back after manager1's partition" 20
wait_until "every container healthy at the end" 60 all_healthy
