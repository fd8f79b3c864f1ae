#!/usr/bin/env bash
# A development CA and certificates for ringcache's TLS (docs/design/tls.md),
# made with openssl (Debian's `openssl` package). Not for production: the
# CA key sits next to the certificates, unencrypted.
#
#   deploy/dev-certs.sh [DIR] [EXTRA_NAME...]     # DIR defaults to ./certs
#
# Writes, in DIR:
#   ca.pem, ca.key              the CA (trust ca.pem in curl, grpcurl, browsers)
#   node.pem, node.key          data nodes: server and client (peers, checks)
#   manager.pem, manager.key    managers towards nodes (client certificate)
#   https.pem, https.key        the managers' HTTPS listener
#   client.pem, client.key      a client for grpcurl -cert/-key or curl --cert
#
# Server certificates name localhost, 127.0.0.1, the compose service names
# (datanode, manager1, manager2, etcd), the Kubernetes Services' names
# (ringcache-datanode, *.ringcache-datanode, ringcache-manager) and any
# EXTRA_NAME given. Existing files are kept unless FORCE=1: re-running never
# replaces a CA that certificates in use chain to.
set -euo pipefail

DIR=${1:-certs}
shift || true
DAYS=${DAYS:-825}
mkdir -p "$DIR"
cd "$DIR"

if [[ -f ca.pem && ${FORCE:-0} != 1 ]]; then
    echo "dev-certs: $DIR/ca.pem exists (FORCE=1 to make a new CA and certificates)" >&2
    exit 0
fi

names=(localhost datanode manager1 manager2 etcd
    ringcache-datanode '*.ringcache-datanode' ringcache-manager "$@")
san="IP:127.0.0.1,IP:::1"
for n in "${names[@]}"; do
    san+=",DNS:$n"
done

openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout ca.key -out ca.pem -days "$DAYS" -subj "/CN=ringcache dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# issue NAME CN USAGE [SAN]
issue() {
    local name=$1 cn=$2 usage=$3 alt=${4:-}
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        if [[ -n $alt ]]; then echo "subjectAltName=$alt"; fi
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$name.pem" -days "$DAYS" -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
    # Readable by all: the containers run as nobody (65534) and read the
    # keys from a bind mount. Development only.
    chmod 644 "$name.key"
}

issue node "ringcache data node" serverAuth,clientAuth "$san"
issue https "ringcache manager" serverAuth "$san"
issue manager "ringcache manager" clientAuth
issue client "ringcache client" clientAuth
rm -f ca.srl
chmod 600 ca.key
echo "dev-certs: CA and certificates in $(pwd)"
