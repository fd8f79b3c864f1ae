#!/usr/bin/env bash
# What TLS costs, and how ringcache's HTTPS compares with nginx terminating
# TLS in front of memcached. Side by side on one machine, each preloaded with
# the same 1000 keys of 100 B:
#
#   plain   ringcache, no TLS anywhere (3 data nodes + 1 manager)
#   tls     ringcache with TLS on every hop: HTTPS on the manager, mTLS to
#           the nodes (certificates from deploy/dev-certs.sh)
#   https   ringcache with HTTPS on the manager and plain gRPC to the nodes
#           (tls / https is what node mTLS costs)
#   ngx     nginx (TLS, keep-alive, `hash $arg_key consistent`) in front of
#           3 memcached, each holding every key
#
# then GET with wrk at 16 and 64 connections (keep-alive: the handshake is
# once per connection), the systems alternating within each round, ROUNDS
# (3) rounds. Prints every run, then the median and range of each and the
# ratios.
#
#   cargo build --release --bins && bench/tls.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=$ROOT/target/release
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-"16 64"}
for tool in wrk nginx memcached curl; do
  command -v $tool >/dev/null || { echo "bench/tls.sh needs $tool (Debian: apt-get install wrk nginx memcached curl)" >&2; exit 1; }
done
D=$(mktemp -d)
# nginx's and memcached's workers run as nobody and read the certificates.
chmod 755 "$D"
bash "$ROOT/deploy/dev-certs.sh" "$D/c" >/dev/null
chmod -R a+rX "$D/c"
cd "$D/c"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$D"' EXIT

start() { # mode port_base: mode is plain, tls (every hop) or https (manager only)
  local mode=$1 base=$2 i nodes=""
  for i in 1 2 3; do
    if [[ $mode == tls ]]; then
      $B/datanode --listen 127.0.0.1:$((base+i)) --id n$i --worker-threads 1 --tls-cert node.pem --tls-key node.key --tls-client-ca ca.pem >/dev/null 2>&1 & pids+=($!)
      nodes+="https://localhost:$((base+i)),"
    else
      $B/datanode --listen 127.0.0.1:$((base+i)) --id n$i --worker-threads 1 >/dev/null 2>&1 & pids+=($!)
      nodes+="http://127.0.0.1:$((base+i)),"
    fi
  done
  case $mode in
    tls) $B/manager --listen 127.0.0.1:$base --nodes ${nodes%,} --node-tls-ca ca.pem --node-tls-cert manager.pem --node-tls-key manager.key --tls-cert https.pem --tls-key https.key >/dev/null 2>&1 & pids+=($!) ;;
    https) $B/manager --listen 127.0.0.1:$base --nodes ${nodes%,} --tls-cert https.pem --tls-key https.key >/dev/null 2>&1 & pids+=($!) ;;
    *) $B/manager --listen 127.0.0.1:$base --nodes ${nodes%,} >/dev/null 2>&1 & pids+=($!) ;;
  esac
}
start plain 41000; start tls 42000; start https 43000

# nginx + 3 memcached on 44000.
mkdir -p "$D/ngx/tmp"
for i in 1 2 3; do
  memcached -u nobody -l 127.0.0.1 -p $((44010+i)) -U 0 -m 64 -c 4096 >/dev/null 2>&1 & pids+=($!)
done
cat >"$D/ngx/nginx.conf" <<NGX
worker_processes auto;
daemon off;
pid $D/ngx/nginx.pid;
error_log $D/ngx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $D/ngx/tmp;
  proxy_temp_path $D/ngx/tmp;
  fastcgi_temp_path $D/ngx/tmp;
  uwsgi_temp_path $D/ngx/tmp;
  scgi_temp_path $D/ngx/tmp;
  keepalive_requests 1000000;
  upstream memcached_ring {
    hash \$arg_key consistent;
    server 127.0.0.1:44011;
    server 127.0.0.1:44012;
    server 127.0.0.1:44013;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:44000 ssl reuseport;
    ssl_certificate $D/c/https.pem;
    ssl_certificate_key $D/c/https.key;
    location = / {
      set \$memcached_key \$arg_key;
      memcached_pass memcached_ring;
      default_type application/octet-stream;
    }
  }
}
NGX
nginx -c "$D/ngx/nginx.conf" >/dev/null 2>&1 & pids+=($!)

declare -A URL=([plain]=http://127.0.0.1:41000 [tls]=https://localhost:42000 [https]=https://localhost:43000 [ngx]=https://localhost:44000)
SYSTEMS=(plain tls https ngx)
up() { curl -s -o /dev/null -w '%{http_code}' --cacert ca.pem "$1/healthz" 2>/dev/null || true; }
for _ in $(seq 1 200); do
  ok=1
  for s in plain tls https; do [[ $(up "${URL[$s]}") == 200 ]] || ok=0; done
  [[ $ok == 1 ]] && break
  sleep 0.1
done
[[ $ok == 1 ]] || { echo "the ringcache clusters did not come up" >&2; exit 1; }

value=$(printf 'v%.0s' $(seq 1 100))
for i in $(seq 1 1000); do
  for s in plain tls https; do
    curl -s -o /dev/null --cacert ca.pem -X POST "${URL[$s]}/?key=k$i&value=$value"
  done
done
# Every memcached holds every key: nginx's choice of server always hits.
for port in 44011 44012 44013; do
  {
    for i in $(seq 1 1000); do printf 'set k%d 0 0 100 noreply\r\n%s\r\n' "$i" "$value"; done
    printf 'quit\r\n'
  } >/dev/tcp/127.0.0.1/$port
done
for s in "${SYSTEMS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.pem "${URL[$s]}/?key=k500")
  [[ $code == 200 ]] || { echo "$s does not serve k500 ($code)" >&2; exit 1; }
done

cat > get.lua <<'L'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/?key=k" .. ((counter % 1000) + 1))
end
L
declare -A RUNS=()
for ((r = 1; r <= ROUNDS; r++)); do
  for c in $CONNS; do
    line="round $r c=$c"
    for s in "${SYSTEMS[@]}"; do
      rps=$(wrk -t2 -c$c -d${DURATION}s -s get.lua "${URL[$s]}" | awk '/Requests\/sec/ {print $2}')
      RUNS[$s:$c]+="$rps "
      line+="  $s $rps"
    done
    echo "$line"
  done
done
stat() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {printf "%.0f (%.0f-%.0f)", v[int((NR+1)/2)], v[1], v[NR]}'; }
med() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "median (range) req/s over $ROUNDS rounds:"
for c in $CONNS; do
  printf '  c=%-3s' "$c"
  for s in "${SYSTEMS[@]}"; do printf '  %s %s' "$s" "$(stat "${RUNS[$s:$c]}")"; done
  echo
  awk -v t="$(med "${RUNS[tls:$c]}")" -v h="$(med "${RUNS[https:$c]}")" -v p="$(med "${RUNS[plain:$c]}")" -v n="$(med "${RUNS[ngx:$c]}")" \
    'BEGIN {printf "         tls/ngx %.2fx  https/ngx %.2fx  tls/plain %.2fx  node mTLS cost (1 - tls/https) %.0f%%\n", t/n, h/n, t/p, 100*(1-t/h)}'
done
