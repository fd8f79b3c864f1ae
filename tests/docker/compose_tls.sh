#!/usr/bin/env bash
# Container TLS test: the compose stack with docker-compose.tls.yml (HTTPS
# on both managers, mTLS from managers to data nodes and between nodes) and
# certificates from deploy/dev-certs.sh, run the way the README says.
#
#   tests/docker/compose_tls.sh
#
# Checks (each a PASS/FAIL line):
#   - every container reports healthy: the health checks (`--health-check`,
#     `--ready-check`) speak TLS;
#   - writes and reads over HTTPS through both managers (curl --cacert);
#   - plain HTTP to a manager gets no answer;
#   - a data node refuses a client without a certificate and answers one
#     with (grpcurl, when installed);
#   - a data node restarted warms up from its peers over TLS: every key
#     reads back once it is healthy again;
#   - the certificates rotated in place (a new CA would be refused; new
#     leaf certificates from the same CA are picked up without a restart).
#
# Needs a Docker engine, curl, openssl and the images of
# docker/Dockerfile (built here with --build; without a registry run
# deploy/offline-base-images.sh first). One compose project,
# ringcache-tls-<pid>, always torn down. Every wait is bounded.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
project="ringcache-tls-$$"
export COMPOSE_PROJECT_NAME="$project"
started_at=$SECONDS
passed=0
failed=0
log() { printf '[%4ds] %s\n' "$((SECONDS - started_at))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $1"; }
fail() { failed=$((failed + 1)); log "FAIL: $1"; }
check() {
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

for tool in docker curl openssl timeout; do
  command -v "$tool" >/dev/null || { echo "compose_tls: $tool is required" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "compose_tls: no Docker engine reachable" >&2; exit 2; }
# shellcheck source=deploy/compose-cmd.sh
source "$root/deploy/compose-cmd.sh" || exit 2
dc() { "${compose[@]}" -p "$project" -f docker-compose.yml -f docker-compose.tls.yml "$@"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for ((t = 0; t < 50; t++)); do
  base=$((30000 + (($$ + t * 7919) % 8000) * 4))
  if port_free "$base" && port_free "$((base + 1))" && port_free "$((base + 2))" && port_free "$((base + 3))"; then break; fi
done
export RINGCACHE_PUBLISH_ADDR=127.0.0.1
export RINGCACHE_HTTP_PORT="$base" RINGCACHE_HTTP_PORT2="$((base + 1))"
export RINGCACHE_RESP_PORT="$((base + 2))" RINGCACHE_RESP_PORT2="$((base + 3))"
api1="https://localhost:$RINGCACHE_HTTP_PORT"
api2="https://localhost:$RINGCACHE_HTTP_PORT2"

# The override mounts ./certs: made fresh for this run, removed after.
certs_made=0
if [[ ! -e certs ]]; then
  bash deploy/dev-certs.sh certs >/dev/null
  certs_made=1
fi
ca="$root/certs/ca.pem"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0 || failed > 0)); then
    echo "--- container logs (last 30 lines each) ---"
    dc logs --no-color --tail=30 2>&1 || true
  fi
  dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || echo "compose_tls: WARNING: down failed" >&2
  if ((certs_made)); then rm -rf "$root/certs"; fi
  log "passed $passed, failed $failed"
  if ((failed > 0 && rc == 0)); then exit 1; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

log "starting $project with TLS (managers on $RINGCACHE_HTTP_PORT, $RINGCACHE_HTTP_PORT2)"
dc up -d --build >/dev/null 2>&1 || { fail "compose up"; exit 1; }

# all_healthy: every container of the project reports healthy.
all_healthy() {
  local ids states
  ids=$(dc ps -q)
  [[ -n "$ids" ]] || return 1
  # shellcheck disable=SC2086
  states=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids)
  ! grep -qv '^healthy$' <<<"$states"
}
wait_for() {
  local what="$1" secs="$2"
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      fail "$what (not within ${secs}s)"
      return 1
    fi
    sleep 1
  done
  pass "$what"
}
https_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$ca" "$@" || true; }

wait_for "every container healthy (health checks over TLS)" 180 all_healthy || exit 1
wait_for "a write over HTTPS through manager1" 60 \
  bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert '$ca' -X POST '$api1/?key=probe&value=1') =~ ^20[01]$ ]]"

keys=200
ok=0
for ((i = 0; i < keys; i++)); do
  api=$api1
  ((i % 2)) && api=$api2
  code=$(https_code -X POST "$api/?key=tls$i&value=v$i")
  [[ $code == 201 || $code == 200 ]] && ok=$((ok + 1))
done
check "$keys writes over HTTPS through both managers ($ok acknowledged)" test "$ok" -eq "$keys"

read_all() {
  local api=$1 i good=0
  for ((i = 0; i < keys; i++)); do
    [[ $(curl -s --max-time 5 --cacert "$ca" "$api/?key=tls$i") == "v$i" ]] && good=$((good + 1))
  done
  echo "$good"
}
good=$(read_all "$api2")
check "every key reads back over HTTPS through manager2 ($good of $keys)" test "$good" -eq "$keys"

plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$RINGCACHE_HTTP_PORT/healthz" || true)
check "plain HTTP to a manager gets no answer (got '$plain')" test "$plain" != 200

node_port=$(dc port --index 1 datanode 50051 | sed 's/.*://')
if command -v grpcurl >/dev/null; then
  check "a data node refuses grpcurl without a client certificate" \
    bash -c "! grpcurl -cacert '$ca' -servername datanode 127.0.0.1:$node_port list >/dev/null 2>&1"
  check "a data node answers grpcurl with a client certificate" \
    grpcurl -cacert "$ca" -cert certs/client.pem -key certs/client.key -servername datanode \
    "127.0.0.1:$node_port" ringcache.v1.DataNode/Stats
else
  log "grpcurl not installed: its two checks not run"
fi

# A node restarted warms up from its peers over TLS before it is healthy.
victim=$(dc ps -q datanode | head -1)
docker restart --time 5 "$victim" >/dev/null
wait_for "the restarted data node healthy again (warm-up over TLS)" 120 all_healthy || true
good=$(read_all "$api1")
check "every key reads back after the restart ($good of $keys)" test "$good" -eq "$keys"

# Rotation in place: new leaf certificates from the same CA, written over
# the mounted files; every process re-reads them within its reload interval.
old_serial=$(echo | openssl s_client -connect "127.0.0.1:$RINGCACHE_HTTP_PORT" -servername localhost 2>/dev/null |
  openssl x509 -noout -serial 2>/dev/null || true)
(
  cd certs
  for name in https node; do
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$name.key.new" \
      -out "$name.csr" -subj "/CN=rotated $name" 2>/dev/null
    openssl x509 -in "$name.pem" -noout -ext subjectAltName | tail -1 | sed 's/^ *//; s/IP Address/IP/g' \
      | sed 's/^/subjectAltName=/' >"$name.ext"
    echo "extendedKeyUsage=serverAuth,clientAuth" >>"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem.new" \
      -days 30 -extfile "$name.ext" 2>/dev/null
    chmod 644 "$name.key.new"
    mv "$name.key.new" "$name.key"
    mv "$name.pem.new" "$name.pem"
    rm -f "$name.csr" "$name.ext"
  done
)
new_serial() {
  local s
  s=$(echo | openssl s_client -connect "127.0.0.1:$RINGCACHE_HTTP_PORT" -servername localhost 2>/dev/null |
    openssl x509 -noout -serial 2>/dev/null || true)
  [[ -n $s && $s != "$old_serial" ]]
}
wait_for "the manager serves the rotated certificate without a restart" 40 new_serial || true
code=$(https_code -X POST "$api1/?key=after-rotation&value=1")
check "writes go on after the rotation ($code)" test "$code" = 201
good=$(read_all "$api2")
check "every key still reads back after the rotation ($good of $keys)" test "$good" -eq "$keys"
