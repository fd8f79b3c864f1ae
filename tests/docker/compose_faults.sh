#!/usr/bin/env bash
# Container fault test: the Docker Compose cluster (docker-compose.yml: one
# manager, three data nodes) under node loss, a network partition and
# restarts, driven through the manager's published HTTP port on 127.0.0.1.
#
#   tests/docker/compose_faults.sh
#
# The images are built the way a user builds them: `compose up -d --build`
# with docker/Dockerfile (without a registry, run
# deploy/offline-base-images.sh first; .ci/run does).
#
# Environment:
#   COMPOSE             compose command (default: `docker compose` when
#                       present, else `docker-compose`)
#   RINGCACHE_HTTP_PORT, RINGCACHE_DATANODE{1,2,3}_PORT
#                       host ports (default: free ports found here, never
#                       the defaults 8080/50051-50053)
#
# Needs a reachable Docker engine, curl and jq. Creates one compose project,
# ringcache-ci-<pid>, and always tears it down (containers, network,
# volumes); the images it builds are kept for the next run. Every wait is
# bounded; exits non-zero when any check fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

project="ringcache-ci-$$"
export COMPOSE_PROJECT_NAME="$project"

passed=0
failed=0
failures=()
squatter=""  # a container this test starts outside compose, if any
started_at=$SECONDS

log() { printf '[%4ds] %s\n' "$((SECONDS - started_at))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); log "FAIL: $1"; }
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

for tool in docker curl jq; do
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
  local tries base p ok
  for ((tries = 0; tries < 50; tries++)); do
    base=$((20000 + (($$ + tries * 7919) % 9000) * 4))
    ok=1
    for p in "$base" "$((base + 1))" "$((base + 2))" "$((base + 3))"; do
      port_free "$p" || { ok=0; break; }
    done
    if ((ok)); then echo "$base"; return 0; fi
  done
  return 1
}
base="$(pick_ports)" || { echo "compose_faults: no free ports found" >&2; exit 2; }
export RINGCACHE_PUBLISH_ADDR=127.0.0.1
export RINGCACHE_HTTP_PORT="${RINGCACHE_HTTP_PORT:-$base}"
export RINGCACHE_DATANODE1_PORT="${RINGCACHE_DATANODE1_PORT:-$((base + 1))}"
export RINGCACHE_DATANODE2_PORT="${RINGCACHE_DATANODE2_PORT:-$((base + 2))}"
export RINGCACHE_DATANODE3_PORT="${RINGCACHE_DATANODE3_PORT:-$((base + 3))}"
api="http://127.0.0.1:$RINGCACHE_HTTP_PORT"

# --- teardown, always ----------------------------------------------------
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0 || failed > 0)); then
    echo "--- container logs (last 40 lines each) ---"
    dc logs --no-color --tail=40 2>&1 || true
  fi
  log "tearing down $project"
  if [[ -n "$squatter" ]]; then
    docker rm -f "$squatter" >/dev/null 2>&1 || echo "compose_faults: WARNING: cannot remove $squatter" >&2
  fi
  dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 ||
    echo "compose_faults: WARNING: '${compose[*]} -p $project down' failed" >&2
  # A rebuild moves the image tags to new images; the ringcache images left
  # untagged by it (and only those: they carry our label) go too.
  docker image prune -f --filter "label=org.ringcache.image" >/dev/null 2>&1 || true
  echo
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
# http METHOD PATH_AND_QUERY: sets $code (000 when nothing answered) and $body.
http() {
  local out
  out="$(curl -sS --max-time 5 -X "$1" -w '\n%{http_code}' "$api$2" 2>/dev/null)" || true
  code="${out##*$'\n'}"
  body="${out%$'\n'*}"
  [[ "$code" =~ ^[0-9]{3}$ ]] || { code=000; body=""; }
}
put() { http POST "/?key=$1&value=$2"; [[ "$code" == 200 || "$code" == 201 ]]; }
cluster() { curl -sS --max-time 5 "$api/cluster" 2>/dev/null || true; }
# state NODE: the manager's view of service NODE (up/down/joining/unknown).
state() { cluster | jq -r --arg a "http://$1:50051" '.nodes[]? | select(.address == $a) | .state' 2>/dev/null || true; }
instance() { cluster | jq -r --arg a "http://$1:50051" '.nodes[]? | select(.address == $a) | .instance // ""' 2>/dev/null || true; }
all_up() { [[ "$(cluster | jq -r '[.nodes[]?.state] | select(length == 3) | all(. == "up")' 2>/dev/null)" == true ]]; }
is_state() { [[ "$(state "$1")" == "$2" ]]; }
# Container ids, looked up once the cluster is up (they survive kill, start
# and restart; `ps` of compose v2 leaves stopped containers out).
declare -A ids=()
cid() { echo "${ids[$1]:-$(dc ps -q "$1")}"; }
healthy() { [[ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(cid "$1")" 2>/dev/null)" == healthy ]]; }
all_healthy() { local s; for s in datanode1 datanode2 datanode3 manager; do healthy "$s" || return 1; done; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(cid "$1")"; }

# wait_until DESCRIPTION SECONDS COMMAND...: polls every 0.2 s, at most
# SECONDS seconds and 5*SECONDS polls.
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

# read_all PREFIX FROM TO EXPECTED: every key PREFIX<i> must read EXPECTED<i>
# (or 404 when EXPECTED is "404"); prints the mismatches.
read_all() {
  local prefix="$1" from="$2" to="$3" want="$4" i bad=0
  for ((i = from; i <= to; i++)); do
    http GET "/?key=$prefix$i"
    if [[ "$want" == 404 ]]; then
      [[ "$code" == 404 ]] && continue
    elif [[ "$code" == 200 && "$body" == "$want$i" ]]; then
      continue
    fi
    bad=$((bad + 1))
    ((bad > 5)) || echo "    $prefix$i: HTTP $code ${body:0:40}" >&2
  done
  ((bad == 0))
}
# write_all PREFIX FROM TO VALUE: sets PREFIX<i> to VALUE<i>, all must succeed.
write_all() {
  local prefix="$1" from="$2" to="$3" value="$4" i bad=0
  for ((i = from; i <= to; i++)); do
    if ! put "$prefix$i" "$value$i"; then
      bad=$((bad + 1))
      ((bad > 5)) || echo "    set $prefix$i: HTTP $code ${body:0:60}" >&2
    fi
  done
  ((bad == 0))
}
no_value() {
  local prefix="$1" from="$2" to="$3" old="$4" i
  for ((i = from; i <= to; i++)); do
    http GET "/?key=$prefix$i"
    if [[ "$body" == "$old$i" ]]; then echo "    $prefix$i still reads $old$i" >&2; return 1; fi
  done
}

# --- bring the cluster up -----------------------------------------------
log "project $project; manager on $api; data nodes on 127.0.0.1:$RINGCACHE_DATANODE1_PORT-$RINGCACHE_DATANODE3_PORT; ${compose[*]}"
up_start=$SECONDS
log "${compose[*]} -p $project up -d --build"
if ! dc up -d --build; then
  abort "compose up -d --build (no registry? run deploy/offline-base-images.sh first)"
fi
log "compose up -d --build returned after $((SECONDS - up_start))s"
for s in datanode1 datanode2 datanode3 manager; do
  ids[$s]="$(dc ps -q "$s")"
  [[ -n "${ids[$s]}" ]] || abort "container of $s not found"
done
wait_until "all four containers healthy" 90 all_healthy
wait_until "the manager sees all three data nodes up" 60 all_up
pass "cluster up and healthy in $((SECONDS - up_start))s"

# --- the README's curl commands ------------------------------------------
http POST "/?key=greeting&value=hello"
check "README: POST /?key=greeting&value=hello -> 201" [ "$code" == 201 ]
http GET "/?key=greeting"
check "README: GET /?key=greeting -> 200 hello" [ "$code $body" == "200 hello" ]
http DELETE "/?key=greeting"
check "README: DELETE /?key=greeting -> 200" [ "$code" == 200 ]
http GET "/?key=greeting"
check "GET after DELETE -> 404" [ "$code" == 404 ]

# --- a data node killed ---------------------------------------------------
check "50 keys written" write_all k 1 50 v
check "50 keys read back" read_all k 1 50 v
log "docker kill datanode2"
docker kill "$(cid datanode2)" >/dev/null
check "all 50 keys readable right after datanode2 was killed" read_all k 1 50 v
check "writes succeed with datanode2 dead" write_all k 1 50 w
wait_until "/cluster shows datanode2 down" 30 is_state datanode2 down
check "all 50 keys read their new values with datanode2 dead" read_all k 1 50 w
log "docker start datanode2"
docker start "$(cid datanode2)" >/dev/null
wait_until "/cluster shows datanode2 up again" 60 is_state datanode2 up
wait_until "datanode2 healthy again" 60 healthy datanode2
check "all 50 keys read their new values after datanode2 rejoined" read_all k 1 50 w

# --- a data node cut off the network --------------------------------------
check "50 keys set to v1 before the partition" write_all n 1 50 v1-
c3="$(cid datanode3)"
net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "$c3" | head -n 1)"
ip_before="$(ip_of datanode3)"
log "docker network disconnect $net datanode3 ($ip_before)"
docker network disconnect "$net" "$c3"
wait_until "/cluster shows datanode3 down" 30 is_state datanode3 down
check "50 keys overwritten with v2 during the partition" write_all n 1 50 v2-
deleted_ok=1
for ((i = 1; i <= 10; i++)); do
  http DELETE "/?key=n$i"
  [[ "$code" == 200 ]] || { deleted_ok=0; echo "    delete n$i: HTTP $code" >&2; }
done
check "10 keys deleted during the partition" [ "$deleted_ok" == 1 ]
log "docker network connect $net datanode3"
# Compose's service-name alias must be given back for the manager to find it.
docker network connect --alias datanode3 "$net" "$c3"
log "datanode3 address: $ip_before before, $(ip_of datanode3) after"
wait_until "/cluster shows datanode3 up again" 60 is_state datanode3 up
check "no key reads its pre-partition value v1" no_value n 1 50 v1-
check "the 10 keys deleted during the partition stay deleted (404)" read_all n 1 10 404
check "the other 40 keys read v2" read_all n 11 50 v2-

# --- a data node back at a new address -----------------------------------
# The manager must look the service name up again at every reconnection: a
# stand-in data node takes datanode3's old address while it is stopped, so
# a manager that kept the old address would reach the stand-in.
ip_before="$(ip_of datanode3)"
log "docker stop datanode3 ($ip_before)"
docker stop -t 10 "$c3" >/dev/null
wait_until "/cluster shows datanode3 down" 30 is_state datanode3 down
squatter="$project-squatter"
docker run -d --name "$squatter" --network "$net" --read-only \
  -e DATANODE_ID=squatter "$(docker inspect -f '{{.Image}}' "$c3")" >/dev/null
log "stand-in data node at $(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$squatter")"
# For 3 s (several reconnection attempts), the manager must not take the
# stand-in at the old address for datanode3.
stays_down() {
  local i
  for ((i = 0; i < 15; i++)); do
    is_state datanode3 down || return 1
    sleep 0.2
  done
}
check "the manager does not reach the stand-in at datanode3's old address" stays_down
docker start "$c3" >/dev/null
ip_after="$(ip_of datanode3)"
log "datanode3 restarted at $ip_after"
check "datanode3 came back at a new address" [ "$ip_after" != "$ip_before" ]
node3_is_itself() {
  [[ "$(cluster | jq -r '.nodes[]? | select(.address == "http://datanode3:50051") | "\(.state) \(.id)"' 2>/dev/null)" == "up datanode3" ]]
}
wait_until "the manager reaches datanode3 at its new address" 60 node3_is_itself
check "writes succeed after datanode3 moved" write_all m 1 30 m
check "reads succeed after datanode3 moved" read_all m 1 30 m
docker rm -f "$squatter" >/dev/null
squatter=""

# --- a data node restarted ------------------------------------------------
inst_before="$(instance datanode1)"
log "docker restart datanode1 (instance $inst_before)"
docker restart -t 10 "$(cid datanode1)" >/dev/null
new_instance() { local i; i="$(instance datanode1)"; [[ -n "$i" && "$i" != "$inst_before" ]] && is_state datanode1 up; }
wait_until "datanode1 back up as a new instance" 60 new_instance
wait_until "all three data nodes up" 60 all_up
check "writes succeed after datanode1 restarted" write_all r 1 20 r
check "reads succeed after datanode1 restarted" read_all r 1 20 r

# --- the manager restarted -------------------------------------------------
started_before="$(docker inspect -f '{{.State.StartedAt}}' "$(cid manager)")"
log "docker restart manager"
docker restart -t 10 "$(cid manager)" >/dev/null
check "the manager container was restarted" \
  [ "$(docker inspect -f '{{.State.StartedAt}}' "$(cid manager)")" != "$started_before" ]
wait_until "the restarted manager sees all three data nodes up" 60 all_up
# A manager that starts empties nothing (README: Consistency): the nodes
# are synced and nobody holds a dirty mark for them, so keys written before
# read back as they were.
check "keys written before the manager restarted still read back (no flush)" read_all r 1 20 r
check "writes succeed after the manager restarted" write_all r 1 20 s
check "reads succeed after the manager restarted" read_all r 1 20 s
wait_until "all four containers healthy at the end" 60 all_healthy
