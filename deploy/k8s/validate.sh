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
