#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no cluster needed): yamllint for
# the YAML itself, then kubernetes-validate against the JSON schemas of
# Kubernetes $K8S_VERSION (shipped with the PyPI package; --strict rejects
# unknown fields). Exits non-zero on any finding.
#
#   deploy/k8s/validate.sh            # needs: pip install kubernetes-validate yamllint
#
# This checks the manifests' form, not that they run: no Kubernetes
# cluster is available here (README: Kubernetes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

k8s_version="${K8S_VERSION:-1.37.0}"
manifests=(*.yaml)
for tool in yamllint kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "validate: $tool not found (pip install $tool)" >&2; exit 2; }
done

echo "yamllint ${manifests[*]}"
yamllint --strict -c .yamllint.yaml "${manifests[@]}"

# kubernetes-validate reports an unknown version as an error of its own, so
# a wrong K8S_VERSION fails here rather than passing unchecked.
echo "kubernetes-validate --strict -k $k8s_version ${manifests[*]}"
kubernetes-validate --strict --kubernetes-version "$k8s_version" "${manifests[@]}"
echo "validate: ${#manifests[@]} files valid for Kubernetes $k8s_version"

# The TLS variant the comments describe (README: TLS): the commented TLS
# env, volumes and mounts uncommented, exec probes for the data nodes'
# grpc ones; validated the same way, so the comments stay applicable.
tls_dir="$(mktemp -d)"
trap 'rm -rf "$tls_dir"' EXIT
python3 - "$tls_dir" datanode.yaml manager.yaml <<'PY'
import re, sys
out_dir, files = sys.argv[1], sys.argv[2:]
commented = re.compile(
    r"^(\s*)# (- name: (DATANODE|MANAGER)_\w*TLS\w*|  value: /tls/.*|  value: ringcache-datanode"
    r"|volumeMounts:|  - name: tls|    mountPath: /tls|    readOnly: true|volumes:"
    r"|    secret:|      secretName: ringcache-tls)$")
for name in files:
    text = "".join(
        (m.group(1) + m.group(2) + "\n") if (m := commented.match(line)) else line
        for line in open(name))
    for probe, check in (("readinessProbe", "--ready-check"), ("livenessProbe", "--health-check")):
        text = re.sub(
            r"( +)%s:\n\1  grpc:\n\1    port: 50051\n\1    service: [\w.]+\n" % probe,
            lambda m: '%s%s:\n%s  exec:\n%s    command: ["/datanode", "%s"]\n'
            % (m.group(1), probe, m.group(1), m.group(1), check),
            text)
    if not re.search(r"^ +- name: \w+_TLS_CERT$", text, re.M) or not re.search(r"^ +volumes:$", text, re.M):
        sys.exit(f"{name}: the TLS comments were not found")
    open(f"{out_dir}/{name}", "w").write(text)
PY
grep -q -- '--ready-check"]' "$tls_dir/datanode.yaml" || { echo "validate: TLS variant: probes not replaced" >&2; exit 1; }
echo "kubernetes-validate --strict -k $k8s_version (TLS variant) datanode.yaml manager.yaml"
(cd "$tls_dir" && kubernetes-validate --strict --kubernetes-version "$k8s_version" datanode.yaml manager.yaml)
echo "validate: the TLS variant is valid too"
