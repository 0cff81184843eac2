#!/usr/bin/env bash
# Make sure deploy/k8s can be rendered offline (`make test` calls this): either kubectl
# with kustomize v5 built in (`kubectl kustomize`), or a standalone `kustomize` binary on
# PATH or in .cache/bin. When neither is there and Go is, build kustomize from its Go module
# (the Go module proxy) into .cache/bin. Debian's own kubectl (kubernetes-client, 1.20)
# embeds kustomize v2, which knows no components: it is not enough.
# tests/unit/test_k8s_manifests.py looks for the renderer in the same order.
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.cache/bin"

kubectl_has_v5() {
    command -v kubectl >/dev/null 2>&1 \
        && kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v[5-9]'
}

if kubectl_has_v5; then
    kubectl version --client 2>/dev/null | grep '^Kustomize Version'
    exit 0
fi
for candidate in "$BIN/kustomize" "$(command -v kustomize 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" version 2>/dev/null | grep -q 'v[5-9]'; then
        echo "kustomize: $candidate ($("$candidate" version))"
        exit 0
    fi
done
if ! command -v go >/dev/null 2>&1; then
    echo "neither kubectl with kustomize v5 nor kustomize nor Go is installed: install kubectl" \
         "(1.27 or newer) or kustomize $KUSTOMIZE_VERSION to render deploy/k8s" >&2
    exit 1
fi
echo "building kustomize $KUSTOMIZE_VERSION into $BIN (Go module proxy; about a minute)"
mkdir -p "$BIN"
GOBIN="$BIN" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
"$BIN/kustomize" version
