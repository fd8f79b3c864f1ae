#!/usr/bin/env bash
# What TLS costs: two clusters of the release build side by side (3 data
# nodes + 1 manager each, default flags), one plain, one with TLS on every
# hop (HTTPS on the manager, mTLS to the nodes; certificates from
# deploy/dev-certs.sh), 1000 keys of 100 B, then GET at 16 connections with
# wrk, alternating plain and TLS, ROUNDS times (3). Prints each round.
#
#   cargo build --release --bins && bench/tls.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=$ROOT/target/release
ROUNDS=${ROUNDS:-3}
D=$(mktemp -d); bash "$ROOT/deploy/dev-certs.sh" "$D/c" >/dev/null
cd $D/c
pids=()
start() { # tls port_base
  local tls=$1 base=$2 i nodes=""
  for i in 1 2 3; do
    if [[ $tls == 1 ]]; then
      $B/datanode --listen 127.0.0.1:$((base+i)) --id n$i --worker-threads 1 --tls-cert node.pem --tls-key node.key --tls-client-ca ca.pem >/dev/null 2>&1 & pids+=($!)
      nodes+="https://localhost:$((base+i)),"
    else
      $B/datanode --listen 127.0.0.1:$((base+i)) --id n$i --worker-threads 1 >/dev/null 2>&1 & pids+=($!)
      nodes+="http://127.0.0.1:$((base+i)),"
    fi
  done
  if [[ $tls == 1 ]]; then
    $B/manager --listen 127.0.0.1:$base --nodes ${nodes%,} --node-tls-ca ca.pem --node-tls-cert manager.pem --node-tls-key manager.key --tls-cert https.pem --tls-key https.key >/dev/null 2>&1 & pids+=($!)
  else
    $B/manager --listen 127.0.0.1:$base --nodes ${nodes%,} >/dev/null 2>&1 & pids+=($!)
  fi
}
start 0 41000; start 1 42000
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$D"' EXIT
# Both managers answer once their nodes are up (bounded wait).
for _ in $(seq 1 100); do
  a=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:41000/healthz || true)
  b=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.pem https://localhost:42000/healthz || true)
  [[ $a == 200 && $b == 200 ]] && break
  sleep 0.1
done
for i in $(seq 1 1000); do
  curl -s -o /dev/null -X POST "http://127.0.0.1:41000/?key=k$i&value=vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
  curl -s -o /dev/null --cacert ca.pem -X POST "https://localhost:42000/?key=k$i&value=vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
done 
cat > get.lua <<'L'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/?key=k" .. ((counter % 1000) + 1))
end
L
for ((r = 1; r <= ROUNDS; r++)); do
  p=$(wrk -t2 -c16 -d8s -s get.lua http://127.0.0.1:41000 | awk '/Requests\/sec/ {print $2}')
  t=$(wrk -t2 -c16 -d8s -s get.lua https://localhost:42000 | awk '/Requests\/sec/ {print $2}')
  echo "round $r plain $p tls $t"
done

